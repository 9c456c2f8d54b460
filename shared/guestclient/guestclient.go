// Package guestclient is the Go client of the guest agent (trove.guest.<instance>.<operation>): what the
// strategy services, trovectl and the test kit use to drive a guest.
package guestclient

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/stream"
)

// Client drives one guest.
type Client struct {
	nc       *nats.Conn
	instance string
	stream   stream.Options
}

// New returns a client for the guest instance. The id is validated here, before it becomes a subject token.
func New(nc *nats.Conn, instance string, opts stream.Options) (*Client, error) {
	if err := guestv1.ValidateInstance(instance); err != nil {
		return nil, err
	}
	return &Client{nc: nc, instance: instance, stream: opts}, nil
}

// Instance is the guest's instance id.
func (c *Client) Instance() string { return c.instance }

func (c *Client) call(ctx context.Context, op string, req, resp any) error {
	return rpc.Call(ctx, c.nc, guestv1.Subject(c.instance, op), req, resp)
}

// Info returns the agent's registration as it sees it now (engine status fresh).
func (c *Client) Info(ctx context.Context) (guestv1.Registration, error) {
	var r guestv1.Registration
	err := c.call(ctx, guestv1.OpInfo, nil, &r)
	return r, err
}

// Exec starts a tool and returns at once; follow it with Wait (or use Run).
func (c *Client) Exec(ctx context.Context, req guestv1.ExecRequest) (guestv1.ExecStarted, error) {
	var r guestv1.ExecStarted
	err := c.call(ctx, guestv1.OpExec, req, &r)
	return r, err
}

// WaitOnce asks once for an exec's result, waiting at most wait on the agent's side.
func (c *Client) WaitOnce(ctx context.Context, execID string, wait time.Duration) (guestv1.ExecResult, error) {
	var r guestv1.ExecResult
	cctx, cancel := context.WithTimeout(ctx, wait+10*time.Second)
	defer cancel()
	err := c.call(cctx, guestv1.OpExecWait, guestv1.ExecWaitRequest{ExecID: execID, WaitMs: wait.Milliseconds()}, &r)
	return r, err
}

// PollInterval is the agent-side wait of one Wait round.
const PollInterval = 10 * time.Second

// Wait waits until the exec is done, polling the agent. An agent that stops answering (killed, network
// gone) ends the wait with errs.Unavailable within one round instead of hanging. onPoll, if not nil, sees every
// intermediate result (for progress).
func (c *Client) Wait(ctx context.Context, execID string, onPoll func(guestv1.ExecResult)) (guestv1.ExecResult, error) {
	for {
		r, err := c.WaitOnce(ctx, execID, PollInterval)
		if err != nil {
			return r, err
		}
		if r.Done {
			return r, nil
		}
		if onPoll != nil {
			onPoll(r)
		}
		if err := ctx.Err(); err != nil {
			return r, errs.Wrap(errs.CodeOf(err), err, "wait for exec %s", execID)
		}
	}
}

// Cancel stops an exec (SIGTERM to its process group, then SIGKILL).
func (c *Client) Cancel(ctx context.Context, execID string) (guestv1.ExecResult, error) {
	var r guestv1.ExecResult
	err := c.call(ctx, guestv1.OpExecCancel, guestv1.ExecRef{ExecID: execID}, &r)
	return r, err
}

// Run execs a tool and waits for it. stdin (may be nil) is written to the agent when req.Stdin.Mode is
// "stream"; for a "stream" stdout, set req.Stdout.StreamSubject from a stream.Receiver yourself or use
// RunToWriter. If ctx ends first the exec is cancelled on the guest.
func (c *Client) Run(ctx context.Context, req guestv1.ExecRequest, stdin io.Reader) (guestv1.ExecResult, error) {
	st, err := c.Exec(ctx, req)
	if err != nil {
		return guestv1.ExecResult{}, err
	}
	return c.follow(ctx, st, stdin)
}

