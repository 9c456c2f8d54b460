package agent

import (
	"context"
	"io"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/agent/internal/execs"
	"troveng.dev/agent/internal/extract"
	"troveng.dev/agent/internal/files"
	"troveng.dev/agent/internal/transfer"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ratelimit"
	"troveng.dev/shared/stream"
)

func (a *Agent) handleFileRead(_ context.Context, req guestv1.FileRequest) (guestv1.FileData, error) {
	p, err := a.roots.Parse(req.Path)
	if err != nil {
		return guestv1.FileData{}, err
	}
	return a.roots.Read(p)
}

func (a *Agent) handleFileWrite(_ context.Context, req guestv1.FileWriteRequest) (guestv1.FileInfo, error) {
	p, err := a.roots.Parse(req.Path)
	if err != nil {
		return guestv1.FileInfo{}, err
	}
	fi, err := a.roots.Write(p, req.Data, req.Mode, req.Owner)
	if err == nil {
		a.log.Info("file written", "path", p.Full, "bytes", len(req.Data), "owner", req.Owner)
	}
	return fi, err
}

func (a *Agent) handleFileStat(_ context.Context, req guestv1.FileRequest) (guestv1.FileInfo, error) {
	p, err := a.roots.Parse(req.Path)
	if err != nil {
		return guestv1.FileInfo{}, err
	}
	return a.roots.Stat(p)
}

func (a *Agent) handleFileList(_ context.Context, req guestv1.FileRequest) (guestv1.FileList, error) {
	p, err := a.roots.Parse(req.Path)
	if err != nil {
		return guestv1.FileList{}, err
	}
	return a.roots.List(p)
}

func (a *Agent) handleFileRemove(_ context.Context, req guestv1.FileRemoveRequest) (guestv1.FileInfo, error) {
	p, err := a.roots.Parse(req.Path)
	if err != nil {
		return guestv1.FileInfo{}, err
	}
	fi, err := a.roots.Remove(p, req.Recursive)
	if err == nil {
		a.log.Info("file removed", "path", p.Full, "recursive", req.Recursive)
	}
	return fi, err
}

// extractTool names extracts in exec results and metrics.
const extractTool = "file_extract"

// handleExtract validates an extract and starts it like an exec.
func (a *Agent) handleExtract(ctx context.Context, req guestv1.ExtractRequest) (guestv1.ExecStarted, error) {
	opts := extract.Options{Replace: req.Replace, Owner: req.Owner, Decompress: req.Decompress}
	dest, err := extract.Validate(a.roots, req.Path, opts)
	if err == nil && req.BandwidthLimit < 0 {
		err = errs.BadRequestf("bandwidth_limit must not be negative")
	}
	if err == nil {
		switch req.Source {
		case guestv1.SourceStream:
			if req.Storage != nil {
				err = errs.BadRequestf("extract source stream takes no storage reference")
			}
		case guestv1.SourceStorage:
			if verr := transfer.ValidateRef(req.Storage, true); verr != nil {
				err = errs.BadRequestf("extract source: %s", errs.From(verr).Message)
			}
		default:
			err = errs.BadRequestf("extract source %q is not one of stream, storage", req.Source)
		}
	}
	if err != nil {
		a.metrics.exec(ctx, extractTool, string(errs.CodeOf(err)))
		return guestv1.ExecStarted{}, err
	}
	slot, err := a.table.Reserve()
	if err != nil {
		a.metrics.refusedBusy(ctx, guestv1.OpFileExtract)
		a.metrics.exec(ctx, extractTool, string(errs.CodeOf(err)))
		return guestv1.ExecStarted{}, err
	}
	// The job's context ends with the job: a stdin receiver nobody drained is released with it.
	jctx, endJob := context.WithCancel(a.jobContext(ctx))
	var rcv *stream.Receiver
	if req.Source == guestv1.SourceStream {
		if rcv, err = stream.Listen(jctx, a.nc, a.cfg.Stream); err != nil {
			slot.Release()
			endJob()
			return guestv1.ExecStarted{}, errs.Wrap(errs.Unavailable, err, "open the extract stream")
		}
	}
	job := a.table.Launch(jctx, slot, extractTool, func(ctx context.Context, j *execs.Job) guestv1.ExecResult {
		defer endJob()
		return a.runExtract(ctx, j, req, dest, opts, rcv)
	})
	a.log.Info("extract started", "exec_id", job.ID, "path", dest.Full, "source", req.Source, "replace", req.Replace, "owner", req.Owner)
	st := guestv1.ExecStarted{ExecID: job.ID}
	if rcv != nil {
		st.StdinSubject = rcv.Subject()
	}
	return st, nil
}

