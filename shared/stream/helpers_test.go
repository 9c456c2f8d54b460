package stream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/natstest"
)

// env is one embedded NATS server with a connection per side (the two sides of a stream are usually
// different processes; separate connections keep the test honest about ordering and disconnects).
type env struct {
	srv  *natstest.Server
	send *nats.Conn
	recv *nats.Conn
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := natstest.Start(t)
	e := &env{srv: srv, send: srv.Connect(), recv: srv.Connect()}
	checkLeaks(t)
	return e
}

// streamGoroutines lists the goroutines that belong to streams: this package's methods and NATS async
// subscription dispatchers (every async subscription on the test connections is a stream's).
func streamGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "troveng.dev/shared/stream.(*") || strings.Contains(g, "nats.(*Conn).waitForMsgs") {
			out = append(out, g)
		}
	}
	return out
}

// checkLeaks fails the test if, once it is over (and before its connections close, which would hide
// leaked subscriptions), any stream goroutine is left, or the process has more goroutines than at the start.
func checkLeaks(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			left := streamGoroutines()
			total := runtime.NumGoroutine()
			if len(left) == 0 && total <= base {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("goroutine leak: %d goroutines (started with %d); stream goroutines left:\n%s",
					total, base, strings.Join(left, "\n\n"))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// source is a deterministic pseudo-random byte source of n bytes (n < 0: endless) that hashes what it
// hands out, so tests can stream gigabytes without holding them.
type source struct {
	rng  *rand.ChaCha8
	left int64
	sum  hashWriter
	// failAfter, if > 0, makes Read fail with failErr once that many bytes were handed out.
	failAfter int64
	failErr   error
	given     int64
	// stall, if > 0, makes Read sleep once after stallAfter bytes.
	stall      time.Duration
	stallAfter int64
}

func newSource(n int64, seed uint64) *source {
	var s [32]byte
	copy(s[:], strconv.FormatUint(seed, 10))
	return &source{rng: rand.NewChaCha8(s), left: n, sum: newHashWriter()}
}

func (s *source) Read(p []byte) (int, error) {
	if s.failAfter > 0 && s.given >= s.failAfter {
		return 0, s.failErr
	}
	if s.stall > 0 && s.given >= s.stallAfter {
		time.Sleep(s.stall)
		s.stall = 0
	}
	if s.left == 0 {
		return 0, io.EOF
	}
	if s.left > 0 && int64(len(p)) > s.left {
		p = p[:s.left]
	}
	if s.failAfter > 0 && int64(len(p)) > s.failAfter-s.given {
		p = p[:s.failAfter-s.given]
	}
	if s.stall > 0 && s.stallAfter > s.given && int64(len(p)) > s.stallAfter-s.given {
		p = p[:s.stallAfter-s.given]
	}
	n, _ := s.rng.Read(p)
	s.sum.Write(p[:n])
	s.given += int64(n)
	if s.left > 0 {
		s.left -= int64(n)
	}
	return n, nil
}

// hashWriter is a SHA-256 that prints itself as lower-case hex.
type hashWriter struct{ hash.Hash }

func newHashWriter() hashWriter  { return hashWriter{sha256.New()} }
func (h hashWriter) hex() string { return hex.EncodeToString(h.Sum(nil)) }

// received is what a receiving goroutine saw.
type received struct {
	n       int64
	sha     string
	err     error
	trailer Trailer
	maxBuf  int
	at      time.Time // when Read returned its final EOF or error
}

// receive reads r to its end in a goroutine, calls Finish(result) on success, and always Close.
// readPause, if > 0, sleeps that long after every Read (a slow reader); stallAfter/stall make one long
// pause after that many bytes; commit sleeps before Finish (a slow backend).
type receiveOpts struct {
	result     []byte
	bufSize    int
	readPause  time.Duration
	stallAfter int64
	stall      time.Duration
	commit     time.Duration
}

func receive(r *Receiver, o receiveOpts) <-chan received {
	out := make(chan received, 1)
	if o.bufSize == 0 {
		o.bufSize = 32 << 10
	}
	go func() {
		defer r.Close()
		h := newHashWriter()
		buf := make([]byte, o.bufSize)
		var got received
		for {
			n, err := r.Read(buf)
			h.Write(buf[:n])
			got.n += int64(n)
			if o.readPause > 0 {
				time.Sleep(o.readPause)
			}
			if o.stall > 0 && got.n >= o.stallAfter {
				time.Sleep(o.stall)
				o.stall = 0
			}
			if err != nil {
				got.at = time.Now()
				if err != io.EOF {
					got.err = err
				}
				break
			}
		}
		got.sha = h.hex()
		got.trailer = r.Trailer()
		r.mu.Lock()
		got.maxBuf = r.maxBuffered
		r.mu.Unlock()
		if got.err == nil {
			if o.commit > 0 {
				time.Sleep(o.commit)
			}
			got.err = r.Finish(o.result)
		}
		out <- got
	}()
	return out
}

// wait returns the value from ch or fails the test after d.
func wait[T any](t *testing.T, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s did not finish within %s (hang)", what, d)
		panic("unreachable")
	}
}

// wantCode fails unless err carries code (and, if msg is not empty, mentions msg).
func wantCode(t *testing.T, who string, err error, code errs.Code, msg string) {
	t.Helper()
	if !errs.Is(err, code) {
		t.Fatalf("%s: want a %s error, got %v", who, code, err)
	}
	if msg != "" && !strings.Contains(err.Error(), msg) {
		t.Fatalf("%s: want an error mentioning %q, got %v", who, msg, err)
	}
}

// sendResult is what a sending goroutine saw.
type sendResult struct {
	result []byte
	tr     Trailer
	err    error
	at     time.Time
}

func sendAsync(ctx context.Context, nc *nats.Conn, subject string, src io.Reader, opts Options) <-chan sendResult {
	out := make(chan sendResult, 1)
	go func() {
		res, tr, err := Send(ctx, nc, subject, src, opts)
		out <- sendResult{res, tr, err, time.Now()}
	}()
	return out
}

// rawSender speaks the sender's half of the protocol by hand. A real Writer cannot produce the faults
// the protocol tests need (skipped, repeated or reordered seqs, a wrong trailer, ignoring its credit),
// so these tests use this hand-written peer over the same real NATS server.
type rawSender struct {
	t       *testing.T
	nc      *nats.Conn
	subject string
	ctl     string
	sub     *nats.Subscription
	msgs    chan *nats.Msg
	credit  uint64
}

func dialRaw(t *testing.T, nc *nats.Conn, subject string, chunkSize int) *rawSender {
	t.Helper()
	s := &rawSender{t: t, nc: nc, subject: subject, ctl: nc.NewInbox(), msgs: make(chan *nats.Msg, 1024)}
	var err error
	if s.sub, err = nc.ChanSubscribe(s.ctl, s.msgs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.sub.Unsubscribe() })
	s.pub(&nats.Msg{Header: nats.Header{
		hdrKind: {kindOpen}, hdrVersion: {protocolVersion}, hdrChunkSize: {strconv.Itoa(chunkSize)}, hdrIdleMs: {"60000"}}})
	m := s.next(5 * time.Second)
	if m.Header.Get(hdrKind) != kindCredit {
		t.Fatalf("raw sender: want a credit answering the open, got %q %s", m.Header.Get(hdrKind), m.Data)
	}
	s.credit, _ = strconv.ParseUint(m.Header.Get(hdrCredit), 10, 64)
	return s
}