// follow writes stdin if the agent asked for a stream, then waits, cancelling the exec when ctx ends.
func (c *Client) follow(ctx context.Context, st guestv1.ExecStarted, stdin io.Reader) (guestv1.ExecResult, error) {
	sendErr := make(chan error, 1)
	if st.StdinSubject != "" {
		if stdin == nil {
			stdin = eofReader{}
		}
		go func() {
			_, _, err := stream.Send(ctx, c.nc, st.StdinSubject, stdin, c.stream)
			sendErr <- err
		}()
	} else {
		sendErr <- nil
	}
	r, err := c.Wait(ctx, st.ExecID, nil)
	if err != nil && ctx.Err() != nil {
		// The caller gave up: stop the tool on the guest (best effort, on a fresh short context).
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_, _ = c.Cancel(cctx, st.ExecID)
		cancel()
	}
	serr := <-sendErr
	if err != nil {
		return r, err
	}
	if serr != nil && r.Error == nil && r.ExitCode == 0 {
		return r, serr
	}
	return r, nil
}

// RunToWriter execs a tool whose stdout streams into w (req.Stdout.Mode is set to "stream").
func (c *Client) RunToWriter(ctx context.Context, req guestv1.ExecRequest, stdin io.Reader, w io.Writer) (guestv1.ExecResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rcv, err := stream.Listen(ctx, c.nc, c.stream)
	if err != nil {
		return guestv1.ExecResult{}, err
	}
	defer func() { _ = rcv.Close() }()
	req.Stdout = guestv1.StdoutSpec{Mode: guestv1.StdoutStream, StreamSubject: rcv.Subject()}
	st, err := c.Exec(ctx, req)
	if err != nil {
		return guestv1.ExecResult{}, err
	}
	copyErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(w, rcv)
		if err != nil {
			rcv.Fail(err)
		} else {
			err = rcv.Finish(nil)
		}
		copyErr <- err
	}()
	r, err := c.follow(ctx, st, stdin)
	if err != nil {
		cancel()
		<-copyErr //nolint:errcheck // waits for the copier; its error is secondary to the exec error returned
		return r, err
	}
	if !r.OK() {
		// A failed exec may never have dialled the stream (the tool did not start) or has aborted it: end
		// the receiver now instead of waiting for its idle timeout. A successful exec's stream was finished
		// before the agent reported the result.
		rcv.Fail(errs.New(errs.Cancelled, "exec %s ended without a complete stdout", st.ExecID))
	}
	if cerr := <-copyErr; cerr != nil && r.Error == nil && r.ExitCode == 0 {
		return r, cerr
	}
	return r, nil
}

// Check turns an exec result into an error: an agent-side error as it is, a non-zero exit as
// errs.Internal naming the tool with the tail of its stderr. Strategies use it after every Run.
func Check(r guestv1.ExecResult) error {
	if r.Error != nil {
		return r.Error
	}
	if !r.Done {
		return errs.Unavailablef("%s did not finish", r.Tool)
	}
	if r.ExitCode != 0 {
		return errs.Internalf("%s exited with %d%s: %s", r.Tool, r.ExitCode, signalNote(r.Signal), tail(r.StderrTail, 2048))
	}
	return nil
}

