package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/stream"
)

// fakeAgent stands in for the guest agent (agent/, being written) on the wire: it registers in the KV
// registry with a heartbeat and serves info, exec (stdin and stdout streamed), exec_wait, exec_cancel and
// the engine operations over guestv1, with a few tools of its own. Replace it with the real agent run
// in-process once troveng.dev/agent can be imported.
type fakeAgent struct {
	t        testing.TB
	nc       *nats.Conn
	instance string
	svc      micro.Service
	kv       jetstream.KeyValue
	stop     chan struct{}
	stopped  sync.WaitGroup

	mu      sync.Mutex
	reg     guestv1.Registration
	execs   map[string]*fakeExec
	ran     []string // tools run, in order
	stopOne sync.Once
}

type fakeExec struct {
	done   chan struct{}
	cancel context.CancelFunc
	result guestv1.ExecResult
}

// fakeTools is the fake agent's allow-list: each reads stdin, writes stdout and stderr, returns the exit code.
var fakeTools = map[string]func(ctx context.Context, args []string, in io.Reader, out, errOut io.Writer) int{
	"cat": func(_ context.Context, _ []string, in io.Reader, out, _ io.Writer) int {
		if _, err := io.Copy(out, in); err != nil {
			return 1
		}
		return 0
	},
	"sha256sum": func(_ context.Context, _ []string, in io.Reader, out, _ io.Writer) int {
		h := sha256.New()
		if _, err := io.Copy(h, in); err != nil {
			return 1
		}
		fmt.Fprintf(out, "%s  -\n", hex.EncodeToString(h.Sum(nil)))
		return 0
	},
	"echo": func(_ context.Context, args []string, _ io.Reader, out, _ io.Writer) int {
		fmt.Fprintln(out, strings.Join(args, " "))
		return 0
	},
	// fail CODE MESSAGE: writes MESSAGE to stderr and exits with CODE.
	"fail": func(_ context.Context, args []string, _ io.Reader, _, errOut io.Writer) int {
		code, _ := strconv.Atoi(args[0])
		fmt.Fprintln(errOut, strings.Join(args[1:], " "))
		return code
	},
	// sleep SECONDS: until then or until stopped.
	"sleep": func(ctx context.Context, args []string, _ io.Reader, _, _ io.Writer) int {
		d, _ := time.ParseDuration(args[0] + "s")
		select {
		case <-time.After(d):
			return 0
		case <-ctx.Done():
			return -1
		}
	},
}

const fakeHeartbeat = 200 * time.Millisecond

func fakeRegistration(instance, engine string) guestv1.Registration {
	now := time.Now().UTC()
	tools := make([]string, 0, len(fakeTools))
	for name := range fakeTools {
		tools = append(tools, name)
	}
	return guestv1.Registration{
		Instance: instance, Engine: engine, EngineVersion: "7.0.15", AgentVersion: guestv1.Version, Address: "10.88.0.7",
		Capabilities: []string{guestv1.OpInfo, guestv1.OpExec}, Tools: tools, Roots: []string{guestv1.RootData, guestv1.RootConfig},
		Status:  guestv1.EngineStatus{Engine: engine, Version: "7.0.15", State: guestv1.EngineRunning, Healthy: true, PID: 42, Port: 6379},
		Started: now, Heartbeat: now, HeartbeatMs: fakeHeartbeat.Milliseconds(),
	}
}

// startFakeAgent registers instance and serves it on nc until the test ends (or Stop).
func startFakeAgent(t testing.TB, nc *nats.Conn, instance, engine string) *fakeAgent {
	t.Helper()
	a := &fakeAgent{t: t, nc: nc, instance: instance, stop: make(chan struct{}), execs: map[string]*fakeExec{}, reg: fakeRegistration(instance, engine)}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if a.kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: guestv1.RegistryBucket}); err != nil {
		t.Fatalf("fake agent: registry bucket: %v", err)
	}
	if err := a.beat(ctx); err != nil {
		t.Fatalf("fake agent: register: %v", err)
	}
	a.svc, err = micro.AddService(nc, micro.Config{Name: "trove-guest", Version: guestv1.Version})
	if err != nil {
		t.Fatalf("fake agent: micro: %v", err)
	}
	grp := a.svc.AddGroup(guestv1.Group(instance))
	for op, h := range map[string]func(micro.Request) (any, error){
		guestv1.OpInfo:         a.info,
		guestv1.OpExec:         a.exec,
		guestv1.OpExecWait:     a.execWait,
		guestv1.OpExecCancel:   a.execCancel,
		guestv1.OpEngineStatus: a.engine(""),
		guestv1.OpEngineStart:  a.engine(guestv1.EngineRunning),
		guestv1.OpEngineStop:   a.engine(guestv1.EngineStopped),
	} {
		if err := grp.AddEndpoint(op, reply(h)); err != nil {
			t.Fatalf("fake agent: endpoint %s: %v", op, err)
		}
	}
	a.stopped.Add(1)
	go func() {
		defer a.stopped.Done()
		tick := time.NewTicker(fakeHeartbeat)
		defer tick.Stop()
		for {
			select {
			case <-a.stop:
				return
			case <-tick.C:
				bctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = a.beat(bctx)
				cancel()
			}
		}
	}()
	t.Cleanup(a.Stop)
	return a
}

// Stop ends the service and the heartbeat; the record stays (and turns stale), as after a crash.
func (a *fakeAgent) Stop() {
	a.stopOne.Do(func() {
		close(a.stop)
		a.stopped.Wait()
		if a.svc != nil {
			_ = a.svc.Stop()
		}
	})
}

