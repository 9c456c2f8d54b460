package server

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/services/backup/internal/strategy"
	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/datakey"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/jobs"
)

// runBackup makes one backup. Order matters for what a crash leaves behind: the RUNNING manifest is written
// before any data (so leftovers are always findable), the manifest becomes COMPLETED only after every
// artifact was re-read and checked by the storage service, and a failure removes the data and records why.
// Running it again for the same job (a takeover after a worker died) starts the backup over.
func (s *Server) runBackup(ctx context.Context, job jobs.Job, report func(jobs.Progress)) (any, error) {
	started := time.Now()
	var req backupv1.CreateRequest
	if err := decodeParams(job, &req); err != nil {
		return nil, err
	}
	id := job.ID
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(attribute.String("backup.id", id), attribute.String("guest.instance", req.Instance))

	if prev, err := s.cat.Load(ctx, id); err == nil {
		switch prev.State {
		case catalog.StateCompleted:
			return backupv1.BackupResult{Backup: *prev}, nil // done before the worker died; nothing to redo
		default:
			// A previous attempt's leftovers: remove its data, keep nothing of it.
			if err := s.cat.Remove(ctx, id); err != nil && !errs.Is(err, errs.NotFound) {
				return nil, err
			}
		}
	} else if !errs.Is(err, errs.NotFound) {
		return nil, err
	}

	reg, guest, err := guestclient.Live(ctx, s.nc, s.js, req.Instance, "", s.opts.Stream)
	if err != nil {
		return nil, err
	}
	strat, err := strategy.Lookup(req.Strategy, reg.Engine)
	if err != nil {
		return nil, err
	}
	typ := req.Type
	if typ == "" {
		typ = catalog.TypeFull
	}
	var parent *catalog.Manifest
	if typ == catalog.TypeIncremental {
		if !strat.Incremental() {
			return nil, errs.BadRequestf("strategy %s makes full backups only", strat.Name())
		}
		if parent, err = s.parent(ctx, req, strat.Name()); err != nil {
			return nil, err
		}
	}
	recipients, err := s.recipients(req.Recipients)
	if err != nil {
		return nil, err
	}
	key, err := datakey.New()
	if err != nil {
		return nil, err
	}
	defer datakey.Zero(key)
	wrapped, err := datakey.Wrap(key, recipients)
	if err != nil {
		return nil, err
	}
	codec := req.Compression
	if codec == "" {
		codec = "zstd"
	}
	frameSize := req.FrameSize
	if frameSize == 0 {
		frameSize = s.opts.FrameSize
	}
	m := &catalog.Manifest{
		ManifestVersion: catalog.ManifestVersion, ID: id, Instance: req.Instance, Engine: reg.Engine,
		EngineVersion: reg.EngineVersion, Strategy: strat.Name(), Type: typ, State: catalog.StateRunning,
		DataKey: &wrapped, Labels: req.Labels, Created: started.UTC(),
		Options: map[string]string{"compression": codec},
	}
	if parent != nil {
		m.Parent = parent.ID
	}
	if err := s.cat.Save(ctx, m); err != nil {
		return nil, err
	}

	var done int64 // raw bytes of finished artifacts, for progress across several execs
	sreq := strategy.Request{
		BackupID: id, Type: typ, Parent: parent, Guest: guest, Registration: reg, Options: req.Options,
		BandwidthLimit: req.BandwidthLimit,
		Artifact: func(name string) *guestv1.StorageRef {
			return &guestv1.StorageRef{
				Key:    catalog.ArtifactKey(id, name),
				Meta:   map[string]string{"backup": id, "artifact": name},
				Direct: s.opts.Direct,
				Frames: &guestv1.FrameSpec{Codec: codec, Level: req.Level, FrameSize: frameSize,
					ArtifactID: artifactID(id, name), Key: key},
			}
		},
		Progress: func(stage string, raw int64) {
			report(jobs.Progress{Done: done + raw, Unit: "bytes", Stage: stage})
		},
	}
	res, err := strat.Backup(ctx, sreq)
	if err == nil {
		err = s.complete(ctx, m, res, frameSize, report, &done)
	}
	if err != nil {
		s.fail(ctx, m, err)
		span.SetStatus(codes.Error, err.Error())
		return nil, err
	}
	m.Ended = time.Now().UTC()
	if s.metrics != nil {
		s.metrics.Bytes(ctx, "backup", "raw", m.RawSize)
		s.metrics.Bytes(ctx, "backup", "stored", m.StoredSize)
	}
	return backupv1.BackupResult{Backup: *m}, nil
}

// complete checks every artifact in storage and writes the COMPLETED manifest.
func (s *Server) complete(ctx context.Context, m *catalog.Manifest, res strategy.Result, frameSize int, report func(jobs.Progress), done *int64) error {
	if len(res.Artifacts) == 0 {
		return errs.Internalf("strategy %s produced no artifact", m.Strategy)
	}
	m.Stages = map[string]int64{}
	for _, p := range res.Artifacts {
		report(jobs.Progress{Done: m.RawSize, Unit: "bytes", Stage: "verify"})
		if err := s.verifyStored(ctx, catalog.ArtifactKey(m.ID, p.Name), p.Artifact); err != nil {
			return err
		}
		m.Artifacts = append(m.Artifacts, catalog.Artifact{
			Name: p.Name, Key: catalog.ArtifactKey(m.ID, p.Name), Size: p.Artifact.Size, SHA256: p.Artifact.SHA256,
			RawSize: p.Artifact.RawSize, Codec: p.Artifact.Codec, Frames: p.Artifact.Frames, FrameSize: frameSize,
			IndexSHA256: p.Artifact.IndexSHA256, ArtifactID: artifactID(m.ID, p.Name), Resumes: p.Artifact.Resumes,
		})
		m.RawSize += p.Artifact.RawSize
		m.StoredSize += p.Artifact.Size
		*done += p.Artifact.RawSize
		for k, v := range p.Stages {
			m.Stages[k] += v
		}
	}
	m.Positions, m.Tools = res.Positions, res.Tools
	for k, v := range res.Options {
		m.Options[k] = v
	}
	m.State = catalog.StateCompleted
	m.Ended = time.Now().UTC()
	return s.cat.Save(ctx, m)
}

// verifyStored checks that storage holds the artifact the agent reported, read back to its SHA-256. A
// direct upload was read back by the storage service when it completed (its record says when), so
// reading it again would only double the cost; anything else is read back now.
func (s *Server) verifyStored(ctx context.Context, key string, a guestv1.Artifact) error {
	obj, err := s.store.Stat(ctx, key)
	if err != nil {
		return err
	}
	if obj.Size != a.Size || obj.SHA256 != a.SHA256 {
		return errs.New(errs.Corrupt, "stored object %s is %d bytes with SHA-256 %s; the agent reported %d bytes, %s", key, obj.Size, obj.SHA256, a.Size, a.SHA256)
	}
	if !obj.Verified.IsZero() {
		return nil
	}
	_, err = s.store.VerifyNow(ctx, key, a.SHA256)
	return err
}

// fail removes what the backup wrote and records why, except for a cancellation, which leaves nothing at all.
// It runs on a fresh context: the job's may be the one that was cancelled.
func (s *Server) fail(ctx context.Context, m *catalog.Manifest, cause error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := s.cat.Remove(cctx, m.ID); err != nil && !errs.Is(err, errs.NotFound) {
		s.log.Warn("could not remove a failed backup's data; the RUNNING manifest marks it for cleanup", "backup", m.ID, "error", err)
		return
	}
	if errs.Is(cause, errs.Cancelled) || ctx.Err() != nil && errs.CodeOf(cause) == errs.Cancelled {
		return
	}
	m.State, m.Error, m.Artifacts, m.Ended = catalog.StateFailed, errs.From(cause), nil, time.Now().UTC()
	m.RawSize, m.StoredSize = 0, 0
	if err := s.cat.Save(cctx, m); err != nil {
		s.log.Warn("could not record a failed backup", "backup", m.ID, "error", err)
	}
}

// parent resolves an incremental's parent: the one named, or the newest COMPLETED backup of the instance
// made with the same strategy.
func (s *Server) parent(ctx context.Context, req backupv1.CreateRequest, strat string) (*catalog.Manifest, error) {
	if req.Parent != "" {
		p, err := s.cat.Load(ctx, req.Parent)
		if err != nil {
			return nil, err
		}
		if p.State != catalog.StateCompleted {
			return nil, errs.Conflictf("parent backup %s is %s, not COMPLETED", p.ID, p.State)
		}
		if p.Instance != req.Instance || p.Strategy != strat {
			return nil, errs.BadRequestf("parent backup %s is a %s backup of %s; an incremental of %s with %s needs one of its own", p.ID, p.Strategy, p.Instance, req.Instance, strat)
		}
		return p, nil
	}
	all, err := s.cat.List(ctx, catalog.Filter{Instance: req.Instance, State: catalog.StateCompleted}, nil)
	if err != nil {
		return nil, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].Strategy == strat {
			return all[i], nil
		}
	}
	return nil, errs.NotFoundf("instance %s has no COMPLETED %s backup to continue from; make a full backup first", req.Instance, strat)
}

// artifactID is bound into every frame of an artifact: frames of another backup or artifact are refused.
// It is a plain id (no "/") because the agent validates it like every id it is handed.
func artifactID(backup, name string) string { return backup + "-" + name }