func signalNote(sig string) string {
	if sig == "" {
		return ""
	}
	return " (" + sig + ")"
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// Extract starts a tar extract; with a "stream" source, r is written to the agent. It waits for the end.
func (c *Client) Extract(ctx context.Context, req guestv1.ExtractRequest, r io.Reader) (guestv1.ExecResult, error) {
	var st guestv1.ExecStarted
	if err := c.call(ctx, guestv1.OpFileExtract, req, &st); err != nil {
		return guestv1.ExecResult{}, err
	}
	return c.follow(ctx, st, r)
}

// ReadFile reads a small file under a root.
func (c *Client) ReadFile(ctx context.Context, path string) (guestv1.FileData, error) {
	var r guestv1.FileData
	err := c.call(ctx, guestv1.OpFileRead, guestv1.FileRequest{Path: path}, &r)
	return r, err
}

// WriteFile writes a small file under a root, atomically.
func (c *Client) WriteFile(ctx context.Context, req guestv1.FileWriteRequest) (guestv1.FileInfo, error) {
	var r guestv1.FileInfo
	err := c.call(ctx, guestv1.OpFileWrite, req, &r)
	return r, err
}

// Stat describes a path under a root.
func (c *Client) Stat(ctx context.Context, path string) (guestv1.FileInfo, error) {
	var r guestv1.FileInfo
	err := c.call(ctx, guestv1.OpFileStat, guestv1.FileRequest{Path: path}, &r)
	return r, err
}

// List lists a directory under a root.
func (c *Client) List(ctx context.Context, path string) (guestv1.FileList, error) {
	var r guestv1.FileList
	err := c.call(ctx, guestv1.OpFileList, guestv1.FileRequest{Path: path}, &r)
	return r, err
}

// Remove removes a path under a root.
func (c *Client) Remove(ctx context.Context, req guestv1.FileRemoveRequest) (guestv1.FileInfo, error) {
	var r guestv1.FileInfo
	err := c.call(ctx, guestv1.OpFileRemove, req, &r)
	return r, err
}

// EngineStart starts the engine (initialising its data dir on first start) and waits until it is healthy.
func (c *Client) EngineStart(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	return c.engine(ctx, guestv1.OpEngineStart, req)
}

// EngineStop stops the engine.
func (c *Client) EngineStop(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	return c.engine(ctx, guestv1.OpEngineStop, req)
}

// EngineStatus reports the engine's state and health.
func (c *Client) EngineStatus(ctx context.Context) (guestv1.EngineStatus, error) {
	return c.engine(ctx, guestv1.OpEngineStatus, guestv1.EngineRequest{})
}

// EngineReset stops the engine and empties its data dir (the target of a physical restore).
func (c *Client) EngineReset(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	return c.engine(ctx, guestv1.OpEngineReset, req)
}

func (c *Client) engine(ctx context.Context, op string, req guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	var r guestv1.EngineStatus
	wait := time.Duration(req.WaitMs) * time.Millisecond
	if wait <= 0 {
		wait = 60 * time.Second
	}
	cctx, cancel := context.WithTimeout(ctx, wait+10*time.Second)
	defer cancel()
	err := c.call(cctx, op, req, &r)
	return r, err
}

// Guests reads every registration from the registry bucket, sorted by instance id. A missing bucket
// (no agent ever started) is an empty list.
func Guests(ctx context.Context, js jetstream.JetStream) ([]guestv1.Registration, error) {
	kv, err := js.KeyValue(ctx, guestv1.RegistryBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "open the guest registry %s", guestv1.RegistryBucket)
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "list the guest registry")
	}
	var out []guestv1.Registration
	for key := range lister.Keys() {
		r, err := Guest(ctx, kv, key)
		if errs.Is(err, errs.NotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Instance < out[j].Instance })
	return out, nil
}

// Guest reads one registration.
func Guest(ctx context.Context, kv jetstream.KeyValue, instance string) (guestv1.Registration, error) {
	if err := guestv1.ValidateInstance(instance); err != nil {
		return guestv1.Registration{}, err
	}
	e, err := kv.Get(ctx, instance)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return guestv1.Registration{}, errs.NotFoundf("no guest %q is registered", instance)
	}
	if err != nil {
		return guestv1.Registration{}, errs.Wrap(errs.Unavailable, err, "read guest %s from the registry", instance)
	}
	var r guestv1.Registration
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return guestv1.Registration{}, errs.Wrap(errs.Internal, err, "guest %s has an unreadable registration", instance)
	}
	return r, nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }
