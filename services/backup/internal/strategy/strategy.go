// Package strategy holds the backup strategies, one file per strategy, registered by name. A strategy knows
// one engine's backup tool: which commands to run on the guest (through its agent), which artifacts they
// produce and which positions to record. It never moves bulk bytes itself: the agent frames, seals and
// uploads each artifact straight to the storage service (Request.Artifact says where and how).
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
)

// Guest is what strategies need of a guest's agent (*guestclient.Client has it).
type Guest interface {
	Run(ctx context.Context, req guestv1.ExecRequest, stdin io.Reader) (guestv1.ExecResult, error)
	Exec(ctx context.Context, req guestv1.ExecRequest) (guestv1.ExecStarted, error)
	WaitOnce(ctx context.Context, execID string, wait time.Duration) (guestv1.ExecResult, error)
	Cancel(ctx context.Context, execID string) (guestv1.ExecResult, error)
	ReadFile(ctx context.Context, path string) (guestv1.FileData, error)
	WriteFile(ctx context.Context, req guestv1.FileWriteRequest) (guestv1.FileInfo, error)
	Remove(ctx context.Context, req guestv1.FileRemoveRequest) (guestv1.FileInfo, error)
	Stat(ctx context.Context, path string) (guestv1.FileInfo, error)
}

// Request is one backup for a strategy to make.
type Request struct {
	BackupID string
	Type     string            // catalog.TypeFull or catalog.TypeIncremental
	Parent   *catalog.Manifest // the parent of an incremental (COMPLETED, same instance and strategy)
	Guest    Guest
	// Registration is the guest as its agent registered it (engine, versions, tools, status).
	Registration guestv1.Registration
	Options      map[string]string
	// Artifact returns where and how the agent stores the named artifact (key, frames with the data key,
	// metadata, bandwidth). Strategies put it in ExecRequest.Stdout.Storage as is.
	Artifact func(name string) *guestv1.StorageRef
	// BandwidthLimit is the job's cap in bytes/s for ExecRequest.BandwidthLimit (0: none).
	BandwidthLimit int64
	// Progress is called with the raw bytes produced so far (from exec polls).
	Progress func(stage string, rawBytes int64)
}

// Produced is one artifact a strategy wrote.
type Produced struct {
	Name     string
	Artifact guestv1.Artifact
	Stages   map[string]int64
}

// Result is what a strategy recorded.
type Result struct {
	Artifacts []Produced
	// Positions go to the manifest (see catalog.Manifest.Positions).
	Positions map[string]string
	// Tools are the versions of the tools run ("mariabackup": "10.11.6").
	Tools map[string]string
	// Options records strategy facts a restore needs (e.g. which artifact holds which database).
	Options map[string]string
}

// Strategy makes backups of one engine with one tool.
type Strategy interface {
	Name() string
	Engine() string
	// Incremental reports whether the strategy can continue from a parent backup.
	Incremental() bool
	// Backup runs the tools on the guest. A returned error fails the backup; artifacts already written
	// are removed by the caller. It must return soon after ctx is cancelled (the agent's exec is cancelled
	// with it).
	Backup(ctx context.Context, req Request) (Result, error)
}

var (
	mu         sync.RWMutex
	strategies = map[string]Strategy{}
	defaults   = map[string]string{}
)

// Register adds a strategy; the first registered for an engine with isDefault becomes its default.
func Register(s Strategy, isDefault bool) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := strategies[s.Name()]; dup {
		panic("backup strategy registered twice: " + s.Name())
	}
	strategies[s.Name()] = s
	if isDefault {
		defaults[s.Engine()] = s.Name()
	}
}

// Lookup finds a strategy by name, or the engine's default when name is empty, and checks it backs up
// that engine.
func Lookup(name, engine string) (Strategy, error) {
	mu.RLock()
	defer mu.RUnlock()
	if name == "" {
		name = defaults[engine]
		if name == "" {
			return nil, errs.BadRequestf("no backup strategy for engine %q; strategies: %v", engine, namesLocked())
		}
	}
	s, ok := strategies[name]
	if !ok {
		return nil, errs.BadRequestf("unknown backup strategy %q; strategies: %v", name, namesLocked())
	}
	if s.Engine() != engine {
		return nil, errs.BadRequestf("strategy %s backs up %s, but the guest runs %s (wrong engine)", name, s.Engine(), engine)
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
