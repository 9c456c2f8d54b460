package agent

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/agent/internal/execs"
	"troveng.dev/agent/internal/toolexec"
	"troveng.dev/agent/internal/transfer"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ratelimit"
	"troveng.dev/shared/stream"
)

// execPlan is a checked exec request: everything the run needs, nothing started yet.
type execPlan struct {
	req     guestv1.ExecRequest
	tool    toolexec.Tool
	env     []string
	dir     string
	timeout time.Duration
	limit   *ratelimit.Limiter
}

// planExec validates an exec request completely before anything runs: the tool, its arguments and
// environment, the working directory, stdin and stdout.
func (a *Agent) planExec(req guestv1.ExecRequest) (*execPlan, error) {
	tool, err := a.tools.Lookup(req.Tool)
	if err != nil {
		return nil, err
	}
	if err := toolexec.ValidateArgs(req.Args); err != nil {
		return nil, errs.BadRequestf("%s: %s", req.Tool, errs.From(err).Message)
	}
	env, err := tool.Environ(req.Env)
	if err != nil {
		return nil, err
	}
	p := &execPlan{req: req, tool: tool, env: env}
	dir := req.Dir
	if dir == "" {
		dir = "data"
	}
	dp, err := a.roots.Parse(dir)
	if err != nil {
		return nil, errs.BadRequestf("working directory: %s", errs.From(err).Message)
	}
	if p.dir, err = a.roots.AbsDir(dp); err != nil {
		return nil, errs.BadRequestf("working directory: %s", errs.From(err).Message)
	}
	if req.TimeoutMs < 0 || req.BandwidthLimit < 0 {
		return nil, errs.BadRequestf("timeout_ms and bandwidth_limit must not be negative")
	}
	p.timeout = time.Duration(req.TimeoutMs) * time.Millisecond
	p.limit = ratelimit.New(req.BandwidthLimit)

	in := req.Stdin
	switch in.Mode {
	case "", guestv1.StdinNone:
		if len(in.Data) > 0 || in.Storage != nil {
			return nil, errs.BadRequestf("stdin mode %q takes no data and no storage reference", guestv1.StdinNone)
		}
	case guestv1.StdinData:
		if len(in.Data) > guestv1.MaxInlineData {
			return nil, errs.BadRequestf("stdin data is %d bytes; inline data is at most %d (use a stream)", len(in.Data), guestv1.MaxInlineData)
		}
		if in.Storage != nil {
			return nil, errs.BadRequestf("stdin mode data takes no storage reference")
		}
	case guestv1.StdinStream:
		if len(in.Data) > 0 || in.Storage != nil {
			return nil, errs.BadRequestf("stdin mode stream takes no data and no storage reference")
		}
	case guestv1.StdinStorage:
		if len(in.Data) > 0 {
			return nil, errs.BadRequestf("stdin mode storage takes no inline data")
		}
		if err := transfer.ValidateRef(in.Storage, true); err != nil {
			return nil, errs.BadRequestf("stdin: %s", errs.From(err).Message)
		}
	default:
		return nil, errs.BadRequestf("stdin mode %q is not one of none, data, stream, storage", in.Mode)
	}

	out := req.Stdout
	switch out.Mode {
	case "", guestv1.StdoutDiscard, guestv1.StdoutCapture:
		if out.StreamSubject != "" || out.Storage != nil {
			return nil, errs.BadRequestf("stdout mode %q takes no stream subject and no storage reference", out.Mode)
		}
	case guestv1.StdoutStream:
		if err := validateInbox(out.StreamSubject); err != nil {
			return nil, err
		}
		if out.Storage != nil {
			return nil, errs.BadRequestf("stdout mode stream takes no storage reference")
		}
	case guestv1.StdoutStorage:
		if out.StreamSubject != "" {
			return nil, errs.BadRequestf("stdout mode storage takes no stream subject")
		}
		if err := transfer.ValidateRef(out.Storage, false); err != nil {
			return nil, errs.BadRequestf("stdout: %s", errs.From(err).Message)
		}
	default:
		return nil, errs.BadRequestf("stdout mode %q is not one of discard, capture, stream, storage", out.Mode)
	}
	return p, nil
}

