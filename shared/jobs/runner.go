package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/telemetry"
)

// progressInterval is the shortest time between two progress writes of one job.
const progressInterval = 500 * time.Millisecond

var (
	// Causes of a handler context's cancellation.
	errStopping        = errors.New("jobs: runner is stopping; the job is handed to another worker")
	errCancelRequested = errors.New("jobs: job cancelled on request")
)

var tracer = otel.Tracer("troveng.dev/shared/jobs")

// run is one job being run by this runner.
type run struct {
	job  Job // the record as claimed (ID, Kind, Attempts)
	wake chan struct{}

	mu       sync.Mutex
	msg      jetstream.Msg // the current delivery of the job's work message
	progress Progress
	dirty    bool // progress reported since the last write
}

func (ru *run) report(p Progress) {
	ru.mu.Lock()
	ru.progress, ru.dirty = p, true
	ru.mu.Unlock()
	select {
	case ru.wake <- struct{}{}:
	default:
	}
}

func (ru *run) takeProgress() (Progress, bool) {
	ru.mu.Lock()
	defer ru.mu.Unlock()
	d := ru.dirty
	ru.dirty = false
	return ru.progress, d
}

func (ru *run) currentProgress() Progress {
	ru.mu.Lock()
	defer ru.mu.Unlock()
	return ru.progress
}

func (ru *run) currentMsg() jetstream.Msg {
	ru.mu.Lock()
	defer ru.mu.Unlock()
	return ru.msg
}

func (ru *run) setMsg(m jetstream.Msg) {
	ru.mu.Lock()
	ru.msg = m
	ru.mu.Unlock()
}

// outcome is what a handler returned.
type outcome struct {
	result    any
	err       error
	panicked  bool
	abandoned bool // the handler did not return in time after its context was cancelled
}

// Start starts Options.Concurrency worker loops that take jobs from the work queue, and returns at once.
// When ctx ends the runner stops as Stop does. Register handlers before Start.
func (r *Runner) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping() {
		return errs.Conflictf("jobs: the runner of family %s was stopped; make a new one", r.o.Family)
	}
	if r.started {
		return errs.Conflictf("jobs: the runner of family %s is already started", r.o.Family)
	}
	if len(r.handlers) == 0 {
		return errs.BadRequestf("jobs: no job kinds are registered in family %s; Register handlers before Start", r.o.Family)
	}
	r.started = true
	for i := 0; i < r.o.Concurrency; i++ {
		r.loops.Add(1)
		go r.fetchLoop()
	}
	go func() {
		select {
		case <-ctx.Done():
			r.Stop()
		case <-r.stopCh:
		}
	}()
	return nil
}

// Stop stops taking work and hands the running jobs over: their handlers' contexts are cancelled, and
// once a handler returns (or after Options.StopTimeout) its job is put back to "queued" and its message
// Nak'ed, so another replica takes it over at once. Jobs are not marked failed; a handler that finished
// successfully before it noticed is recorded as succeeded. Stop returns when all of this is done
// (within about StopTimeout plus a poll interval of at most 2s). It is safe to call more than once.
func (r *Runner) Stop() {
	r.stopOnce.Do(func() { close(r.stopCh) })
	r.loops.Wait()
}

func (r *Runner) stopping() bool {
	select {
	case <-r.stopCh:
		return true
	default:
		return false
	}
}

// fetchLoop takes one job at a time from the work queue and runs it. Fetches are short pull requests that
// are never abandoned half way, so Stop cannot strand a delivered message in a dead inbox.
func (r *Runner) fetchLoop() {
	defer r.loops.Done()
	failures := 0
	for !r.stopping() {
		msg, err := r.cons.Next(jetstream.FetchMaxWait(r.pollWait))
		if err != nil {
			if errors.Is(err, nats.ErrTimeout) {
				failures = 0
				continue
			}
			failures++
			if failures == 1 || failures%50 == 0 {
				r.log.Warn("jobs: fetching work failed; retrying", "err", err, "failures", failures)
			}
			if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				r.reensure()
			}
			select {
			case <-r.stopCh:
				return
			case <-time.After(backoff(100*time.Millisecond, failures-1, 5*time.Second)):
			}
			continue
		}
		failures = 0
		if r.stopping() {
			_ = msg.Nak() // straight to another replica
			return
		}
		r.handle(msg)
	}
}

// reensure recreates the bucket, stream and consumer when the consumer does not answer (deleted, or lost
// with the server's store), at most once a second for all loops. While JetStream is merely restarting this
// fails or finds everything in place, harmlessly.
func (r *Runner) reensure() {
	r.ensureMu.Lock()
	defer r.ensureMu.Unlock()
	if time.Since(r.lastEnsure) < time.Second {
		return
	}
	r.lastEnsure = time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-r.stopCh:
			cancel()
		case <-ctx.Done():
		}
	}()
	if _, _, _, err := r.ensure(ctx); err != nil {
		r.log.Debug("jobs: recreating the work queue failed", "err", err)
	} else {
		r.log.Warn("jobs: the work consumer did not answer; made sure the bucket, stream and consumer exist", "stream", StreamName(r.o.Family))
	}
}

