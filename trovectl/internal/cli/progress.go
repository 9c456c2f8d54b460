package cli

import (
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"
)

// progress draws a one-line progress bar (bytes done, rate, ETA) on a terminal while bytes move, and a summary
// line when done. It counts through an io.Reader or io.Writer wrapper.
type progress struct {
	out   io.Writer
	label string
	total atomic.Int64 // 0 when unknown
	done  atomic.Int64
	start time.Time
	quit  chan struct{}
	ended chan struct{}
}

// isTerminal reports whether f is a character device (a terminal), without a terminal library.
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// newProgress starts drawing on out when draw is true; a nil *progress counts nothing and draws nothing.
func newProgress(out io.Writer, label string, total int64, draw bool) *progress {
	if !draw {
		return nil
	}
	p := &progress{out: out, label: label, start: time.Now(), quit: make(chan struct{}), ended: make(chan struct{})}
	p.total.Store(total)
	go p.loop()
	return p
}

func (p *progress) setTotal(n int64) {
	if p != nil {
		p.total.Store(n)
	}
}

func (p *progress) add(n int) {
	if p != nil {
		p.done.Add(int64(n))
	}
}

func (p *progress) loop() {
	defer close(p.ended)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.quit:
			return
		case <-t.C:
			fmt.Fprintf(p.out, "\r%s\033[K", p.line())
		}
	}
}

func (p *progress) line() string {
	done, total := p.done.Load(), p.total.Load()
	el := time.Since(p.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(done) / el
	}
	s := fmt.Sprintf("%s %s", p.label, humanBytes(done))
	if total > 0 {
		s += fmt.Sprintf(" / %s %3.0f%%", humanBytes(total), 100*float64(done)/float64(total))
	}
	s += fmt.Sprintf("  %s/s", humanBytes(int64(rate)))
	if total > 0 && rate > 0 && done < total {
		s += fmt.Sprintf("  ETA %s", time.Duration(float64(total-done)/rate*float64(time.Second)).Round(time.Second))
	}
	return s
}

// finish stops drawing and prints the summary line.
func (p *progress) finish() {
	if p == nil {
		return
	}
	close(p.quit)
	<-p.ended
	el := time.Since(p.start)
	fmt.Fprintf(p.out, "\r%s\033[K\n", fmt.Sprintf("%s %s in %s (%s/s)", p.label, humanBytes(p.done.Load()), el.Round(time.Millisecond), humanBytes(int64(float64(p.done.Load())/el.Seconds()))))
}

type progressReader struct {
	r io.Reader
	p *progress
}

func (r progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.p.add(n)
	return n, err
}

type progressWriter struct {
	w io.Writer
	p *progress
}

func (w progressWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.p.add(n)
	return n, err
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