// validateInbox accepts only an inbox-like subject of literal tokens: a caller cannot make the agent
// publish a tool's output onto a service's subjects.
func validateInbox(subject string) error {
	const inbox = "_INBOX."
	if !strings.HasPrefix(subject, inbox) || len(subject) == len(inbox) || len(subject) > 256 {
		return errs.BadRequestf("stdout stream subject must be an _INBOX. subject (a shared/stream receiver's), at most 256 bytes")
	}
	for i := 0; i < len(subject); i++ {
		if c := subject[i]; c == '*' || c == '>' || c <= ' ' || c == 0x7f {
			return errs.BadRequestf("stdout stream subject contains %q", rune(c))
		}
	}
	if strings.Contains(subject, "..") || strings.HasSuffix(subject, ".") {
		return errs.BadRequestf("stdout stream subject has an empty token")
	}
	return nil
}

// handleExec validates, reserves a slot and starts the exec; the reply goes out at once.
func (a *Agent) handleExec(ctx context.Context, req guestv1.ExecRequest) (guestv1.ExecStarted, error) {
	p, err := a.planExec(req)
	if err != nil {
		a.metrics.exec(ctx, toolLabel(a, req.Tool), string(errs.CodeOf(err)))
		return guestv1.ExecStarted{}, err
	}
	slot, err := a.table.Reserve()
	if err != nil {
		a.metrics.refusedBusy(ctx, guestv1.OpExec)
		a.metrics.exec(ctx, req.Tool, string(errs.CodeOf(err)))
		return guestv1.ExecStarted{}, err
	}
	// The job's context ends with the job: a stdin receiver nobody drained is released with it.
	jctx, endJob := context.WithCancel(a.jobContext(ctx))
	var rcv *stream.Receiver
	if req.Stdin.Mode == guestv1.StdinStream {
		if rcv, err = stream.Listen(jctx, a.nc, a.cfg.Stream); err != nil {
			slot.Release()
			endJob()
			return guestv1.ExecStarted{}, errs.Wrap(errs.Unavailable, err, "open the stdin stream")
		}
	}
	job := a.table.Launch(jctx, slot, req.Tool, func(ctx context.Context, j *execs.Job) guestv1.ExecResult {
		defer endJob()
		return a.runExec(ctx, j, p, rcv)
	})
	a.log.Info("exec started", "exec_id", job.ID, "tool", req.Tool, "args", len(req.Args), "env", toolexec.EnvNames(req.Env),
		"stdin", orDefault(req.Stdin.Mode, guestv1.StdinNone), "stdout", orDefault(req.Stdout.Mode, guestv1.StdoutDiscard))
	st := guestv1.ExecStarted{ExecID: job.ID}
	if rcv != nil {
		st.StdinSubject = rcv.Subject()
	}
	return st, nil
}

// jobContext is the parent of a job: it lives as long as the agent, but its spans stay in the request's trace.
func (a *Agent) jobContext(reqCtx context.Context) context.Context {
	return trace.ContextWithSpanContext(a.ctx, trace.SpanContextFromContext(reqCtx))
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// toolLabel keeps the metric's tool label bounded: unknown names are counted as "other".
func toolLabel(a *Agent, tool string) string {
	if _, err := a.tools.Lookup(tool); err != nil && errs.CodeOf(err) == errs.BadRequest {
		return "other"
	}
	return tool
}

// source feeds a tool's stdin.
type source interface {
	Read(p []byte) (int, error)
	// End says how feeding ended: nil after the source's EOF was handed on, else why it stopped.
	End(err error)
}

// sink takes a tool's stdout.
type sink interface {
	Write(p []byte) (int, error)
	// Commit is called only after the tool exited 0 and nothing else failed.
	Commit() (*guestv1.Artifact, map[string]int64, error)
	Abort(err error)
}

type dataSource struct{ *bytes.Reader }

func (dataSource) End(error) {}

type streamSource struct{ rcv *stream.Receiver }

func (s streamSource) Read(p []byte) (int, error) { return s.rcv.Read(p) }
func (s streamSource) End(err error) {
	if err == nil {
		_ = s.rcv.Finish(nil)
		return
	}
	s.rcv.Fail(err)
}

type discardSink struct{}

func (discardSink) Write(p []byte) (int, error)                          { return len(p), nil }
func (discardSink) Commit() (*guestv1.Artifact, map[string]int64, error) { return nil, nil, nil }
func (discardSink) Abort(error)                                          {}

type captureSink struct{ buf bytes.Buffer }

func (c *captureSink) Write(p []byte) (int, error) {
	if c.buf.Len()+len(p) > guestv1.MaxCapture {
		return 0, errs.BadRequestf("stdout passed the capture limit of %d bytes; stream it or send it to storage instead", guestv1.MaxCapture)
	}
	return c.buf.Write(p)
}
func (c *captureSink) Commit() (*guestv1.Artifact, map[string]int64, error) { return nil, nil, nil }
func (c *captureSink) Abort(error)                                          {}

type streamSink struct{ w *stream.Writer }

func (s streamSink) Write(p []byte) (int, error) { return s.w.Write(p) }
func (s streamSink) Commit() (*guestv1.Artifact, map[string]int64, error) {
	_, _, err := s.w.Close()
	return nil, nil, err
}
func (s streamSink) Abort(err error) { s.w.Abort(err) }

// failure keeps the first agent-side error of a run.
type failure struct {
	mu  sync.Mutex
	err error
}

func (f *failure) set(err error) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil || err == nil {
		return false
	}
	f.err = errs.From(err)
	return true
}