// decisions of handle
const (
	decTerm     = iota // the job is over (or was ended here): remove its message
	decRun             // the job is ours: run it
	decNakLater        // no handler here: let another replica have it
)

// handle claims the job of a delivered work message and runs it.
//
// Takeover rule: the work stream holds at most one message per job, and the owner of a running job keeps
// its message unacknowledged (renewing it with InProgress) until it records a final state. A delivery of
// the message of a job that is "running" under another worker therefore means that worker went silent for
// AckWait (or handed the job back without being able to write the record): this runner takes it over.
func (r *Runner) handle(msg jetstream.Msg) {
	kind, id, ok := r.parseWorkSubject(msg.Subject())
	if !ok || string(msg.Data()) != id {
		r.log.Warn("jobs: dropping a malformed work message", "subject", msg.Subject())
		_ = msg.Term()
		return
	}
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.Term()
		return
	}
	delivered := int(meta.NumDelivered)
	ctx := telemetry.Extract(context.Background(), msg.Headers())

	r.mu.Lock()
	ru := r.active[id]
	r.mu.Unlock()
	if ru != nil {
		// Our own job's message came back (its InProgress was late, e.g. across a NATS restart): keep
		// running it with the new delivery. If another worker took it over meanwhile, the run notices.
		ru.setMsg(msg)
		return
	}

	h := r.handler(kind)
	decision, claimed, wroteFinal := decTerm, 0, false
	job, err := r.update(ctx, id, 3, func(j *Job) error {
		decision, wroteFinal = decTerm, false
		switch {
		case j.State.Final():
			return errNoChange
		case j.State == StateRunning && j.Worker == r.o.WorkerID && j.Attempts == claimed:
			decision = decRun // our claim landed on an earlier try whose reply was lost
			return errNoChange
		}
		now := time.Now().UTC()
		finish := func(s State, e *errs.Error) {
			j.State, j.Error, j.Finished, wroteFinal = s, e, now, true
		}
		switch {
		case j.CancelRequested:
			finish(StateCancelled, errCancelledOnRequest())
		case h == nil && delivered < r.maxDeliver:
			decision = decNakLater // e.g. a kind only newer replicas know, during a rolling update
			return errNoChange
		case h == nil:
			finish(StateFailed, errs.Internalf("no runner of family %s has a handler for job kind %q", r.o.Family, kind))
		case j.Attempts >= r.o.MaxAttempts || delivered >= r.maxDeliver:
			e := j.Error
			if e == nil || j.State == StateRunning {
				e = errs.New(errs.Timeout, "job %s was started %d times and its worker stopped each time before it finished (last: %s); giving up",
					id, j.Attempts, j.Worker)
			}
			finish(StateFailed, e)
		default:
			if j.State == StateRunning {
				r.log.Warn("jobs: taking over a job whose worker went silent", "job", id, "kind", kind, "previous_worker", j.Worker, "attempts", j.Attempts)
			}
			j.State, j.Worker = StateRunning, r.o.WorkerID
			j.Attempts++
			claimed = j.Attempts
			if j.Started.IsZero() {
				j.Started = now
			}
			decision = decRun
		}
		return nil
	})
	if err != nil {
		if errs.Is(err, errs.NotFound) {
			// A record not (yet) visible here, or taken back by a failed Submit: look again a little
			// later, then drop the message.
			if delivered < 3 {
				_ = msg.NakWithDelay(time.Second)
			} else {
				_ = msg.Term()
			}
			return
		}
		r.log.Warn("jobs: cannot claim a job; it will be delivered again", "job", id, "err", err)
		_ = msg.NakWithDelay(r.o.RetryDelay)
		return
	}
	switch decision {
	case decTerm:
		_ = msg.Term()
		if wroteFinal {
			r.recordFinished(ctx, job)
		}
	case decNakLater:
		_ = msg.NakWithDelay(backoff(max(r.o.RetryDelay, time.Second), delivered-1, 30*time.Second))
	case decRun:
		r.execute(ctx, msg, job, h)
	}
}

func (r *Runner) parseWorkSubject(subj string) (kind, id string, ok bool) {
	rest, found := strings.CutPrefix(subj, "trove.work."+r.o.Family+".")
	if !found {
		return "", "", false
	}
	kind, id, ok = strings.Cut(rest, ".")
	return kind, id, ok && kind != "" && id != "" && !strings.Contains(id, ".")
}