func (s *rawSender) pub(m *nats.Msg) {
	s.t.Helper()
	m.Subject, m.Reply = s.subject, s.ctl
	if err := s.nc.PublishMsg(m); err != nil {
		s.t.Fatal(err)
	}
}

func (s *rawSender) data(seq uint64, body []byte) {
	s.t.Helper()
	s.pub(&nats.Msg{Header: nats.Header{hdrKind: {kindData}, hdrSeq: {strconv.FormatUint(seq, 10)}}, Data: body})
}

func (s *rawSender) trailer(seq uint64, size int64, sha string) {
	s.t.Helper()
	s.pub(&nats.Msg{Header: nats.Header{hdrKind: {kindTrailer}, hdrSeq: {strconv.FormatUint(seq, 10)},
		hdrSize: {strconv.FormatInt(size, 10)}, hdrSHA256: {sha}}})
}

func (s *rawSender) ping(seq uint64) {
	s.t.Helper()
	s.pub(&nats.Msg{Header: nats.Header{hdrKind: {kindPing}, hdrSeq: {strconv.FormatUint(seq, 10)}}})
}

// next returns the next control message from the receiver.
func (s *rawSender) next(d time.Duration) *nats.Msg {
	s.t.Helper()
	select {
	case m := <-s.msgs:
		return m
	case <-time.After(d):
		s.t.Fatalf("raw sender: no message from the receiver within %s", d)
		return nil
	}
}

// failure waits for the receiver's fail message, skipping credits and pings, and returns its error.
func (s *rawSender) failure(d time.Duration) error {
	s.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m := <-s.msgs:
			switch m.Header.Get(hdrKind) {
			case kindCredit, kindPing:
				continue
			case kindFail:
				return parseError(m, "receiver")
			default:
				s.t.Fatalf("raw sender: want a fail message, got %q", m.Header.Get(hdrKind))
			}
		case <-deadline:
			s.t.Fatalf("raw sender: the receiver sent no fail message within %s", d)
		}
	}
}

// rawReceiver speaks the receiver's half by hand: it accepts the open with a fixed credit and then
// goes silent (a hung receiver process), which a real Receiver cannot be made to do.
type rawReceiver struct {
	subject string
	sub     *nats.Subscription
	msgs    chan *nats.Msg
}

func listenRaw(t *testing.T, nc *nats.Conn, credit int) *rawReceiver {
	t.Helper()
	r := &rawReceiver{subject: nc.NewInbox(), msgs: make(chan *nats.Msg, 4096)}
	var err error
	if r.sub, err = nc.ChanSubscribe(r.subject, r.msgs); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // the sender is on another connection
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); _ = r.sub.Unsubscribe() })
	go func() {
		var m *nats.Msg
		select {
		case m = <-r.msgs:
		case <-done:
			return
		}
		if m.Header.Get(hdrKind) != kindOpen {
			return
		}
		_ = nc.PublishMsg(&nats.Msg{Subject: m.Reply, Reply: r.subject, Header: nats.Header{
			hdrKind: {kindCredit}, hdrCredit: {strconv.Itoa(credit)}, hdrIdleMs: {"60000"}}})
	}()
	return r
}

// isCode is errs.Is for use in conditions.
func isCode(err error, codes ...errs.Code) bool {
	for _, c := range codes {
		if errs.Is(err, c) {
			return true
		}
	}
	return false
}