func (f *failure) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// runExec runs one planned exec to its end.
func (a *Agent) runExec(ctx context.Context, j *execs.Job, p *execPlan, rcv *stream.Receiver) (res guestv1.ExecResult) {
	ctx, span := a.tracer.Start(ctx, "guest.exec.run", trace.WithAttributes(
		attribute.String("guest.tool", p.tool.Name), attribute.String("guest.exec_id", j.ID),
		attribute.String("guest.stdin", orDefault(p.req.Stdin.Mode, guestv1.StdinNone)),
		attribute.String("guest.stdout", orDefault(p.req.Stdout.Mode, guestv1.StdoutDiscard))))
	res.ExitCode = -1
	defer func() {
		outcome := outcomeOK
		switch {
		case res.Error != nil:
			outcome = string(res.Error.Code)
			span.SetStatus(codes.Error, res.Error.Message)
			span.SetAttributes(attribute.String("error.type", string(res.Error.Code)))
		case res.ExitCode != 0:
			outcome = outcomeNonZero
		}
		span.SetAttributes(attribute.Int("guest.exit_code", res.ExitCode), attribute.Int64("guest.stdout_bytes", res.StdoutBytes),
			attribute.Int64("guest.stdin_bytes", res.StdinBytes))
		span.End()
		a.metrics.exec(ctx, p.tool.Name, outcome)
		a.metrics.bytes(ctx, "exec", "out", res.StdoutBytes)
		a.metrics.bytes(ctx, "exec", "in", res.StdinBytes)
		a.log.Info("exec ended", "exec_id", j.ID, "tool", p.tool.Name, "exit_code", res.ExitCode, "signal", res.Signal,
			"outcome", outcome, "stdout_bytes", res.StdoutBytes, "stdin_bytes", res.StdinBytes, "duration", time.Since(j.Started))
	}()
	wipe := func() {
		if s := p.req.Stdin.Storage; s != nil && s.Frames != nil {
			clear(s.Frames.Key)
		}
		if s := p.req.Stdout.Storage; s != nil && s.Frames != nil {
			clear(s.Frames.Key)
		}
	}
	defer wipe()

	// Open stdin's and stdout's far ends first: a refused or missing artifact, or a receiver that is gone,
	// fails the exec before the tool runs.
	var src source
	switch p.req.Stdin.Mode {
	case guestv1.StdinData:
		src = dataSource{bytes.NewReader(p.req.Stdin.Data)}
	case guestv1.StdinStream:
		src = streamSource{rcv}
	case guestv1.StdinStorage:
		tctx, tspan := a.tracer.Start(ctx, "guest.exec.transfer", trace.WithAttributes(attribute.String("guest.direction", "in")))
		d, err := transfer.StartDownload(tctx, a.storage, *p.req.Stdin.Storage, p.limit, a.onResume(tctx, p.req.Stdin.Storage.Key, "download"))
		if err != nil {
			tspan.End()
			res.Error = errs.From(err)
			return res
		}
		defer func() { res.Stages = mergeStages(res.Stages, d.Stages()); tspan.End() }()
		src = d
	}
	endSource := onceEnd(src)

	var out sink
	var capture *captureSink
	switch p.req.Stdout.Mode {
	case guestv1.StdoutCapture:
		capture = &captureSink{}
		out = capture
	case guestv1.StdoutStream:
		w, err := stream.Dial(ctx, a.nc, p.req.Stdout.StreamSubject, a.cfg.Stream)
		if err != nil {
			endSource(err)
			res.Error = errs.Wrap(errs.CodeOf(err), err, "stdout stream")
			return res
		}
		out = streamSink{w}
	case guestv1.StdoutStorage:
		tctx, tspan := a.tracer.Start(ctx, "guest.exec.transfer", trace.WithAttributes(attribute.String("guest.direction", "out")))
		defer tspan.End()
		u, err := transfer.StartUpload(tctx, a.storage, *p.req.Stdout.Storage, p.limit, a.onResume(tctx, p.req.Stdout.Storage.Key, "upload"))
		if err != nil {
			endSource(err)
			res.Error = errs.From(err)
			return res
		}
		out = u
	default:
		out = discardSink{}
	}

	fail := &failure{}
	code, sig, err := a.runTool(ctx, j, p, src, endSource, out, fail)
	res.ExitCode, res.Signal = code, sig
	res.StderrTail = err
	res.StdoutBytes, res.StdinBytes = j.StdoutBytes.Load(), j.StdinBytes.Load()
	if e := fail.get(); e != nil {
		out.Abort(e)
		res.Error = errs.From(e)
		return res
	}
	if code != 0 {
		out.Abort(errs.Internalf("%s exited with %d%s; its output is not kept", p.tool.Name, code, sigNote(sig)))
		return res
	}
	art, stages, cerr := out.Commit()
	if cerr != nil {
		res.Error = errs.From(cerr)
		return res
	}
	res.Artifact, res.Stages = art, mergeStages(res.Stages, stages)
	if capture != nil {
		res.Stdout = capture.buf.Bytes()
	}
	return res
}

