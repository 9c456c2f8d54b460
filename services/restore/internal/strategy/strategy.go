// Package strategy holds the restore strategies, one file per strategy, registered by the name of the backup
// strategy whose artifacts they lay down. A strategy drives the target guest through its agent: the agent
// fetches each artifact straight from the storage service, checks and opens every frame, and feeds the
// engine's tools; the strategy never moves bulk bytes itself.
package strategy

import (
	"context"
	"io"
	"sort"
	"sync"
	"time"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
)

// Guest is what restore strategies need of the target guest's agent (*guestclient.Client has it).
type Guest interface {
	Run(ctx context.Context, req guestv1.ExecRequest, stdin io.Reader) (guestv1.ExecResult, error)
	Exec(ctx context.Context, req guestv1.ExecRequest) (guestv1.ExecStarted, error)
	WaitOnce(ctx context.Context, execID string, wait time.Duration) (guestv1.ExecResult, error)
	Cancel(ctx context.Context, execID string) (guestv1.ExecResult, error)
	Extract(ctx context.Context, req guestv1.ExtractRequest, r io.Reader) (guestv1.ExecResult, error)
	ReadFile(ctx context.Context, path string) (guestv1.FileData, error)
	WriteFile(ctx context.Context, req guestv1.FileWriteRequest) (guestv1.FileInfo, error)
	Remove(ctx context.Context, req guestv1.FileRemoveRequest) (guestv1.FileInfo, error)
	Stat(ctx context.Context, path string) (guestv1.FileInfo, error)
	List(ctx context.Context, path string) (guestv1.FileList, error)
	EngineStart(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error)
	EngineStop(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error)
	EngineStatus(ctx context.Context) (guestv1.EngineStatus, error)
	EngineReset(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error)
}

// Request is one restore for a strategy to carry out.
type Request struct {
	// Chain is what to apply, in order: a full backup first, then its incrementals up to the target.
	// Every element is COMPLETED and its stored artifacts were verified before the strategy is called.
	Chain []*catalog.Manifest
	Guest Guest
	// Registration is the target guest as its agent registered it (engine, versions, tools, status).
	Registration guestv1.Registration
	Mode         string // backupv1.ModeNew or backupv1.ModeExisting
	// Source returns where the agent reads one artifact of one chain element, with the frame spec that
	// opens it (the unwrapped data key, the artifact id and the expected index hash). Strategies put it
	// in ExecRequest.Stdin.Storage or ExtractRequest.Storage as is.
	Source func(m *catalog.Manifest, name string) (*guestv1.StorageRef, error)
	// BandwidthLimit is the job's cap in bytes/s (0: none).
	BandwidthLimit int64
	// Progress is called with the raw bytes applied so far in the current stage.
	Progress func(stage string, rawBytes int64)
}

// Target is the last element of the chain: the backup being restored.
func (r Request) Target() *catalog.Manifest { return r.Chain[len(r.Chain)-1] }

// Strategy restores the backups of one backup strategy.
type Strategy interface {
	// Name is the backup strategy whose artifacts this restores ("mariabackup", "pg_dump", ...).
	Name() string
	Engine() string
	// Check refuses, before any byte moves, what cannot work: a mode the strategy lacks, a target engine
	// or tool older than the backup, a physical format the target's tools can't read.
	Check(req Request) error
	// Restore lays the chain down on the guest and leaves the engine running and healthy.
	Restore(ctx context.Context, req Request) error
}

var (
	mu         sync.RWMutex
	strategies = map[string]Strategy{}
)

// Register adds a strategy.
func Register(s Strategy) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := strategies[s.Name()]; dup {
		panic("restore strategy registered twice: " + s.Name())
	}
	strategies[s.Name()] = s
}

// Lookup finds the strategy restoring backups made by the named backup strategy.
func Lookup(name string) (Strategy, error) {
	mu.RLock()
	defer mu.RUnlock()
	s, ok := strategies[name]
	if !ok {
		return nil, errs.BadRequestf("no restore strategy for backups made by %q; strategies: %v", name, namesLocked())
	}
	return s, nil
}

// Names lists the registered strategies.
func Names() []string {
	mu.RLock()
	defer mu.RUnlock()
	return namesLocked()
}

func namesLocked() []string {
	out := make([]string, 0, len(strategies))
	for n := range strategies {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// progressEvery is how often a running exec is polled for its byte counts.
const progressEvery = 2 * time.Second

// Run execs x on the guest and waits for it, reporting the tool's raw stdin bytes as progress of stage,
// and turns a failed tool into an error. If ctx ends first the exec is cancelled on the guest.
func Run(ctx context.Context, req Request, stage string, x guestv1.ExecRequest) (guestv1.ExecResult, error) {
	if x.BandwidthLimit == 0 {
		x.BandwidthLimit = req.BandwidthLimit
	}
	return guestclient.RunPolling(ctx, req.Guest, x, progressEvery, func(r guestv1.ExecResult) {
		if req.Progress != nil {
			req.Progress(stage, r.StdinBytes)
		}
	})
}

// Capture runs a small command and returns its stdout.
func Capture(ctx context.Context, req Request, tool string, args ...string) (string, error) {
	return guestclient.Capture(ctx, req.Guest, tool, args...)
}

// FromStorage is an ExecRequest whose stdin is an artifact from storage.
func FromStorage(src *guestv1.StorageRef, tool string, args ...string) guestv1.ExecRequest {
	return guestv1.ExecRequest{Tool: tool, Args: args, Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStorage, Storage: src}}
}

// untouchedRestartWait bounds starting an engine again on its own data after a failed restore.
const untouchedRestartWait = 5 * time.Minute

// restartUntouched starts the target's engine again after a restore that stopped it failed before its data
// dir was replaced (the agent's extract is all or nothing), so the target is left as the restore found it.
// It runs on a context of its own (the job's may be the one cancelled) and returns cause, with its code,
// noting a failure to start.
func restartUntouched(ctx context.Context, req Request, engine string, cause error) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), untouchedRestartWait)
	defer cancel()
	st, err := req.Guest.EngineStart(cctx, guestv1.EngineRequest{NoInit: true, WaitMs: untouchedRestartWait.Milliseconds()})
	if err == nil && st.State != guestv1.EngineRunning {
		err = errs.Internalf("state %s: %s", st.State, st.Message)
	}
	if err != nil {
		return errs.Wrap(errs.CodeOf(cause), err, "%s; and %s did not start again on the guest's own data", errs.From(cause).Message, engine)
	}
	return cause
}
