// Package server is the restore service's request and job handling: a restore is a job that resolves the
// backup's chain, checks it whole before any byte moves, and has the strategy lay it down on the target
// guest through its agent.
package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"filippo.io/age"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/services/restore/internal/strategy"
	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/datakey"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/telemetry"
)

// Options tune a Server.
type Options struct {
	// Identities open the data keys (the restore service's own; never a request parameter).
	Identities []*age.X25519Identity
	Stream     stream.Options
	// Direct sets StorageRef.Direct on every artifact fetched (see restore.Config.Direct).
	Direct bool
	Logger *slog.Logger
}

// Server handles restore requests and jobs.
type Server struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	jobs    *jobs.Runner
	store   *storageclient.Client
	cat     *catalog.Catalog
	opts    Options
	metrics *telemetry.Metrics
	log     *slog.Logger
}

// New makes a Server and registers the restore job kind on runner (which the caller starts).
func New(nc *nats.Conn, js jetstream.JetStream, runner *jobs.Runner, m *telemetry.Metrics, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	store := storageclient.New(nc, opts.Stream)
	s := &Server{nc: nc, js: js, jobs: runner, store: store, cat: catalog.New(store), opts: opts, metrics: m, log: opts.Logger}
	runner.Register(backupv1.JobRestore, s.runRestore)
	return s
}

// Endpoints lists the service's micro endpoints.
func (s *Server) Endpoints() []service.Endpoint {
	eps := []service.Endpoint{{Name: backupv1.OpRestore, Handler: service.JSON(s.restore), Mutating: true}}
	return eps
}

// restore submits a restore job after the checks that need no guest: the backup exists and is COMPLETED.
func (s *Server) restore(ctx context.Context, req backupv1.RestoreRequest) (jobs.Job, error) {
	m, err := s.cat.Load(ctx, req.Backup)
	if err != nil {
		return jobs.Job{}, err
	}
	if m.State != catalog.StateCompleted {
		return jobs.Job{}, errs.Conflictf("backup %s is %s; only COMPLETED backups can be restored", m.ID, m.State)
	}
	return s.jobs.Submit(ctx, backupv1.JobRestore, req, req.JobID)
}

// runRestore restores one chain. Everything that can be checked is checked before the target is touched:
// the chain is whole and COMPLETED, the target guest is alive and runs the backup's engine, every data key
// opens with the service's identity, every stored object is there as recorded (checkStored), and the
// strategy accepts the versions and the mode. Only then does the strategy run; the agent checks every
// frame as it reads it.
func (s *Server) runRestore(ctx context.Context, job jobs.Job, report func(jobs.Progress)) (any, error) {
	started := time.Now()
	var req backupv1.RestoreRequest
	if err := json.Unmarshal(job.Params, &req); err != nil {
		return nil, errs.Wrap(errs.BadRequest, err, "job %s has unreadable parameters", job.ID)
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if req.Mode == "" {
		req.Mode = backupv1.ModeNew
	}
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("backup.id", req.Backup), attribute.String("guest.instance", req.Instance))

	target, err := s.cat.Load(ctx, req.Backup)
	if err != nil {
		return nil, err
	}
	all, err := s.cat.List(ctx, catalog.Filter{Instance: target.Instance}, nil)
	if err != nil {
		return nil, err
	}
	chain, err := catalog.NewSet(all).Chain(target.ID)
	if err != nil {
		return nil, err
	}
	strat, err := strategy.Lookup(target.Strategy)
	if err != nil {
		return nil, err
	}
	reg, guest, err := guestclient.Live(ctx, s.nc, s.js, req.Instance, target.Engine, s.opts.Stream)
	if err != nil {
		return nil, err
	}
	keys := map[string][]byte{}
	defer func() {
		for _, k := range keys {
			datakey.Zero(k)
		}
	}()
	for _, m := range chain {
		if m.DataKey == nil {
			continue
		}
		k, err := datakey.Unwrap(*m.DataKey, s.opts.Identities)
		if err != nil {
			return nil, errs.Wrap(errs.CodeOf(err), err, "backup %s", m.ID)
		}
		keys[m.ID] = k
	}
	var total int64
	for _, m := range chain {
		for _, a := range m.Artifacts {
			report(jobs.Progress{Done: 0, Unit: "bytes", Stage: "check " + m.ID + "/" + a.Name})
			if err := s.checkStored(ctx, strat, a); err != nil {
				return nil, errs.Wrap(errs.CodeOf(err), err, "backup %s, artifact %s", m.ID, a.Name)
			}
			total += a.RawSize
		}
	}
	var done int64
	sreq := strategy.Request{
		Chain: chain, Guest: guest, Registration: reg, Mode: req.Mode, BandwidthLimit: req.BandwidthLimit,
		Source: func(m *catalog.Manifest, name string) (*guestv1.StorageRef, error) {
			a, ok := m.Artifact(name)
			if !ok {
				return nil, errs.New(errs.Corrupt, "backup %s has no artifact %q", m.ID, name)
			}
			ref := &guestv1.StorageRef{Key: a.Key, Direct: s.opts.Direct}
			if a.Frames > 0 || a.IndexSHA256 != "" {
				ref.Frames = &guestv1.FrameSpec{Codec: a.Codec, FrameSize: a.FrameSize, ArtifactID: a.ArtifactID,
					Key: keys[m.ID], IndexSHA256: a.IndexSHA256}
			}
			return ref, nil
		},
		Progress: func(stage string, raw int64) {
			report(jobs.Progress{Done: done + raw, Total: total, Unit: "bytes", Stage: stage})
		},
	}
	if err := strat.Check(sreq); err != nil {
		return nil, err
	}
	if err := strat.Restore(ctx, sreq); err != nil {
		return nil, err
	}
	res := backupv1.RestoreResult{Backup: target.ID, Instance: req.Instance, Bytes: total, DurationMs: time.Since(started).Milliseconds()}
	for _, m := range chain {
		res.Chain = append(res.Chain, m.ID)
	}
	if s.metrics != nil {
		s.metrics.Bytes(ctx, "restore", "raw", total)
	}
	return res, nil
}

// stager is a strategy that reads every artifact of the chain to its checked end into a scratch place
// before it touches the target's data (the physical restores: an extract that replaces the data dir all
// or nothing, or a staging dir moved in after prepare), so a damaged artifact fails the restore with the
// target's data as it was.
type stager interface{ StagesChain() bool }

// checkStored checks one artifact before the restore starts. For a strategy that applies bytes as they
// arrive (a logical dump piped into a running engine), the storage service reads the whole object back
// to its recorded SHA-256 first: a damaged frame found half-way would leave the target half-restored.
// For a stager, a framed artifact is checked as the agent reads it (every frame authenticated under the
// data key, the index hashed against the manifest's) and nothing is applied before its end, so a
// read-back would only read the chain twice; the object is stat'ed instead, so a missing or replaced
// artifact is refused before any byte moves.
func (s *Server) checkStored(ctx context.Context, strat strategy.Strategy, a catalog.Artifact) error {
	st, ok := strat.(stager)
	if !ok || !st.StagesChain() || a.IndexSHA256 == "" {
		_, err := s.store.VerifyNow(ctx, a.Key, a.SHA256)
		return err
	}
	obj, err := s.store.Stat(ctx, a.Key)
	if err != nil {
		return err
	}
	if obj.Size != a.Size || obj.SHA256 != a.SHA256 {
		return errs.New(errs.Corrupt, "stored object %s is %d bytes with SHA-256 %s; the manifest recorded %d bytes, %s", a.Key, obj.Size, obj.SHA256, a.Size, a.SHA256)
	}
	return nil
}