// execute runs a claimed job's handler and looks after it until it ends: InProgress heartbeats, throttled
// progress writes, cancellation (watching the job's key, and polling it in case the watch misses an
// update), loss of ownership, and Stop.
func (r *Runner) execute(ctx context.Context, msg jetstream.Msg, job Job, h Handler) {
	attrs := []attribute.KeyValue{
		attribute.String("messaging.system", "nats"),
		attribute.String("trove.job.family", r.o.Family),
		attribute.String("trove.job.kind", job.Kind),
		attribute.String("trove.job.id", job.ID),
		attribute.Int("trove.job.attempt", job.Attempts),
	}
	ctx, span := tracer.Start(ctx, "jobs.run "+r.o.Family+"."+job.Kind, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...))
	defer span.End()
	r.starts.Add(ctx, 1, metric.WithAttributes(attrs[1:3]...))

	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var giveUp <-chan time.Time
	cancelWith := func(cause error) {
		if hctx.Err() != nil {
			return // the first cause wins
		}
		cancel(cause)
		giveUp = time.After(r.o.StopTimeout)
	}

	ru := &run{job: job, msg: msg, wake: make(chan struct{}, 1)}
	r.mu.Lock()
	r.active[job.ID] = ru
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.active, job.ID)
		r.mu.Unlock()
	}()

	hbDone := make(chan struct{})
	defer close(hbDone)
	go r.heartbeat(ru, hbDone)

	var updates <-chan jetstream.KeyValueEntry
	if w, stop, err := r.watchKey(ctx, job.ID, true); err == nil {
		defer stop()
		updates = w.Updates()
	} else {
		r.log.Warn("jobs: cannot watch a running job; cancellation is noticed by polling", "job", job.ID, "err", err)
	}

	done := make(chan outcome, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				r.log.Error("jobs: handler panicked", "job", job.ID, "kind", job.Kind, "panic", p, "stack", string(debug.Stack()))
				done <- outcome{err: errs.Internalf("the %s handler panicked: %v", job.Kind, p), panicked: true}
			}
		}()
		res, err := h(hctx, job, ru.report)
		done <- outcome{result: res, err: err}
	}()

	poll := time.NewTicker(max(r.o.AckWait/3, 200*time.Millisecond))
	defer poll.Stop()
	var flushC <-chan time.Time
	var lastFlush time.Time
	stopCh := r.stopCh
	for {
		select {
		case out := <-done:
			r.conclude(ctx, span, ru, out, context.Cause(hctx))
			return
		case <-giveUp:
			cause := context.Cause(hctx)
			r.log.Warn("jobs: handler did not return in time after its context was cancelled; going on without it",
				"job", job.ID, "kind", job.Kind, "cause", cause)
			r.conclude(ctx, span, ru, outcome{err: cause, abandoned: true}, cause)
			return
		case <-stopCh:
			stopCh = nil
			cancelWith(errStopping)
		case <-ru.wake:
			if flushC == nil {
				flushC = time.After(max(0, progressInterval-time.Since(lastFlush)))
			}
		case <-flushC:
			flushC = nil
			lastFlush = time.Now()
			if p, dirty := ru.takeProgress(); dirty {
				_, err := r.update(ctx, job.ID, 3, r.owned(ru, StateRunning, func(j *Job) { j.Progress = p }))
				if errors.Is(err, errLost) {
					cancelWith(errLost)
				} else if err != nil {
					r.log.Debug("jobs: could not record progress", "job", job.ID, "err", err)
				}
			}
		case e, ok := <-updates:
			if !ok {
				updates = nil
				continue
			}
			if e == nil {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				cancelWith(errLost) // the record was removed
				continue
			}
			var j Job
			if json.Unmarshal(e.Value(), &j) == nil {
				r.observe(ru, j, cancelWith)
			}
		case <-poll.C:
			j, _, err := r.load(ctx, job.ID)
			switch {
			case err == nil:
				r.observe(ru, j, cancelWith)
			case errs.Is(err, errs.NotFound):
				cancelWith(errLost)
			}
		}
	}
}

// observe reacts to a newer version of a running job's record.
func (r *Runner) observe(ru *run, j Job, cancelWith func(error)) {
	switch {
	case j.State != StateRunning || j.Worker != r.o.WorkerID || j.Attempts != ru.job.Attempts:
		cancelWith(errLost)
	case j.CancelRequested:
		cancelWith(errCancelRequested)
	}
}

// owned makes a record change that applies only while this run still owns the job. Finding the record
// already in the target state under this run's attempt means an earlier, timed-out write of ours landed.
func (r *Runner) owned(ru *run, target State, f func(*Job)) func(*Job) error {
	return func(j *Job) error {
		if j.Attempts == ru.job.Attempts && target != StateRunning && j.State == target &&
			(j.Worker == r.o.WorkerID || (target == StateQueued && j.Worker == "")) {
			return errNoChange
		}
		if j.State != StateRunning || j.Worker != r.o.WorkerID || j.Attempts != ru.job.Attempts {
			return errLost
		}
		f(j)
		return nil
	}
}

