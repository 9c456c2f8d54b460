package strategy

import (
	"context"
	"time"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
)

// progressEvery is how often a running exec is polled for its byte counts (the job's progress bar).
const progressEvery = 2 * time.Second

// Run execs req on the guest and waits for it, reporting the tool's raw stdout bytes as progress of stage,
// and turns a failed tool into an error (guestclient.Check). If ctx ends first the exec is cancelled on the
// guest, so a cancelled job leaves no tool running.
func Run(ctx context.Context, req Request, stage string, x guestv1.ExecRequest) (guestv1.ExecResult, error) {
	if x.BandwidthLimit == 0 {
		x.BandwidthLimit = req.BandwidthLimit
	}
	st, err := req.Guest.Exec(ctx, x)
	if err != nil {
		return guestv1.ExecResult{}, err
	}
	for {
		r, err := req.Guest.WaitOnce(ctx, st.ExecID, progressEvery)
		if err != nil {
			if ctx.Err() != nil {
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				_, _ = req.Guest.Cancel(cctx, st.ExecID)
				cancel()
				return r, errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "%s on the guest", x.Tool)
			}
			return r, err
		}
		if req.Progress != nil {
			req.Progress(stage, r.StdoutBytes)
		}
		if r.Done {
			return r, guestclient.Check(r)
		}
	}
}

// Capture runs a small command whose stdout the strategy reads (versions, lists, positions).
func Capture(ctx context.Context, req Request, tool string, args ...string) (string, error) {
	r, err := req.Guest.Run(ctx, guestv1.ExecRequest{Tool: tool, Args: args, Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
	if err != nil {
		return "", err
	}
	if err := guestclient.Check(r); err != nil {
		return "", err
	}
	return string(r.Stdout), nil
}

// ToStorage is an ExecRequest whose stdout becomes the named artifact.
func ToStorage(req Request, name, tool string, args ...string) guestv1.ExecRequest {
	return guestv1.ExecRequest{Tool: tool, Args: args, Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: req.Artifact(name)}}
}

// Produce records an exec's artifact under name.
func Produce(name string, r guestv1.ExecResult) (Produced, error) {
	if r.Artifact == nil {
		return Produced{}, errs.Internalf("the agent reported no artifact for %s", name)
	}
	return Produced{Name: name, Artifact: *r.Artifact, Stages: r.Stages}, nil
}