func (a *Agent) runExtract(ctx context.Context, j *execs.Job, req guestv1.ExtractRequest, dest files.Path, opts extract.Options, rcv *stream.Receiver) (res guestv1.ExecResult) {
	ctx, span := a.tracer.Start(ctx, "guest.extract.run", trace.WithAttributes(attribute.String("guest.path", dest.Full),
		attribute.String("guest.source", req.Source), attribute.String("guest.exec_id", j.ID)))
	res.ExitCode = -1
	defer func() {
		outcome := outcomeOK
		if res.Error != nil {
			outcome = string(res.Error.Code)
			span.SetStatus(codes.Error, res.Error.Message)
			span.SetAttributes(attribute.String("error.type", string(res.Error.Code)))
		}
		span.End()
		a.metrics.exec(ctx, extractTool, outcome)
		a.metrics.bytes(ctx, "extract", "in", res.StdinBytes)
		a.log.Info("extract ended", "exec_id", j.ID, "path", dest.Full, "outcome", outcome, "bytes_in", res.StdinBytes, "duration", time.Since(j.Started))
	}()
	opts.OnBytes = func(n int64) { j.StdinBytes.Store(n) }
	var src io.Reader
	var end func(error)
	switch req.Source {
	case guestv1.SourceStream:
		src = rcv
		end = func(err error) {
			if err == nil {
				_ = rcv.Finish(nil)
			} else {
				rcv.Fail(err)
			}
		}
	case guestv1.SourceStorage:
		d, err := transfer.StartDownload(ctx, a.storage, *req.Storage, ratelimit.New(req.BandwidthLimit), a.onResume(ctx, req.Storage.Key, "download"))
		if err != nil {
			res.Error = errs.From(err)
			return res
		}
		defer func() { res.Stages = d.Stages() }()
		src = d
		end = d.End
	}
	if req.Source == guestv1.SourceStream && req.BandwidthLimit > 0 {
		src = ratelimit.Reader(ctx, src, ratelimit.New(req.BandwidthLimit))
	}
	out, err := extract.Extract(ctx, a.roots, dest, src, opts)
	end(err)
	res.StdinBytes = j.StdinBytes.Load()
	if err != nil {
		if ctx.Err() != nil && errs.CodeOf(context.Cause(ctx)) != errs.Internal {
			err = context.Cause(ctx)
		}
		res.Error = errs.From(err)
		return res
	}
	res.ExitCode = 0
	res.Extracted = &out
	return res
}

func (a *Agent) engineOrUnavailable() error {
	if a.engine == nil {
		return errs.Unavailablef("guest %s has no engine (the agent runs without TROVE_ENGINE)", a.cfg.Instance)
	}
	return nil
}

func (a *Agent) handleEngineStart(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	if err := a.engineOrUnavailable(); err != nil {
		return guestv1.EngineStatus{}, err
	}
	return a.engine.Start(ctx, req)
}

func (a *Agent) handleEngineStop(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	if err := a.engineOrUnavailable(); err != nil {
		return guestv1.EngineStatus{}, err
	}
	return a.engine.Stop(ctx, req)
}

func (a *Agent) handleEngineStatus(ctx context.Context, _ guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	if err := a.engineOrUnavailable(); err != nil {
		return guestv1.EngineStatus{}, err
	}
	return a.engine.Status(ctx), nil
}

func (a *Agent) handleEngineReset(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	if err := a.engineOrUnavailable(); err != nil {
		return guestv1.EngineStatus{}, err
	}
	return a.engine.Reset(ctx, req)
}
