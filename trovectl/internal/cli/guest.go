package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/stream"
)

func guestCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "guest",
		Short: "List, inspect and drive guests (database hosts) through their agents; run local guest containers",
		Long: `A guest is a database host running the guest agent. Agents register in the JetStream KV bucket
` + guestv1.RegistryBucket + ` with a heartbeat; ls and show read that registry, exec and engine talk to the agent on
trove.guest.<instance>.<operation>. start and stop run a local guest container from the guest image against
the running stack (development and demos; in production the control plane provisions guests).`,
	}
	c.AddCommand(guestLsCmd(g), guestShowCmd(g), guestExecCmd(g), guestEngineCmd(g), guestGenCmd(g), guestStartCmd(g), guestStopCmd(g))
	return c
}

// guestView is a registration as trovectl shows it: the record plus what its age means now.
type guestView struct {
	guestv1.Registration
	HeartbeatAgeMs int64 `json:"heartbeat_age_ms"`
	Stale          bool  `json:"stale"`
}

func viewOf(r guestv1.Registration, now time.Time) guestView {
	return guestView{Registration: r, HeartbeatAgeMs: r.Age(now).Milliseconds(), Stale: r.Stale(now)}
}

// withRegistry connects and hands f the JetStream context the registry is read through.
func (g *globals) withRegistry(f func(nc *nats.Conn, js jetstream.JetStream) error) error {
	nc, err := g.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return errs.Wrap(errs.Internal, err, "JetStream client")
	}
	return f(nc, js)
}

// registryKV opens the registry bucket; a missing bucket means no agent ever registered.
func registryKV(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, guestv1.RegistryBucket)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, errs.NotFoundf("no guest has registered yet (the registry bucket %s does not exist); start one with `trovectl guest start --engine redis`", guestv1.RegistryBucket)
		}
		return nil, errs.Wrap(errs.Unavailable, err, "open the guest registry %s", guestv1.RegistryBucket)
	}
	return kv, nil
}

func guestLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "ls",
		Short: "List registered guests: engine, state, health, heartbeat age (stale ones marked), agent version, address",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				g.output = "json"
			}
			return g.withRegistry(func(_ *nats.Conn, js jetstream.JetStream) error {
				ctx, cancel := g.requestCtx(cmd.Context())
				defer cancel()
				regs, err := guestclient.Guests(ctx, js)
				if err != nil {
					return err
				}
				now := time.Now()
				views := make([]guestView, 0, len(regs))
				for _, r := range regs {
					views = append(views, viewOf(r, now))
				}
				return g.print(views, func(w io.Writer) { printGuestTable(w, views) })
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON (same as -o json)")
	return c
}

func printGuestTable(w io.Writer, views []guestView) {
	if len(views) == 0 {
		fmt.Fprintln(w, "No guests registered. Start one with `trovectl guest start --engine redis` (see docs/operations.md, Guests).")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tENGINE\tVERSION\tSTATE\tHEALTHY\tHEARTBEAT\tSTALE\tAGENT\tADDRESS")
	for _, v := range views {
		stale := ""
		if v.Stale {
			stale = "STALE"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Instance, v.Engine, dash(v.EngineVersion), dash(v.Status.State),
			yesNo(v.Status.Healthy), ageText(time.Duration(v.HeartbeatAgeMs)*time.Millisecond), stale, dash(v.AgentVersion), dash(v.Address))
	}
	_ = tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// ageText is a heartbeat age for people: tenths of a second under a minute, whole seconds above.
func ageText(d time.Duration) string {
	if d < 0 {
		return "in the future (clock skew)"
	}
	if d < time.Minute {
		return d.Round(100*time.Millisecond).String() + " ago"
	}
	return d.Round(time.Second).String() + " ago"
}

// guestShow is what `guest show` prints: the registry's record (if any) and the agent's live answer (if any).
type guestShow struct {
	Instance     string                `json:"instance"`
	Registration *guestView            `json:"registration"`
	Live         *guestv1.Registration `json:"live"`
	LiveError    *errs.Error           `json:"live_error,omitempty"`
	LiveMs       int64                 `json:"live_ms,omitempty"`
}

func guestShowCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show ID",
		Short: "Show a guest's registration in full and, if its agent answers, its live info",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if asJSON {
				g.output = "json"
			}
			id := args[0]
			if err := guestv1.ValidateInstance(id); err != nil {
				return err
			}
			return g.withRegistry(func(nc *nats.Conn, js jetstream.JetStream) error {
				s, err := g.showGuest(cmd.Context(), nc, js, id)
				if err != nil {
					return err
				}
				return g.print(s, func(w io.Writer) { printGuestShow(w, s) })
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON (same as -o json)")
	return c
}

// liveTimeout bounds the live info request of show: an agent that does not answer quickly is reported as such.
const liveTimeout = 5 * time.Second

func (g *globals) showGuest(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, id string) (guestShow, error) {
	s := guestShow{Instance: id}
	rctx, cancel := g.requestCtx(ctx)
	defer cancel()
	kv, err := registryKV(rctx, js)
	var regErr error
	if err == nil {
		var r guestv1.Registration
		r, regErr = guestclient.Guest(rctx, kv, id)
		if regErr == nil {
			v := viewOf(r, time.Now())
			s.Registration = &v
		}
	} else {
		regErr = err
	}
	if regErr != nil && !errs.Is(regErr, errs.NotFound) {
		return s, regErr
	}
	gc, err := guestclient.New(nc, id, stream.Options{})
	if err != nil {
		return s, err
	}
	lctx, lcancel := context.WithTimeout(ctx, min(liveTimeout, g.timeout))
	defer lcancel()
	start := time.Now()
	live, err := gc.Info(lctx)
	if err != nil {
		s.LiveError = errs.From(err)
	} else {
		s.Live = &live
		s.LiveMs = time.Since(start).Milliseconds()
	}
	if s.Registration == nil && s.Live == nil {
		return s, errs.NotFoundf("no guest %q is registered in %s and no agent answers on %s (%s)", id,
			guestv1.RegistryBucket, guestv1.Subject(id, guestv1.OpInfo), s.LiveError.Message)
	}
	return s, nil
}

func printGuestShow(w io.Writer, s guestShow) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "instance\t%s\n", s.Instance)
	switch {
	case s.Registration == nil:
		fmt.Fprintf(tw, "registry\tNOT REGISTERED in %s (the agent answers, but its record is missing)\n", guestv1.RegistryBucket)
	case s.Registration.Stale:
		r := s.Registration
		fmt.Fprintf(tw, "registry\tSTALE: last heartbeat %s, more than %d missed beats of %s; the agent is not proving itself alive\n",
			ageText(time.Duration(r.HeartbeatAgeMs)*time.Millisecond), guestv1.StaleBeats, time.Duration(r.HeartbeatMs)*time.Millisecond)
	default:
		r := s.Registration
		fmt.Fprintf(tw, "registry\tfresh: last heartbeat %s (every %s)\n", ageText(time.Duration(r.HeartbeatAgeMs)*time.Millisecond), time.Duration(r.HeartbeatMs)*time.Millisecond)
	}
	if s.Live != nil {
		fmt.Fprintf(tw, "live\tthe agent answered info in %d ms\n", s.LiveMs)
	} else {
		fmt.Fprintf(tw, "live\tUNREACHABLE: the agent did not answer (%s: %s)\n", s.LiveError.Code, s.LiveError.Message)
	}
	// The live answer is the fresher one; the record fills in when the agent is gone.
	r := s.Live
	if r == nil {
		r = &s.Registration.Registration
	}
	fmt.Fprintf(tw, "engine\t%s %s\n", dash(r.Engine), r.EngineVersion)
	st := r.Status
	fmt.Fprintf(tw, "engine state\t%s, healthy %s", dash(st.State), yesNo(st.Healthy))
	if st.PID != 0 {
		fmt.Fprintf(tw, ", pid %d", st.PID)
	}
	if st.Port != 0 {
		fmt.Fprintf(tw, ", port %d", st.Port)
	}
	fmt.Fprintln(tw)
	if st.DataDir != "" {
		fmt.Fprintf(tw, "data dir\t%s\n", st.DataDir)
	}
	if st.Message != "" {
		fmt.Fprintf(tw, "engine message\t%s\n", st.Message)
	}
	fmt.Fprintf(tw, "agent version\t%s\n", dash(r.AgentVersion))
	fmt.Fprintf(tw, "address\t%s\n", dash(r.Address))
	fmt.Fprintf(tw, "started\t%s\n", r.Started.Format(time.RFC3339))
	fmt.Fprintf(tw, "heartbeat\t%s\n", r.Heartbeat.Format(time.RFC3339Nano))
	fmt.Fprintf(tw, "tools\t%s\n", strings.Join(r.Tools, " "))
	fmt.Fprintf(tw, "capabilities\t%s\n", strings.Join(r.Capabilities, " "))
	fmt.Fprintf(tw, "roots\t%s\n", strings.Join(r.Roots, " "))
	_ = tw.Flush()
}

func guestExecCmd(g *globals) *cobra.Command {
	var withStdin bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "exec [flags] ID TOOL [ARGS...]",
		Short: "Run an allow-listed tool on a guest: its stdout streams here, its stderr tail follows, its exit code is ours",
		Long: `exec runs TOOL (a name from the agent's allow-list, see ` + "`guest show ID`" + `) on the guest with ARGS as its
argument vector: no shell is involved, so quotes, pipes and $ in ARGS reach the tool as they are. The tool's
stdout streams to this terminal as it comes; the last 16 KiB of its stderr is printed to stderr when it ends;
trovectl exits with the tool's exit code (128+n when a signal ended it). Flags go before ID: everything from
TOOL on belongs to the tool. With --stdin, this terminal's standard input is streamed to the tool. Ctrl-C
stops the tool on the guest. Errors of the agent (a tool not on the allow-list, a bad argument, the guest
unreachable) exit with trovectl's own codes: 2 bad request, 3 not found, 5 unavailable, 8 timeout.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, tool := args[0], args[1]
			if err := guestv1.ValidateInstance(id); err != nil {
				return err
			}
			if timeout < 0 {
				return errs.BadRequestf("--timeout %s is negative", timeout)
			}
			nc, err := g.connect()
			if err != nil {
				return err
			}
			defer nc.Close()
			return g.execOnGuest(cmd.Context(), nc, id, guestv1.ExecRequest{Tool: tool, Args: args[2:], TimeoutMs: timeout.Milliseconds()}, withStdin)
		},
	}
	c.Flags().SetInterspersed(false) // the tool's own flags (redis-cli -p ...) are not trovectl's
	c.Flags().BoolVar(&withStdin, "stdin", false, "stream this terminal's standard input to the tool")
	c.Flags().DurationVar(&timeout, "timeout", 0, "end the tool on the guest after this long (0: no limit)")
	return c
}

func (g *globals) execOnGuest(ctx context.Context, nc *nats.Conn, id string, req guestv1.ExecRequest, withStdin bool) error {
	gc, err := guestclient.New(nc, id, stream.Options{})
	if err != nil {
		return err
	}
	if withStdin {
		req.Stdin = guestv1.StdinSpec{Mode: guestv1.StdinStream}
	}
	r, err := runStreamed(ctx, nc, gc, req, g.stdin, g.stdout)
	if r.StderrTail != "" {
		if len(r.StderrTail) >= guestv1.MaxStderrTail {
			fmt.Fprintf(g.stderr, "[trovectl: the last %d bytes of %s's stderr]\n", len(r.StderrTail), req.Tool)
		}
		_, _ = io.WriteString(g.stderr, r.StderrTail)
		if !strings.HasSuffix(r.StderrTail, "\n") {
			fmt.Fprintln(g.stderr)
		}
	}
	// A tool that failed on its own before reading all of its stdin: the agent reports a conflict, but as in
	// a shell pipeline the tool's own exit code tells more (the note still goes to stderr). With exit 0 the
	// conflict stands: the agent then drops the tool's stdout, so what arrived here may be cut.
	if r.Done && r.Signal == "" && r.ExitCode > 0 && r.Error != nil && r.Error.Code == errs.Conflict && withStdin {
		fmt.Fprintf(g.stderr, "[trovectl: %s]\n", r.Error.Message)
		r.Error = nil
	}
	// A tool that ran to its own non-zero exit reports that, whatever became of its stdout stream (an
	// agent ends the stream with an error when the tool fails).
	if r.Done && r.Error == nil && r.ExitCode != 0 {
		code, how := toolExitCode(r)
		return &exitError{code: code, msg: fmt.Sprintf("%s on guest %s %s", req.Tool, id, how)}
	}
	if err != nil {
		return err
	}
	if r.Error != nil {
		return r.Error
	}
	if !r.Done {
		return errs.Unavailablef("%s on guest %s did not finish", req.Tool, id)
	}
	return nil
}

// runStreamed runs an exec with its stdout streamed into stdout and, for a "stream" stdin, stdin streamed to
// the tool. It is guestclient.RunToWriter except for one thing an interactive CLI needs: a tool that ends
// without reading all of its input (redis-cli ping, head) must not leave trovectl waiting for a terminal
// that never sends EOF, so stdin is read through a pipe that is closed once the exec is over.
func runStreamed(ctx context.Context, nc *nats.Conn, gc *guestclient.Client, req guestv1.ExecRequest, stdin io.Reader, stdout io.Writer) (guestv1.ExecResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rcv, err := stream.Listen(ctx, nc, stream.Options{})
	if err != nil {
		return guestv1.ExecResult{}, err
	}
	defer func() { _ = rcv.Close() }()
	req.Stdout = guestv1.StdoutSpec{Mode: guestv1.StdoutStream, StreamSubject: rcv.Subject()}
	st, err := gc.Exec(ctx, req)
	if err != nil {
		return guestv1.ExecResult{}, err
	}
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(stdout, rcv)
		if err != nil {
			rcv.Fail(err)
		} else {
			err = rcv.Finish(nil)
		}
		copied <- err
	}()
	sent := make(chan error, 1)
	closeIn, inErr := func() {}, func() error { return nil }
	if st.StdinSubject != "" {
		var in io.Reader
		in, closeIn, inErr = interruptible(stdin)
		go func() {
			_, _, err := stream.Send(ctx, nc, st.StdinSubject, in, stream.Options{})
			sent <- err
		}()
	} else {
		sent <- nil
	}
	r, err := gc.Wait(ctx, st.ExecID, nil)
	if err != nil && ctx.Err() != nil {
		// Interrupted here (Ctrl-C): stop the tool on the guest too (best effort, on a fresh short context).
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_, _ = gc.Cancel(cctx, st.ExecID)
		ccancel()
	}
	// Once the exec is over, what the tool did not read is ended here (a terminal may never send EOF).
	closeIn()
	if err != nil {
		cancel() // the agent is gone or we gave up: fail the streams instead of waiting for their idle timeout
		<-copied //nolint:errcheck // waits for the copier; its error is secondary to the exec's
		<-sent   //nolint:errcheck // likewise
		return r, err
	}
	cerr := <-copied
	// The send's own error is not the exec's (see below); a send stuck on a silent peer is cut short.
	select {
	case <-sent: //nolint:errcheck // see above
	case <-time.After(5 * time.Second):
		cancel()
		<-sent //nolint:errcheck // see above
	}
	if cerr != nil && r.Error == nil {
		return r, cerr
	}
	// As in a shell pipeline, the tool's own outcome decides: a tool that exits before reading all of its
	// stdin has not failed (the agent then ends the stdin stream with a conflict, which is not reported).
	// Only failing to read our own standard input is, since the tool may have taken cut input for whole.
	if rerr := inErr(); rerr != nil && r.Error == nil {
		return r, errs.Wrap(errs.Internal, rerr, "reading standard input for %s; the tool may have seen only part of it", req.Tool)
	}
	return r, nil
}

// errStdinUnread ends the reading of stdin once the exec is over.
var errStdinUnread = errors.New("the tool ended before reading all of its standard input")

// interruptible reads r through a pipe; stop makes a blocked Read return errStdinUnread at once, even while
// r (a terminal) is itself blocked (the copier left blocked on r ends with the process). readErr is the
// error reading r failed with, if it did (EOF is none).
func interruptible(r io.Reader) (in io.Reader, stop func(), readErr func() error) {
	if r == nil {
		r = eofReader{}
	}
	pr, pw := io.Pipe()
	var mu sync.Mutex
	var failed error
	go func() {
		_, err := io.Copy(pw, r)
		if err != nil && !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, errStdinUnread) {
			mu.Lock()
			failed = err
			mu.Unlock()
		}
		_ = pw.CloseWithError(err) // nil: EOF for the reader
	}()
	return pr, func() { _ = pr.CloseWithError(errStdinUnread) }, func() error {
		mu.Lock()
		defer mu.Unlock()
		return failed
	}
}

// toolExitCode is the exit code trovectl passes on for a tool that did not exit 0: its own, or 128+n for
// a signal, the way a shell reports it.
func toolExitCode(r guestv1.ExecResult) (int, string) {
	if r.ExitCode > 0 && r.ExitCode < 256 {
		return r.ExitCode, fmt.Sprintf("exited with %d", r.ExitCode)
	}
	if n, ok := signalNumbers[strings.ToLower(r.Signal)]; ok {
		return 128 + n, fmt.Sprintf("was ended by signal %s", r.Signal)
	}
	if r.Signal != "" {
		return exitInternal, fmt.Sprintf("was ended by signal %s", r.Signal)
	}
	return exitInternal, fmt.Sprintf("ended with exit code %d", r.ExitCode)
}

// signalNumbers maps the signal names an agent may report (Go's and the usual short forms) to numbers.
var signalNumbers = map[string]int{
	"hangup": 1, "sighup": 1, "hup": 1,
	"interrupt": 2, "sigint": 2, "int": 2,
	"quit": 3, "sigquit": 3,
	"aborted": 6, "sigabrt": 6, "abrt": 6,
	"killed": 9, "sigkill": 9, "kill": 9,
	"segmentation fault": 11, "sigsegv": 11, "segv": 11,
	"broken pipe": 13, "sigpipe": 13, "pipe": 13,
	"terminated": 15, "sigterm": 15, "term": 15,
}

func guestEngineCmd(g *globals) *cobra.Command {
	var wait time.Duration
	c := &cobra.Command{
		Use:       "engine ID start|stop|status",
		Short:     "Start, stop or ask the status of a guest's engine",
		Args:      cobra.ExactArgs(2),
		ValidArgs: []string{"start", "stop", "status"},
		RunE: func(cmd *cobra.Command, args []string) error {
			id, action := args[0], args[1]
			if err := guestv1.ValidateInstance(id); err != nil {
				return err
			}
			nc, err := g.connect()
			if err != nil {
				return err
			}
			defer nc.Close()
			gc, err := guestclient.New(nc, id, stream.Options{})
			if err != nil {
				return err
			}
			req := guestv1.EngineRequest{WaitMs: wait.Milliseconds()}
			var st guestv1.EngineStatus
			switch action {
			case "start":
				st, err = gc.EngineStart(cmd.Context(), req)
			case "stop":
				st, err = gc.EngineStop(cmd.Context(), req)
			case "status":
				ctx, cancel := g.requestCtx(cmd.Context())
				defer cancel()
				st, err = gc.EngineStatus(ctx)
			default:
				return errs.BadRequestf("unknown engine action %q; use start, stop or status", action)
			}
			if err != nil {
				return err
			}
			return g.print(st, func(w io.Writer) { printEngineStatus(w, id, st) })
		},
	}
	c.Flags().DurationVar(&wait, "wait", 0, "how long start waits for the engine to be healthy, and stop for it to exit (0: the agent's default, 60s)")
	return c
}

func printEngineStatus(w io.Writer, id string, st guestv1.EngineStatus) {
	fmt.Fprintf(w, "%s: %s %s %s, healthy %s", id, st.Engine, st.Version, dash(st.State), yesNo(st.Healthy))
	if st.PID != 0 {
		fmt.Fprintf(w, ", pid %d", st.PID)
	}
	if st.Port != 0 {
		fmt.Fprintf(w, ", port %d", st.Port)
	}
	fmt.Fprintln(w)
	if st.Message != "" {
		fmt.Fprintf(w, "  %s\n", st.Message)
	}
}
