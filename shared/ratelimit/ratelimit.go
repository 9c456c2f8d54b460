// Package ratelimit caps a byte stream's throughput (bytes per second) with a token bucket: transfers that
// must not saturate a guest's disk or network (ExecRequest.BandwidthLimit) wrap their reader or writer.
package ratelimit

import (
	"context"
	"io"
	"sync"
	"time"

	"troveng.dev/shared/errs"
)

// MinBurst is the smallest bucket: short enough to keep the rate smooth, large enough that a stream's
// chunks are not cut into tiny reads.
const MinBurst = 32 << 10

// Limiter is a token bucket of bytes. Tokens accrue at Rate per second up to Burst; taking more than are
// there puts the bucket in debt, and the taker sleeps until the debt is paid. Safe for concurrent use (the
// rate is shared by every user). A nil *Limiter does not limit.
type Limiter struct {
	rate  float64 // bytes per second
	burst float64

	mu     sync.Mutex
	tokens float64
	last   time.Time
	now    func() time.Time
	sleep  func(ctx context.Context, d time.Duration) error
}

// New returns a limiter of bytesPerSecond with a burst of a quarter second's worth (at least MinBurst), or
// nil (no limit) when bytesPerSecond <= 0.
func New(bytesPerSecond int64) *Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	burst := max(float64(bytesPerSecond)/4, MinBurst)
	return &Limiter{rate: float64(bytesPerSecond), burst: burst, tokens: burst, last: time.Now(), now: time.Now, sleep: sleepCtx}
}

// Rate is the limit in bytes per second (0 for a nil limiter).
func (l *Limiter) Rate() int64 {
	if l == nil {
		return 0
	}
	return int64(l.rate)
}

// Burst is the most bytes one Wait should ask for at a time (0 for a nil limiter).
func (l *Limiter) Burst() int {
	if l == nil {
		return 0
	}
	return int(l.burst)
}

// Wait takes n bytes' worth of tokens, sleeping as long as the rate requires; it returns early with a coded
// error when ctx ends.
func (l *Limiter) Wait(ctx context.Context, n int) error {
	if l == nil || n <= 0 {
		return nil
	}
	l.mu.Lock()
	now := l.now()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	l.tokens -= float64(n)
	debt := -l.tokens
	l.mu.Unlock()
	if debt <= 0 {
		return nil
	}
	return l.sleep(ctx, time.Duration(debt/l.rate*float64(time.Second)))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "rate-limited transfer")
	case <-t.C:
		return nil
	}
}

// Reader limits reads from r to l's rate (r itself when l is nil). Each read asks for at most Burst bytes.
func Reader(ctx context.Context, r io.Reader, l *Limiter) io.Reader {
	if l == nil {
		return r
	}
	return &reader{ctx: ctx, r: r, l: l}
}

type reader struct {
	ctx context.Context
	r   io.Reader
	l   *Limiter
}

func (r *reader) Read(p []byte) (int, error) {
	if len(p) > r.l.Burst() {
		p = p[:r.l.Burst()]
	}
	n, err := r.r.Read(p)
	if werr := r.l.Wait(r.ctx, n); werr != nil && err == nil {
		err = werr
	}
	return n, err
}

// Writer limits writes to w to l's rate (w itself when l is nil): each write waits before it goes out, in
// pieces of at most Burst bytes.
func Writer(ctx context.Context, w io.Writer, l *Limiter) io.Writer {
	if l == nil {
		return w
	}
	return &writer{ctx: ctx, w: w, l: l}
}

type writer struct {
	ctx context.Context
	w   io.Writer
	l   *Limiter
}

func (w *writer) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n := min(len(p)-done, w.l.Burst())
		if err := w.l.Wait(w.ctx, n); err != nil {
			return done, err
		}
		m, err := w.w.Write(p[done : done+n])
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}