func (a *fakeAgent) tools() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.ran...)
}

func (a *fakeAgent) beat(ctx context.Context) error {
	a.mu.Lock()
	a.reg.Heartbeat = time.Now().UTC()
	b, _ := json.Marshal(a.reg)
	a.mu.Unlock()
	_, err := a.kv.Put(ctx, a.instance, b)
	return err
}

// reply adapts a handler: JSON reply, or a coded error in the micro error headers, as shared/service does.
func reply(h func(micro.Request) (any, error)) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		resp, err := h(req)
		if err != nil {
			e := errs.From(err)
			_ = req.Error(strconv.Itoa(e.Code.Status()), e.Message, errs.Body(e))
			return
		}
		b, _ := json.Marshal(resp)
		_ = req.Respond(b)
	})
}

func decodeReq(req micro.Request, v any) error {
	if len(req.Data()) == 0 {
		return nil
	}
	if err := json.Unmarshal(req.Data(), v); err != nil {
		return errs.BadRequestf("malformed JSON request: %v", err)
	}
	return nil
}

func (a *fakeAgent) info(micro.Request) (any, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.reg
	r.Heartbeat = time.Now().UTC()
	return r, nil
}

func (a *fakeAgent) engine(state string) func(micro.Request) (any, error) {
	return func(micro.Request) (any, error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if state != "" {
			a.reg.Status.State = state
			a.reg.Status.Healthy = state == guestv1.EngineRunning
		}
		return a.reg.Status, nil
	}
}

func (a *fakeAgent) exec(req micro.Request) (any, error) {
	var r guestv1.ExecRequest
	if err := decodeReq(req, &r); err != nil {
		return nil, err
	}
	tool, ok := fakeTools[r.Tool]
	if !ok {
		return nil, errs.BadRequestf("tool %q is not on this guest's allow-list", r.Tool)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if r.TimeoutMs > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), time.Duration(r.TimeoutMs)*time.Millisecond)
	}
	x := &fakeExec{done: make(chan struct{}), cancel: cancel, result: guestv1.ExecResult{ExecID: newExecID(), Tool: r.Tool, Started: time.Now().UTC()}}
	st := guestv1.ExecStarted{ExecID: x.result.ExecID}
	var in io.Reader = strings.NewReader("")
	var rcv *stream.Receiver
	if r.Stdin.Mode == guestv1.StdinStream {
		var err error
		if rcv, err = stream.Listen(ctx, a.nc, stream.Options{}); err != nil {
			cancel()
			return nil, err
		}
		in, st.StdinSubject = rcv, rcv.Subject()
	}
	a.mu.Lock()
	a.execs[st.ExecID] = x
	a.ran = append(a.ran, r.Tool)
	a.mu.Unlock()
	go func() {
		defer cancel()
		res := x.result
		out := io.Discard
		var w *stream.Writer
		if r.Stdout.Mode == guestv1.StdoutStream {
			var err error
			if w, err = stream.Dial(ctx, a.nc, r.Stdout.StreamSubject, stream.Options{}); err != nil {
				res.Error = errs.From(err)
			} else {
				out = w
			}
		}
		var stderr bytes.Buffer
		counted := &countingReader{r: in}
		if res.Error == nil {
			res.ExitCode = tool(ctx, r.Args, counted, out, &stderr)
		}
		if rcv != nil {
			if res.ExitCode == 0 {
				_ = rcv.Finish(nil)
			} else {
				rcv.Fail(errs.Internalf("%s ended", r.Tool))
			}
			_ = rcv.Close()
		}
		if ctx.Err() != nil {
			res.ExitCode, res.Signal = -1, "killed"
		}
		if w != nil {
			if res.ExitCode == 0 {
				if _, _, err := w.Close(); err != nil && res.Error == nil {
					res.Error = errs.From(err)
				}
			} else {
				w.Abort(errs.Internalf("%s ended with %d", r.Tool, res.ExitCode))
			}
		}
		res.StderrTail = stderr.String()
		res.StdinBytes = counted.n
		res.Done = true
		res.DurationMs = time.Since(res.Started).Milliseconds()
		a.mu.Lock()
		x.result = res
		a.mu.Unlock()
		close(x.done)
	}()
	return st, nil
}

func (a *fakeAgent) lookup(id string) (*fakeExec, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	x, ok := a.execs[id]
	if !ok {
		return nil, errs.NotFoundf("no exec %q on this guest", id)
	}
	return x, nil
}

func (a *fakeAgent) execWait(req micro.Request) (any, error) {
	var r guestv1.ExecWaitRequest
	if err := decodeReq(req, &r); err != nil {
		return nil, err
	}
	x, err := a.lookup(r.ExecID)
	if err != nil {
		return nil, err
	}
	wait := time.Duration(r.WaitMs) * time.Millisecond
	if wait <= 0 || wait > time.Minute {
		wait = 10 * time.Second
	}
	select {
	case <-x.done:
	case <-time.After(wait):
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return x.result, nil
}

func (a *fakeAgent) execCancel(req micro.Request) (any, error) {
	var r guestv1.ExecRef
	if err := decodeReq(req, &r); err != nil {
		return nil, err
	}
	x, err := a.lookup(r.ExecID)
	if err != nil {
		return nil, err
	}
	x.cancel()
	a.mu.Lock()
	defer a.mu.Unlock()
	return x.result, nil
}

func newExecID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
