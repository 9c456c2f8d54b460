package stream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/natstest"
)

func TestRoundTrip(t *testing.T) {
	const chunk = 4 << 10
	cases := []struct {
		name  string
		size  int64
		chunk int
	}{
		{"empty", 0, chunk},
		{"one byte", 1, chunk},
		{"one chunk", chunk, chunk},
		{"exact multiple", 5 * chunk, chunk},
		{"odd", 5*chunk + 17, chunk},
		{"odd prime", 1_000_003, 64 << 10},
		{"default chunk", 3<<20 + 5, 0},
		{"64 MiB small chunks", 64 << 20, 32 << 10},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			r, err := Listen(ctx, e.recv, Options{})
			if err != nil {
				t.Fatal(err)
			}
			result := []byte(fmt.Sprintf(`{"case":%d}`, i))
			got := receive(r, receiveOpts{result: result})
			src := newSource(c.size, uint64(i))
			res, tr, err := Send(ctx, e.send, r.Subject(), src, Options{ChunkSize: c.chunk})
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			rc := wait(t, got, 30*time.Second, "receiver")
			if rc.err != nil {
				t.Fatalf("receiver: %v", rc.err)
			}
			want := Trailer{Size: c.size, SHA256: src.sum.hex()}
			if tr != want || rc.trailer != want {
				t.Fatalf("trailers: sender %+v, receiver %+v, want %+v", tr, rc.trailer, want)
			}
			if rc.n != c.size || rc.sha != want.SHA256 {
				t.Fatalf("receiver read %d bytes hashing to %s, want %d bytes %s", rc.n, rc.sha, c.size, want.SHA256)
			}
			if !bytes.Equal(res, result) {
				t.Fatalf("Close result %q, want %q", res, result)
			}
			if c.size == 0 && want.SHA256 != hex.EncodeToString(sha256.New().Sum(nil)) {
				t.Fatalf("empty stream sha %s", want.SHA256)
			}
		})
	}
}

// TestWriterSmallWrites drives a Writer with writes of every size around the chunk size: the chunking
// and the partial-chunk buffer must not change a byte.
func TestWriterSmallWrites(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	r, err := Listen(ctx, e.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{result: []byte("ok"), bufSize: 7})
	w, err := Dial(ctx, e.send, r.Subject(), Options{ChunkSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	h := newHashWriter()
	var size int64
	for _, n := range []int{1, 99, 100, 101, 0, 250, 1, 1, 1, 199, 300, 57} {
		p := bytes.Repeat([]byte{byte(n)}, n)
		h.Write(p)
		size += int64(n)
		if k, err := w.Write(p); err != nil || k != n {
			t.Fatalf("Write(%d) = %d, %v", n, k, err)
		}
	}
	res, tr, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	rc := wait(t, got, 10*time.Second, "receiver")
	if rc.err != nil || rc.sha != h.hex() || rc.n != size || tr.SHA256 != h.hex() || string(res) != "ok" {
		t.Fatalf("got %+v, trailer %+v, result %q; want %d bytes %s", rc, tr, res, size, h.hex())
	}
	// Abort after a successful Close is a no-op.
	w.Abort(nil)
}

// TestManyStreamsOneConnection runs streams concurrently on one pair of connections: each has its own
// inboxes and nothing crosses.
func TestManyStreamsOneConnection(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const n = 8
	type outcome struct {
		i   int
		err error
	}
	done := make(chan outcome, n)
	for i := range n {
		go func() {
			r, err := Listen(ctx, e.recv, Options{Window: 4})
			if err != nil {
				done <- outcome{i, err}
				return
			}
			got := receive(r, receiveOpts{result: []byte{byte(i)}})
			src := newSource(int64(200_000+i*1000), uint64(100+i))
			res, tr, err := Send(ctx, e.send, r.Subject(), src, Options{ChunkSize: 8 << 10})
			rc := <-got
			switch {
			case err != nil:
			case rc.err != nil:
				err = rc.err
			case tr.SHA256 != src.sum.hex() || rc.sha != src.sum.hex() || len(res) != 1 || res[0] != byte(i):
				err = fmt.Errorf("stream %d: mixed up: trailer %+v, read sha %s, result %v", i, tr, rc.sha, res)
			}
			done <- outcome{i, err}
		}()
	}
	for range n {
		o := wait(t, done, 30*time.Second, "streams")
		if o.err != nil {
			t.Errorf("stream %d: %v", o.i, o.err)
		}
	}
}

// TestFlowControl: a reader that does not read stops the sender after Window chunks, and the receiver
// never holds more than Window chunks however slowly it reads.
func TestFlowControl(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const window, chunk, chunks = 4, 1 << 10, 40
	r, err := Listen(ctx, e.recv, Options{Window: window})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := Dial(ctx, e.send, r.Subject(), Options{ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("x"), chunks*chunk)
	wrote := make(chan error, 1)
	go func() {
		_, err := w.Write(payload)
		wrote <- err
	}()

	// Nobody reads: the sender must stop at exactly the window.
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-wrote:
		t.Fatalf("Write of %d chunks returned (%v) although only %d were granted", chunks, err, window)
	default:
	}
	w.mu.Lock()
	sent, credit := w.sent, w.credit
	w.mu.Unlock()
	if sent != window || credit != window {
		t.Fatalf("sender blocked after %d chunks with credit %d, want %d and %d", sent, credit, window, window)
	}

	// A slow reader: small reads with pauses. The sender advances, the buffer stays within the window.
	buf := make([]byte, 300)
	var total int
	readDone := make(chan error, 1)
	go func() {
		for total < chunks*chunk {
			n, err := r.Read(buf)
			total += n
			if err != nil {
				readDone <- err
				return
			}
			if total%(8*chunk) < 300 {
				time.Sleep(5 * time.Millisecond)
			}
		}
		readDone <- nil
	}()
	if err := wait(t, wrote, 10*time.Second, "Write"); err != nil {
		t.Fatal(err)
	}
	if err := wait(t, readDone, 10*time.Second, "reader"); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { _, _, err := w.Close(); closed <- err }()
	if n, err := r.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after all data = %d, %v; want io.EOF", n, err)
	}
	if err := r.Finish(nil); err != nil {
		t.Fatal(err)
	}
	if err := wait(t, closed, 10*time.Second, "Close"); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	maxBuf := r.maxBuffered
	r.mu.Unlock()
	if maxBuf > window || maxBuf == 0 {
		t.Fatalf("receiver held up to %d chunks, window is %d", maxBuf, window)
	}
}

// TestWindowCappedByBytes: a window whose bytes would pass the in-flight cap is reduced, so the
// receiver's memory stays bounded whatever Window says.
func TestWindowCappedByBytes(t *testing.T) {
	if got := effectiveWindow(4096, 1<<20); got != maxInFlightBytes/(1<<20) {
		t.Fatalf("window for 1 MiB chunks = %d", got)
	}
	if got := effectiveWindow(32, 256<<10); got != 32 {
		t.Fatalf("default window = %d", got)
	}
	if got := effectiveWindow(8, 64<<20); got != 1 {
		t.Fatalf("window for huge chunks = %d", got)
	}
}

// TestSlowPartiesAreNotDead: stalls of the application longer than the idle timeout, on either side,
// must not fail the stream: the blocked side keeps pinging.
func TestSlowPartiesAreNotDead(t *testing.T) {
	// Idle timeouts this short only suit tests; on a loaded machine (race detector, other packages'
	// tests, a cold build beside them) the first message after Listen took over 500ms twice, hence 1s.
	const idle = time.Second
	const stall = 3 * idle
	checkLeaks(t) // for all subtests, which run in parallel
	cases := []struct {
		name   string
		source func(*source)
		recv   receiveOpts
	}{
		{"slow source", func(s *source) { s.stallAfter, s.stall = 100_000, stall }, receiveOpts{}},
		{"slow reader", nil, receiveOpts{stallAfter: 50_000, stall: stall}},
		{"slow commit", nil, receiveOpts{commit: stall}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := natstest.Start(t)
			e := &env{srv: srv, send: srv.Connect(), recv: srv.Connect()}
			ctx := context.Background()
			r, err := Listen(ctx, e.recv, Options{IdleTimeout: idle, Window: 4})
			if err != nil {
				t.Fatal(err)
			}
			c.recv.result = []byte("committed")
			got := receive(r, c.recv)
			src := newSource(300_000, uint64(i))
			if c.source != nil {
				c.source(src)
			}
			start := time.Now()
			res, tr, err := Send(ctx, e.send, r.Subject(), src, Options{IdleTimeout: idle, ChunkSize: 8 << 10})
			if err != nil {
				t.Fatalf("Send failed after %s: %v", time.Since(start), err)
			}
			rc := wait(t, got, 10*time.Second, "receiver")
			if rc.err != nil || rc.sha != src.sum.hex() || tr.SHA256 != src.sum.hex() || string(res) != "committed" {
				t.Fatalf("receiver %+v, trailer %+v, result %q", rc, tr, res)
			}
			if time.Since(start) < stall {
				t.Fatalf("the stall did not happen (took %s)", time.Since(start))
			}
		})
	}
}