func sigNote(sig string) string {
	if sig == "" {
		return ""
	}
	return " (" + sig + ")"
}

func mergeStages(a, b map[string]int64) map[string]int64 {
	if len(b) == 0 {
		return a
	}
	if a == nil {
		a = map[string]int64{}
	}
	for k, v := range b {
		a[k] += v
	}
	return a
}

// onceEnd makes a source's End idempotent (several goroutines may end it); nil source: no-op.
func onceEnd(s source) func(error) {
	if s == nil {
		return func(error) {}
	}
	var once sync.Once
	return func(err error) { once.Do(func() { s.End(err) }) }
}

// pipeSize is asked for the tool's stdout pipe: fewer, larger reads than the default 64 KiB.
const pipeSize = 1 << 20

// runTool starts the tool and pumps its stdio until it has exited. It returns the exit code, the signal
// and the stderr tail; agent-side failures are recorded in fail.
func (a *Agent) runTool(ctx context.Context, j *execs.Job, p *execPlan, src source, endSource func(error), out sink, fail *failure) (int, string, string) {
	ctx, span := a.tracer.Start(ctx, "guest.exec.tool", trace.WithAttributes(attribute.String("guest.tool", p.tool.Name)))
	defer span.End()
	var toClose []*os.File
	closeAll := func() {
		for _, f := range toClose {
			_ = f.Close()
		}
	}
	pipe := func() (*os.File, *os.File, bool) {
		r, w, err := os.Pipe()
		if err != nil {
			fail.set(errs.Wrap(errs.Unavailable, err, "make a pipe for %s", p.tool.Name))
			return nil, nil, false
		}
		toClose = append(toClose, r, w)
		return r, w, true
	}
	var inR, inW *os.File
	if src != nil {
		var ok bool
		if inR, inW, ok = pipe(); !ok {
			closeAll()
			endSource(fail.get())
			return -1, "", ""
		}
	}
	outR, outW, ok1 := pipe()
	errR, errW, ok2 := pipe()
	if !ok1 || !ok2 {
		closeAll()
		endSource(fail.get())
		return -1, "", ""
	}
	setPipeSize(outW, pipeSize)

	proc, err := toolexec.Start(toolexec.Cmd{Tool: p.tool, Args: p.req.Args, Env: p.env, Dir: p.dir, Stdin: inR, Stdout: outW, Stderr: errW})
	// The child has its ends now; ours go.
	for _, f := range []*os.File{inR, outW, errW} {
		if f != nil {
			_ = f.Close()
		}
	}
	if err != nil {
		for _, f := range []*os.File{inW, outR, errR} {
			if f != nil {
				_ = f.Close()
			}
		}
		fail.set(err)
		endSource(err)
		return -1, "", ""
	}
	span.SetAttributes(attribute.Int("process.pid", proc.PID()))

	var wg sync.WaitGroup
	// stdout -> sink. After a sink failure the tool is stopped and the rest of its output drained.
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { _ = outR.Close() }()
		buf := make([]byte, 256<<10)
		var werr error
		for {
			n, rerr := outR.Read(buf)
			if n > 0 {
				j.StdoutBytes.Add(int64(n))
				if werr == nil {
					if _, werr = out.Write(buf[:n]); werr != nil {
						fail.set(werr)
						proc.Terminate(toolexec.KillGrace)
					}
				}
			}
			if rerr != nil {
				return
			}
		}
	}()
	// stderr -> tail.
	tail := newTail(guestv1.MaxStderrTail)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { _ = errR.Close() }()
		_, _ = io.Copy(tail, errR)
	}()
	// source -> stdin. Bytes that fail verification are never written; the tool is killed before stdin is
	// closed, so it cannot take a cut stream for a complete one.
	stdinDone := make(chan struct{})
	if src != nil {
		go func() {
			defer close(stdinDone)
			buf := make([]byte, 256<<10)
			for {
				n, rerr := src.Read(buf)
				if n > 0 {
					if _, werr := inW.Write(buf[:n]); werr != nil {
						_ = inW.Close()
						endSource(errs.Conflictf("%s stopped reading its stdin after %d bytes", p.tool.Name, j.StdinBytes.Load()))
						return
					}
					j.StdinBytes.Add(int64(n))
				}
				if rerr == io.EOF {
					// The source is done first, then the tool sees EOF: it cannot exit before, so its
					// exit is never taken for an early one.
					endSource(nil)
					_ = inW.Close()
					return
				}
				if rerr != nil {
					if fail.set(rerr) {
						proc.Kill()
					}
					<-proc.Done()
					_ = inW.Close()
					endSource(rerr)
					return
				}
			}
		}()
	} else {
		close(stdinDone)
	}

	var timeout <-chan time.Time
	if p.timeout > 0 {
		t := time.NewTimer(p.timeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-proc.Done():
	case <-ctx.Done():
		cause := context.Cause(ctx)
		if errs.CodeOf(cause) == errs.Internal {
			cause = errs.New(errs.Cancelled, "%s was cancelled", p.tool.Name)
		}
		fail.set(cause)
		proc.Terminate(toolexec.KillGrace)
	case <-timeout:
		fail.set(errs.New(errs.Timeout, "%s ran longer than its timeout of %s and was stopped", p.tool.Name, p.timeout))
		proc.Terminate(toolexec.KillGrace)
	}
	<-proc.Done()
	wg.Wait()
	// A source the tool never drained (it exited early) is ended here, which also unblocks a Read waiting
	// for the caller's next chunk.
	select {
	case <-stdinDone:
	default:
		why := fail.get()
		if why == nil {
			why = errs.Conflictf("%s exited before reading all of its stdin", p.tool.Name)
		}
		endSource(why)
		_ = inW.Close()
		<-stdinDone
	}
	code, sig := proc.Result()
	return code, sig, tail.String()
}

