package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/telemetry"
)

var (
	// errNoChange tells update that the record needs no write.
	errNoChange = errors.New("jobs: no change")
	// errRevision is a failed compare-and-set: someone else wrote the record since we read it.
	errRevision = errors.New("jobs: record changed since it was read")
	// errLost means this runner no longer owns the job (taken over, or handed back).
	errLost = errors.New("jobs: job is no longer owned by this worker")
)

// load reads a job's record and its revision (reads are retried: they are safe to repeat).
func (r *Runner) load(ctx context.Context, id string) (Job, uint64, error) {
	var e jetstream.KeyValueEntry
	err := r.retry(ctx, 3, func(cctx context.Context) error {
		var err error
		e, err = r.kv.Get(cctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return errs.NotFoundf("job %s not found in family %s (finished jobs are kept for %s)", id, r.o.Family, r.o.Retention)
		}
		return err
	})
	if err != nil {
		if errs.Is(err, errs.NotFound) {
			return Job{}, 0, err
		}
		return Job{}, 0, errs.Wrap(errs.Unavailable, err, "jobs: reading job %s", id)
	}
	var job Job
	if err := json.Unmarshal(e.Value(), &job); err != nil {
		return Job{}, 0, errs.Wrap(errs.Corrupt, err, "jobs: the record of job %s cannot be decoded", id)
	}
	job.Revision = e.Revision()
	return job, e.Revision(), nil
}

// store writes job if its key is still at revision rev (compare-and-set) and sets job.Revision. A record in
// a final state is written with a TTL of Options.Retention, after which JetStream removes it. One attempt:
// callers decide about retries (the outcome of a timed-out write is unknown).
func (r *Runner) store(ctx context.Context, job *Job, rev uint64) error {
	job.Updated = time.Now().UTC()
	job.Revision = 0
	data, err := json.Marshal(job)
	if err != nil {
		return errs.Wrap(errs.Internal, err, "encoding job %s", job.ID)
	}
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(rev)}
	if job.State.Final() {
		opts = append(opts, jetstream.WithMsgTTL(r.o.Retention))
	}
	cctx, cancel := context.WithTimeout(ctx, r.o.CallTimeout)
	defer cancel()
	ack, err := r.js.PublishMsg(cctx, &nats.Msg{Subject: r.kvPrefix + job.ID, Data: data}, opts...)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return errRevision
		}
		return err
	}
	job.Revision = ack.Sequence
	return nil
}

// update applies change to the latest record of job id and writes it with compare-and-set; on a conflict or
// a transient NATS error it reads again and re-applies change, up to tries times, so change must decide from
// the record it is given (and be idempotent: after a timed-out write it may see its own result). change
// returns errNoChange to skip the write, or another error to stop. A successful write is published as an
// event carrying ctx's trace context. It returns the record as written (or as read, on errNoChange).
func (r *Runner) update(ctx context.Context, id string, tries int, change func(*Job) error) (Job, error) {
	var lastErr error
	for attempt := 0; attempt < tries; attempt++ {
		if attempt > 0 && !sleepCtx(ctx, backoff(50*time.Millisecond, attempt-1, time.Second)) {
			break
		}
		job, rev, err := r.load(ctx, id)
		if err != nil {
			if errs.Is(err, errs.NotFound) || !r.retryable(ctx, err) {
				return Job{}, err
			}
			lastErr = err
			continue
		}
		if err := change(&job); err != nil {
			if errors.Is(err, errNoChange) {
				return job, nil
			}
			return job, err
		}
		err = r.store(ctx, &job, rev)
		if err == nil {
			r.publishEvent(ctx, job)
			return job, nil
		}
		lastErr = err
		if !errors.Is(err, errRevision) && !r.retryable(ctx, err) {
			break
		}
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	if errs.CodeOf(lastErr) == errs.Unavailable {
		return Job{}, lastErr
	}
	return Job{}, errs.Wrap(errs.Unavailable, lastErr, "jobs: writing job %s", id)
}

// publishEvent publishes a job's record on its event subject (core NATS: events are notifications, the
// record in KV is the truth), with ctx's trace context.
func (r *Runner) publishEvent(ctx context.Context, job Job) {
	data, err := json.Marshal(job)
	if err != nil {
		return
	}
	msg := &nats.Msg{Subject: EventSubject(r.o.Family, job.ID), Data: data}
	telemetry.InjectMsg(ctx, msg)
	if err := r.nc.PublishMsg(msg); err != nil {
		r.log.Debug("jobs: could not publish a job event", "job", job.ID, "err", err)
	}
}

// retry runs call with a fresh CallTimeout context up to tries times while its error is transient.
func (r *Runner) retry(ctx context.Context, tries int, call func(context.Context) error) error {
	var err error
	for attempt := 0; attempt < tries; attempt++ {
		if attempt > 0 && !sleepCtx(ctx, backoff(100*time.Millisecond, attempt-1, 2*time.Second)) {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, r.o.CallTimeout)
		err = call(cctx)
		cancel()
		if err == nil || !r.retryable(ctx, err) {
			return err
		}
	}
	return err
}

// retryable tells a transient NATS error (timeout, no responders while JetStream restarts, no leader)
// from a final one (an API error such as a failed compare-and-set, a closed connection, a coded error,
// the caller's own context ending).
func (r *Runner) retryable(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrConnectionClosed) {
		return false
	}
	var coded *errs.Error
	if errors.As(err, &coded) {
		return coded.Code == errs.Unavailable
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code >= 500
	}
	return true
}

// backoff is base * 2^n, capped.
func backoff(base time.Duration, n int, limit time.Duration) time.Duration {
	d := base
	for i := 0; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// sleepCtx sleeps d unless ctx ends first (then it returns false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