func TestFinishBeforeEOF(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	r, err := Listen(ctx, e.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Finish([]byte("too early")); !errs.Is(err, errs.Conflict) {
		t.Fatalf("Finish before EOF: %v, want conflict", err)
	}
}

func TestOptions(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := Dial(ctx, e.send, "x", Options{ChunkSize: 2 << 20}); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("chunk over max payload: %v", err)
	}
	if _, err := Dial(ctx, e.send, "x", Options{Window: -1}); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("negative window: %v", err)
	}
	if _, err := Dial(ctx, e.send, "not a subject", Options{}); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("bad subject: %v", err)
	}
	if _, err := Listen(ctx, e.recv, Options{IdleTimeout: -time.Second}); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("negative idle timeout: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Listen(cancelled, e.recv, Options{}); !errs.Is(err, errs.Cancelled) {
		t.Fatalf("Listen on a cancelled ctx: %v", err)
	}
	o, err := Options{}.withDefaults(e.send)
	if err != nil || o.ChunkSize != DefaultChunkSize || o.Window != DefaultWindow || o.IdleTimeout != DefaultIdleTimeout {
		t.Fatalf("defaults: %+v, %v", o, err)
	}
}

// TestTraceContextCrosses: the open carries the sender's trace context to the receiver.
func TestTraceContextCrosses(t *testing.T) {
	e := newEnv(t)
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)

	r, err := Listen(context.Background(), e.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{})
	if _, _, err := Send(ctx, e.send, r.Subject(), newSource(10, 1), Options{}); err != nil {
		t.Fatal(err)
	}
	if rc := wait(t, got, 5*time.Second, "receiver"); rc.err != nil {
		t.Fatal(rc.err)
	}
	remote := trace.SpanContextFromContext(r.SenderContext(context.Background()))
	if remote.TraceID() != traceID || remote.SpanID() != spanID || !remote.IsRemote() {
		t.Fatalf("receiver sees trace %s span %s, want %s %s", remote.TraceID(), remote.SpanID(), traceID, spanID)
	}
}
