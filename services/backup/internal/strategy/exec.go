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

// Run execs x on the guest and waits for it, reporting the tool's raw stdout bytes as progress of stage,
// and turns a failed tool into an error. If ctx ends first the exec is cancelled on the guest.
func Run(ctx context.Context, req Request, stage string, x guestv1.ExecRequest) (guestv1.ExecResult, error) {
	if x.BandwidthLimit == 0 {
		x.BandwidthLimit = req.BandwidthLimit
	}
	return guestclient.RunPolling(ctx, req.Guest, x, progressEvery, func(r guestv1.ExecResult) {
		if req.Progress != nil {
			req.Progress(stage, r.StdoutBytes)
		}
	})
}

// Capture runs a small command whose stdout the strategy reads (versions, lists, positions).
func Capture(ctx context.Context, req Request, tool string, args ...string) (string, error) {
	return guestclient.Capture(ctx, req.Guest, tool, args...)
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
