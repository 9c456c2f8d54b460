package guestclient

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/stream"
)

// Live finds a guest in the registry and checks, before a job commits to it, that its agent is alive
// (heartbeat fresh) and its engine healthy; wantEngine, if set, must be the guest's engine. It returns the
// registration and a client for the guest.
func Live(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, instance, wantEngine string, opts stream.Options) (guestv1.Registration, *Client, error) {
	if err := guestv1.ValidateInstance(instance); err != nil {
		return guestv1.Registration{}, nil, err
	}
	kv, err := js.KeyValue(ctx, guestv1.RegistryBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return guestv1.Registration{}, nil, errs.NotFoundf("no guest %q is registered (no guest has ever registered)", instance)
	}
	if err != nil {
		return guestv1.Registration{}, nil, errs.Wrap(errs.Unavailable, err, "open the guest registry %s", guestv1.RegistryBucket)
	}
	reg, err := Guest(ctx, kv, instance)
	if err != nil {
		return reg, nil, err
	}
	if now := time.Now(); reg.Stale(now) {
		return reg, nil, errs.Unavailablef("guest %s is stale: its agent's last heartbeat was %s ago", instance, reg.Age(now).Round(time.Second))
	}
	if wantEngine != "" && reg.Engine != wantEngine {
		return reg, nil, errs.BadRequestf("guest %s runs %s, not %s (wrong engine)", instance, reg.Engine, wantEngine)
	}
	c, err := New(nc, instance, opts)
	if err != nil {
		return reg, nil, err
	}
	return reg, c, nil
}

// CallerPublish lists what a service that drives guests publishes to, beyond its inbox: requests to any
// guest's agent, and reads of the guest registry (stream info to open the bucket, direct gets of records).
func CallerPublish() []string {
	stream := "KV_" + guestv1.RegistryBucket
	return []string{
		"trove.guest.*.>",
		"$JS.API.STREAM.INFO." + stream,
		"$JS.API.DIRECT.GET." + stream + ".$KV." + guestv1.RegistryBucket + ".>",
	}
}

// Execer is what RunPolling needs of a guest (*Client has it; strategies define it in their own interfaces).
type Execer interface {
	Exec(ctx context.Context, req guestv1.ExecRequest) (guestv1.ExecStarted, error)
	WaitOnce(ctx context.Context, execID string, wait time.Duration) (guestv1.ExecResult, error)
	Cancel(ctx context.Context, execID string) (guestv1.ExecResult, error)
}

// RunPolling execs req (no streamed stdin) and waits for it, calling onPoll with every result (byte counts
// for a progress bar) at most every interval, and turns a failed tool into an error (Check). If ctx ends
// first the exec is cancelled on the guest, so a cancelled job leaves no tool running.
func RunPolling(ctx context.Context, g Execer, req guestv1.ExecRequest, every time.Duration, onPoll func(guestv1.ExecResult)) (guestv1.ExecResult, error) {
	st, err := g.Exec(ctx, req)
	if err != nil {
		return guestv1.ExecResult{}, err
	}
	for {
		r, err := g.WaitOnce(ctx, st.ExecID, every)
		if err != nil {
			if ctx.Err() != nil {
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				_, _ = g.Cancel(cctx, st.ExecID)
				cancel()
				return r, errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "%s on the guest", req.Tool)
			}
			return r, err
		}
		if onPoll != nil {
			onPoll(r)
		}
		if r.Done {
			return r, Check(r)
		}
	}
}

// Runner is what Capture needs of a guest.
type Runner interface {
	Run(ctx context.Context, req guestv1.ExecRequest, stdin io.Reader) (guestv1.ExecResult, error)
}

// Capture runs a small command and returns its stdout (versions, lists, positions).
func Capture(ctx context.Context, g Runner, tool string, args ...string) (string, error) {
	r, err := g.Run(ctx, guestv1.ExecRequest{Tool: tool, Args: args, Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
	if err != nil {
		return "", err
	}
	if err := Check(r); err != nil {
		return "", err
	}
	return string(r.Stdout), nil
}