// heartbeat keeps the job's message from being redelivered while the handler is alive.
func (r *Runner) heartbeat(ru *run, done <-chan struct{}) {
	t := time.NewTicker(r.o.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := ru.currentMsg().InProgress(); err != nil {
				r.log.Debug("jobs: heartbeat failed", "job", ru.job.ID, "err", err)
			}
		case <-done:
			return
		}
	}
}

// conclude records how a run ended and settles its message.
func (r *Runner) conclude(ctx context.Context, span trace.Span, ru *run, out outcome, cause error) {
	id, attempt := ru.job.ID, ru.job.Attempts
	if errors.Is(cause, errLost) {
		r.log.Info("jobs: job was taken over by another worker; dropping this run's outcome", "job", id, "attempt", attempt)
		span.SetStatus(codes.Error, "taken over by another worker")
		return
	}
	p := ru.currentProgress()
	var (
		state  State
		result json.RawMessage
		e      *errs.Error
	)
	switch {
	case out.err == nil && !out.abandoned:
		b, err := json.Marshal(out.result)
		if err != nil {
			state, e = StateFailed, errs.Internalf("the result of the %s handler cannot be encoded as JSON: %v", ru.job.Kind, err)
		} else {
			state = StateSucceeded
			if string(b) != "null" {
				result = b
			}
		}
	case out.panicked:
		state, e = StateFailed, errs.From(out.err)
	case errors.Is(cause, errCancelRequested):
		state, e = StateCancelled, errCancelledOnRequest()
	case errors.Is(cause, errStopping):
		r.handover(ctx, ru, p)
		span.SetStatus(codes.Error, "handed over: runner stopping")
		return
	default:
		e = errs.From(out.err)
		if (e.Code == errs.Unavailable || e.Code == errs.Timeout) && attempt < r.o.MaxAttempts {
			delay := backoff(r.o.RetryDelay, attempt-1, time.Minute)
			_, err := r.update(ctx, id, 5, r.owned(ru, StateQueued, func(j *Job) {
				j.State, j.Worker, j.Error, j.Progress = StateQueued, "", e, p
			}))
			if err != nil {
				if !errors.Is(err, errLost) {
					r.log.Warn("jobs: could not queue a job for retry; it runs again after AckWait", "job", id, "err", err)
				}
				return
			}
			_ = ru.currentMsg().NakWithDelay(delay)
			span.SetStatus(codes.Error, "retrying: "+e.Error())
			return
		}
		state = StateFailed
	}
	job, err := r.update(ctx, id, 8, r.owned(ru, state, func(j *Job) {
		j.State, j.Result, j.Error, j.Progress, j.Finished = state, result, e, p, time.Now().UTC()
	}))
	if err != nil {
		if !errors.Is(err, errLost) {
			r.log.Error("jobs: could not record the end of a job; another worker runs it again after AckWait", "job", id, "state", state, "err", err)
		}
		return
	}
	if state == StateSucceeded {
		_ = ru.currentMsg().Ack()
	} else {
		_ = ru.currentMsg().Term()
		span.SetStatus(codes.Error, fmt.Sprintf("%s: %v", state, e))
	}
	r.recordFinished(ctx, job)
}

// handover puts a job back to "queued" and releases its message at once, for another replica.
func (r *Runner) handover(ctx context.Context, ru *run, p Progress) {
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*r.o.CallTimeout)
	defer cancel()
	_, err := r.update(hctx, ru.job.ID, 2, r.owned(ru, StateQueued, func(j *Job) {
		j.State, j.Worker, j.Progress = StateQueued, "", p
	}))
	if errors.Is(err, errLost) {
		return
	}
	if err != nil {
		// The next runner finds the record "running" under us and takes it over just the same.
		r.log.Warn("jobs: could not put a job back to queued while stopping", "job", ru.job.ID, "err", err)
	}
	_ = ru.currentMsg().Nak()
}

func (r *Runner) recordFinished(ctx context.Context, job Job) {
	attrs := []attribute.KeyValue{
		attribute.String("trove.job.family", r.o.Family),
		attribute.String("trove.job.kind", job.Kind),
		attribute.String("trove.job.state", string(job.State)),
	}
	if job.Error != nil {
		attrs = append(attrs, attribute.String("error.type", string(job.Error.Code)))
	}
	r.finished.Add(ctx, 1, metric.WithAttributes(attrs...))
	if !job.Started.IsZero() && !job.Finished.IsZero() {
		r.duration.Record(ctx, job.Finished.Sub(job.Started).Seconds(), metric.WithAttributes(attrs...))
	}
}
