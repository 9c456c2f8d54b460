package jobs

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/natstest"
)

const testFamily = "test"

// Environment of the child worker process used by TestKilledWorkerProcess.
const (
	childURLEnv    = "JOBS_TEST_CHILD_NATS_URL"
	childWorkerEnv = "JOBS_TEST_CHILD_WORKER_ID"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(childURLEnv); url != "" {
		runChildWorker(url, os.Getenv(childWorkerEnv))
		return
	}
	os.Exit(m.Run())
}

// runChildWorker is the body of the worker process that TestKilledWorkerProcess kills with SIGKILL: a
// runner whose "long" handler reports progress once and then never returns.
func runChildWorker(url, workerID string) {
	nc, err := nats.Connect(url)
	if err != nil {
		os.Exit(3)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		os.Exit(3)
	}
	ctx := context.Background()
	r, err := New(ctx, js, testOptions(Options{WorkerID: workerID}))
	if err != nil {
		os.Exit(3)
	}
	r.Register("long", func(ctx context.Context, job Job, report func(Progress)) (any, error) {
		report(Progress{Done: 1, Total: 10, Stage: "child"})
		select {} // mid-job until killed
	})
	if err := r.Start(ctx); err != nil {
		os.Exit(3)
	}
	select {}
}

// testOptions are short timings for tests; fields set in o win.
func testOptions(o Options) Options {
	if o.Family == "" {
		o.Family = testFamily
	}
	if o.AckWait == 0 {
		o.AckWait = 2 * time.Second
	}
	if o.RetryDelay == 0 {
		o.RetryDelay = 100 * time.Millisecond
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 2 * time.Second
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = 2 * time.Second
	}
	return o
}

// newRunner makes a runner on nc with the given handlers; it is stopped when the test ends.
func newRunner(t *testing.T, nc *nats.Conn, o Options, handlers map[string]Handler) *Runner {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	r, err := New(ctx, js, testOptions(o))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	for k, h := range handlers {
		r.Register(k, h)
	}
	t.Cleanup(r.Stop)
	return r
}

func start(t *testing.T, r *Runner) {
	t.Helper()
	if err := r.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitJob polls the record until cond holds or the timeout passes.
func waitJob(t *testing.T, r *Runner, id string, timeout time.Duration, what string, cond func(Job) bool) Job {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last Job
	for time.Now().Before(deadline) {
		j, err := r.Get(context.Background(), id)
		if err == nil {
			last = j
			if cond(j) {
				return j
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("job %s: %s not reached within %s; last record: %+v", id, what, timeout, last)
	return last
}

func waitState(t *testing.T, r *Runner, id string, s State, timeout time.Duration) Job {
	t.Helper()
	return waitJob(t, r, id, timeout, "state "+string(s), func(j Job) bool { return j.State == s })
}

// workMessages counts the messages waiting in the family's work stream.
func workMessages(t *testing.T, nc *nats.Conn) uint64 {
	t.Helper()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, StreamName(testFamily))
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func resultString(t *testing.T, j Job) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(j.Result, &s); err != nil {
		t.Fatalf("result %s: %v", j.Result, err)
	}
	return s
}

// blockingHandler blocks until release is closed (ignoring its context, like a stuck or dying process)
// and then returns result. started is closed when it first runs.
func blockingHandler(started chan struct{}, release <-chan struct{}, result string) Handler {
	var once sync.Once
	return func(ctx context.Context, job Job, report func(Progress)) (any, error) {
		once.Do(func() { close(started) })
		<-release
		return result, nil
	}
}

// pausableProxy forwards TCP connections to a NATS server and can freeze them: bytes are held (not
// dropped) while paused, as in a network partition that heals. It stands in for a partition because a
// real one cannot be made inside one process.
type pausableProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cond   *sync.Cond
	paused bool
	conns  []net.Conn
	closed bool
}

func startProxy(t *testing.T, target string) *pausableProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pausableProxy{ln: ln, target: target}
	p.cond = sync.NewCond(&p.mu)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *pausableProxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *pausableProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go p.pipe(u, c)
		go p.pipe(c, u)
	}
}

func (p *pausableProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		for p.paused && !p.closed {
			p.cond.Wait()
		}
		p.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (p *pausableProxy) setPaused(v bool) {
	p.mu.Lock()
	p.paused = v
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *pausableProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

// server starts an embedded NATS server for one test.
func server(t *testing.T) *natstest.Server { return natstest.Start(t) }

func mustJS(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// testLogger sends a runner's log to the test's log (shown on failure or with -v); lines written after the
// test's cleanups ran are dropped, since t.Log must not be called then.
func testLogger(t *testing.T) *slog.Logger {
	w := &testLogWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testLogWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}