// setPipeSize asks the kernel for a larger pipe buffer (best effort; F_SETPIPE_SZ).
func setPipeSize(f *os.File, n int) {
	const fSetPipeSz = 1031
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_, _, _ = syscall.Syscall(syscall.SYS_FCNTL, fd, fSetPipeSz, uintptr(n))
	})
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	max int
	buf []byte
}

func newTail(max int) *tailBuffer { return &tailBuffer{max: max} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= t.max {
		t.buf = append(t.buf[:0], p[len(p)-t.max:]...)
		return n, nil
	}
	if over := len(t.buf) + len(p) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

func (t *tailBuffer) String() string { return strings.ToValidUTF8(string(t.buf), "\uFFFD") }

// handleWait long-polls an exec's result.
func (a *Agent) handleWait(ctx context.Context, req guestv1.ExecWaitRequest) (guestv1.ExecResult, error) {
	return a.table.Wait(ctx, req.ExecID, time.Duration(req.WaitMs)*time.Millisecond)
}

// handleCancel stops an exec.
func (a *Agent) handleCancel(ctx context.Context, req guestv1.ExecRef) (guestv1.ExecResult, error) {
	r, err := a.table.Cancel(req.ExecID, errs.New(errs.Cancelled, "cancelled by exec_cancel"))
	if err == nil {
		a.log.Info("exec cancel requested", "exec_id", req.ExecID)
	}
	return r, err
}
