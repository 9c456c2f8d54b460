// Package jobs runs long operations (backup, restore, storage copy/verify, ...) as jobs that outlive the
// request that started them and the process that runs them.
//
// A request submits a job and gets its id at once. The job's record lives in a JetStream KV bucket, so any
// replica can answer "job status"; every change of the record is also published as an event; the work itself
// is dispatched through a JetStream work-queue stream, so a job whose worker dies is run again by another
// replica instead of being lost or left half done. docs/jobs.md in the repository has the full design; in
// short, for a family F (e.g. "storage"):
//
//   - KV bucket "trove_jobs_F" (BucketName): key = job id, value = the Job as JSON. Every write is a
//     compare-and-set on the key's last revision, so two workers can never both own a job: the loser's write
//     fails and it walks away. Queued and running records never expire; a finished record is written with a
//     per-message TTL of Options.Retention and then disappears.
//   - Work-queue stream "trove_work_F" (StreamName) on subjects "trove.work.F.<kind>.<id>" (WorkSubject):
//     one message per job (body = job id, Nats-Msg-Id = job id, at most one message per subject), carrying
//     the submitter's trace context in its headers. One durable pull consumer "workers" (ConsumerName) is
//     shared by all replicas: explicit ack, Options.AckWait, a MaxDeliver safety net.
//   - Events: the Job JSON (with its KV revision) on "trove.F.v1.jobs.<id>.events" (EventSubject) after every
//     write: each state change and throttled progress (at most every 500 ms, and always the last).
//
// States: queued -> running -> succeeded | failed | cancelled; running -> queued when a retryable error
// (errs.Unavailable or errs.Timeout) is retried or when a stopping runner hands the job over; queued ->
// cancelled on Cancel. Final states never change.
//
// Takeover: while a handler runs, its runner sends InProgress on the job's message every AckWait/3. A runner
// whose process dies stops doing so; after AckWait the message is delivered to another runner, which finds
// the record "running" under another worker, takes it over (Attempts+1) and runs the handler again. Handlers
// must therefore be safe to run again; job.Attempts > 1 tells them that they are.
//
// Stop (SIGTERM) is graceful: the runner stops fetching, cancels its handlers' contexts, puts their jobs back
// to "queued" and Naks their messages, so another replica takes them over at once instead of after AckWait.
// Jobs are never marked failed because their runner stopped.
//
// Cancel on a queued job cancels it at once; on a running job it sets CancelRequested, the owning runner
// (which watches the key of every job it runs) cancels the handler's context, and the job ends "cancelled".
package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
	"troveng.dev/shared/telemetry"
)

// State is where a job is in its life.
type State string

// The states of a job. Succeeded, failed and cancelled are final.
const (
	StateQueued    State = "queued"
	StateRunning   State = "running"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
	StateCancelled State = "cancelled"
)

// Final reports whether s is an end state (succeeded, failed or cancelled).
func (s State) Final() bool {
	return s == StateSucceeded || s == StateFailed || s == StateCancelled
}

// Progress is how far a running job has come. Unit says what Done and Total count ("bytes", "files", ...);
// Stage names the current step ("upload", "verify", ...).
type Progress struct {
	Done  int64  `json:"done"`
	Total int64  `json:"total,omitempty"`
	Unit  string `json:"unit,omitempty"`
	Stage string `json:"stage,omitempty"`
}

// Job is the record of one job as stored in KV and published in events.
type Job struct {
	ID     string          `json:"id"`
	Family string          `json:"family"`
	Kind   string          `json:"kind"`
	State  State           `json:"state"`
	Params json.RawMessage `json:"params,omitempty"`
	// Progress is the last progress the handler reported (kept in the final record).
	Progress Progress        `json:"progress"`
	Result   json.RawMessage `json:"result,omitempty"`
	// Error is the last error: the reason of a failed or cancelled job, or, on a queued job, the retryable
	// error of the attempt before. It is cleared when the job succeeds.
	Error *errs.Error `json:"error,omitempty"`
	// Attempts counts how many times a handler was started for the job (takeovers and retries included).
	Attempts int `json:"attempts"`
	// Worker is the WorkerID of the runner that owns the job while it runs.
	Worker          string    `json:"worker,omitempty"`
	CancelRequested bool      `json:"cancel_requested,omitempty"`
	Created         time.Time `json:"created"`
	Updated         time.Time `json:"updated"`
	Started         time.Time `json:"started,omitzero"`  // first start
	Finished        time.Time `json:"finished,omitzero"` // when it reached a final state
	// Revision is the KV revision this version of the record was stored at (not stored itself; filled in on
	// reads and in events). A newer version always has a higher revision: event consumers drop older ones.
	Revision uint64 `json:"revision,omitempty"`
}

// Handler runs one job. It must be safe to run again: when a worker dies mid-job, another one runs the
// handler again for the same job (job.Attempts > 1 then). report records progress; the runner throttles it
// (a KV write and an event at most every ~500 ms, and always the last one).
//
// The returned result is stored as JSON. A returned error is stored as a coded error (errs.From):
// errs.Unavailable and errs.Timeout are retried with a backoff up to Options.MaxAttempts, other codes fail
// the job at once. The handler must return soon after ctx is cancelled (on Cancel, on Stop, or when the
// job was taken over by another worker); a panic fails the job with errs.Internal.
type Handler func(ctx context.Context, job Job, report func(Progress)) (result any, err error)

// Options configure a Runner. Every replica of a family should use the same AckWait and MaxAttempts: they
// are part of the shared consumer's configuration (the last runner to start sets them).
type Options struct {
	// Family names the job family ("storage", "backup", ...); it is part of the bucket, stream and subject
	// names and must pass ids.Validate.
	Family string
	// WorkerID names this runner in job records; default hostname-pid-random.
	WorkerID string
	// Concurrency is how many jobs this runner runs at once; default 2.
	Concurrency int
	// AckWait is how long a silent worker keeps a job before another takes it over; default 30s.
	AckWait time.Duration
	// MaxAttempts is how many times a handler is started for one job at most (retries and takeovers
	// included); default 5. After that the job fails with the last error.
	MaxAttempts int
	// Retention is how long finished job records stay in KV; default 7 days (at least 1s).
	Retention time.Duration
	// RetryDelay is the delay before the first retry of a retryable error; it doubles with every attempt,
	// up to one minute. Default 1s.
	RetryDelay time.Duration
	// StopTimeout is how long a runner waits, after cancelling a handler's context (Stop, Cancel,
	// takeover), for the handler to return before it acts without it (hands over, records cancelled, or
	// walks away). Default 10s.
	StopTimeout time.Duration
	// CallTimeout bounds every single JetStream call (a call made while the server is away would otherwise
	// block until its context's deadline). Default 5s.
	CallTimeout time.Duration
	// Replicas is the replication factor of the bucket and the stream (1 for a single server, 3 in a
	// cluster); default 1.
	Replicas int
	// Logger receives warnings about NATS trouble and takeovers; default slog.Default().
	Logger *slog.Logger
}

// ConsumerName is the durable pull consumer that all runners of a family share.
const ConsumerName = "workers"

// BucketName is the KV bucket holding the job records of a family.
func BucketName(family string) string { return "trove_jobs_" + family }

// StreamName is the work-queue stream of a family.
func StreamName(family string) string { return "trove_work_" + family }

// WorkSubject is the subject of a job's work message.
func WorkSubject(family, kind, id string) string {
	return "trove.work." + family + "." + kind + "." + id
}

// EventSubject is the subject on which a job's record is published after every change.
func EventSubject(family, id string) string { return "trove." + family + ".v1.jobs." + id + ".events" }

// Runner submits, tracks and runs the jobs of one family. Every replica of a service has one per family;
// they share the bucket, the stream and the consumer.
type Runner struct {
	o        Options
	js       jetstream.JetStream
	nc       *nats.Conn
	kv       jetstream.KeyValue
	stream   jetstream.Stream
	cons     jetstream.Consumer
	log      *slog.Logger
	kvPrefix string // "$KV.<bucket>." : job records are written with our own CAS publishes (to set a TTL)

	maxDeliver int
	pollWait   time.Duration

	mu       sync.Mutex
	handlers map[string]Handler
	active   map[string]*run
	started  bool

	ensureMu   sync.Mutex
	lastEnsure time.Time

	stopOnce sync.Once
	stopCh   chan struct{}
	loops    sync.WaitGroup

	finished metric.Int64Counter
	duration metric.Float64Histogram
	starts   metric.Int64Counter
}

// New connects a runner to its family's bucket, stream and consumer, creating or updating them (idempotent,
// safe for several replicas at once). It does not run jobs until Start.
func New(ctx context.Context, js jetstream.JetStream, opts Options) (*Runner, error) {
	if js == nil {
		return nil, errs.BadRequestf("jobs: no JetStream context given")
	}
	if err := ids.Validate("job family", opts.Family); err != nil {
		return nil, err
	}
	o, err := withDefaults(opts)
	if err != nil {
		return nil, err
	}
	r := &Runner{
		o:          o,
		js:         js,
		nc:         js.Conn(),
		log:        o.Logger.With("jobs.family", o.Family, "jobs.worker", o.WorkerID),
		kvPrefix:   "$KV." + BucketName(o.Family) + ".",
		maxDeliver: 4*o.MaxAttempts + 20,
		pollWait:   min(max(o.AckWait/2, 500*time.Millisecond), 2*time.Second),
		handlers:   map[string]Handler{},
		active:     map[string]*run{},
		stopCh:     make(chan struct{}),
	}
	r.initMetrics()

	if r.kv, r.stream, r.cons, err = r.ensure(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// ensure creates or updates the family's bucket, stream and consumer (idempotent). New calls it, and so do
// the worker loops when the consumer has vanished (e.g. a server that lost its store): the handles are
// by name, so the ones made first keep working.
func (r *Runner) ensure(ctx context.Context) (kv jetstream.KeyValue, st jetstream.Stream, c jetstream.Consumer, err error) {
	o, js := r.o, r.js
	err = r.retry(ctx, 3, func(cctx context.Context) error {
		var err error
		kv, err = js.CreateOrUpdateKeyValue(cctx, jetstream.KeyValueConfig{
			Bucket:      BucketName(o.Family),
			Description: "trove job records of family " + o.Family + " (troveng.dev/shared/jobs)",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
			// Enables per-message TTLs (finished records expire after Retention) and tells watchers
			// when a record expired.
			LimitMarkerTTL: 10 * time.Minute,
		})
		return err
	})
	if err != nil {
		return nil, nil, nil, errs.Wrap(errs.Unavailable, err, "jobs: creating KV bucket %s", BucketName(o.Family))
	}
	err = r.retry(ctx, 3, func(cctx context.Context) error {
		var err error
		st, err = js.CreateOrUpdateStream(cctx, jetstream.StreamConfig{
			Name:        StreamName(o.Family),
			Description: "trove work queue of job family " + o.Family + " (troveng.dev/shared/jobs)",
			Subjects:    []string{"trove.work." + o.Family + ".>"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
			// One pending message per job: a repeated submit can never queue a job twice, even after the
			// duplicate window.
			MaxMsgsPerSubject:    1,
			Discard:              jetstream.DiscardNew,
			DiscardNewPerSubject: true,
			Duplicates:           2 * time.Minute,
		})
		return err
	})
	if err != nil {
		return nil, nil, nil, errs.Wrap(errs.Unavailable, err, "jobs: creating work stream %s", StreamName(o.Family))
	}
	err = r.retry(ctx, 3, func(cctx context.Context) error {
		var err error
		c, err = st.CreateOrUpdateConsumer(cctx, jetstream.ConsumerConfig{
			Durable:       ConsumerName,
			Description:   "runners of job family " + o.Family,
			FilterSubject: "trove.work." + o.Family + ".>",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       o.AckWait,
			// A safety net only: MaxAttempts (counted in the record) ends a job first. A job whose message
			// reaches its last delivery is failed by the runner that gets it (see handle).
			MaxDeliver: r.maxDeliver,
		})
		return err
	})
	if err != nil {
		return nil, nil, nil, errs.Wrap(errs.Unavailable, err, "jobs: creating consumer %s on %s", ConsumerName, StreamName(o.Family))
	}
	return kv, st, c, nil
}

func withDefaults(o Options) (Options, error) {
	if o.WorkerID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "worker"
		}
		o.WorkerID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), ids.New()[:8])
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 2
	}
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	if o.AckWait < 500*time.Millisecond {
		return o, errs.BadRequestf("jobs: AckWait %s is too short; use at least 500ms", o.AckWait)
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.Retention <= 0 {
		o.Retention = 7 * 24 * time.Hour
	}
	if o.Retention < time.Second {
		return o, errs.BadRequestf("jobs: Retention %s is too short; JetStream's shortest message TTL is 1s", o.Retention)
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = time.Second
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = 10 * time.Second
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 5 * time.Second
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

func (r *Runner) initMetrics() {
	m := otel.Meter("troveng.dev/shared/jobs")
	r.finished, _ = m.Int64Counter("trove.jobs.finished", metric.WithDescription("Jobs that reached a final state, by family, kind, state and error code."))
	r.duration, _ = m.Float64Histogram("trove.jobs.duration", metric.WithUnit("s"), metric.WithDescription("Time from a job's first start to its final state."))
	r.starts, _ = m.Int64Counter("trove.jobs.starts", metric.WithDescription("Handler starts (first runs, retries and takeovers)."))
}

// WorkerID is the name this runner writes into the records of the jobs it runs.
func (r *Runner) WorkerID() string { return r.o.WorkerID }

// Family is the runner's job family.
func (r *Runner) Family() string { return r.o.Family }

// Register sets the handler of a job kind. Every runner that submits or runs jobs of that kind registers it.
// It panics on an invalid kind, a nil handler or a kind registered twice (programming errors).
func (r *Runner) Register(kind string, h Handler) {
	if err := ids.Validate("job kind", kind); err != nil {
		panic(fmt.Sprintf("jobs: Register: %v", err))
	}
	if h == nil {
		panic("jobs: Register: nil handler for kind " + kind)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.handlers[kind]; dup {
		panic("jobs: Register: kind " + kind + " registered twice")
	}
	r.handlers[kind] = h
}

func (r *Runner) handler(kind string) Handler {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.handlers[kind]
}

func (r *Runner) kinds() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.handlers))
	for k := range r.handlers {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Submit queues a job of a registered kind and returns its record at once. id "" makes a new id.
// Submitting an id that exists returns the existing job unchanged (idempotent; a different kind is a
// Conflict), and queues its work message again if it is still queued (repairing an earlier failed submit).
// Params are stored as JSON.
func (r *Runner) Submit(ctx context.Context, kind string, params any, id string) (Job, error) {
	if err := ids.Validate("job kind", kind); err != nil {
		return Job{}, err
	}
	if r.handler(kind) == nil {
		return Job{}, errs.BadRequestf("unknown job kind %q in family %s; known kinds: %s", kind, r.o.Family, strings.Join(r.kinds(), ", "))
	}
	if id == "" {
		id = ids.New()
	} else if err := ids.Validate("job", id); err != nil {
		return Job{}, err
	}
	var raw json.RawMessage
	if params != nil {
		b, err := json.Marshal(params)
		if err != nil {
			return Job{}, errs.BadRequestf("params of %s job %s cannot be encoded as JSON: %v", kind, id, err)
		}
		if string(b) != "null" {
			raw = b
		}
	}
	now := time.Now().UTC()
	job := Job{ID: id, Family: r.o.Family, Kind: kind, State: StateQueued, Params: raw, Created: now, Updated: now}
	data, err := json.Marshal(job)
	if err != nil {
		return Job{}, errs.Wrap(errs.Internal, err, "encoding job %s", id)
	}
	var rev uint64
	exists := false
	err = r.retry(ctx, 3, func(cctx context.Context) error {
		rev, err = r.kv.Create(cctx, id, data)
		if errors.Is(err, jetstream.ErrKeyExists) {
			// Also what a retried Create sees when the first one did land: either way the job exists.
			exists = true
			return nil
		}
		return err
	})
	if err != nil {
		return Job{}, errs.Wrap(errs.Unavailable, err, "jobs: recording job %s", id)
	}
	if exists {
		cur, err := r.Get(ctx, id)
		if err != nil {
			return Job{}, err
		}
		if cur.Kind != kind {
			return cur, errs.Conflictf("job id %s is already used by a %s job in family %s", id, cur.Kind, r.o.Family)
		}
		if cur.State == StateQueued {
			if err := r.enqueue(ctx, cur); err != nil {
				return cur, err
			}
		}
		return cur, nil
	}
	job.Revision = rev
	r.publishEvent(ctx, job)
	if err := r.enqueue(ctx, job); err != nil {
		// Take the record back so it does not sit "queued" without work; if NATS is too far gone for
		// that too, submitting the same id again queues it.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.o.CallTimeout)
		if derr := r.kv.Delete(dctx, id, jetstream.LastRevision(rev)); derr != nil {
			r.log.Warn("jobs: could not remove the record of a job that could not be queued; submit it again with the same id", "job", id, "err", derr)
		}
		cancel()
		return Job{}, err
	}
	return job, nil
}

// enqueue publishes a job's work message, carrying ctx's trace context. A message already waiting for the
// job (same Nats-Msg-Id within the duplicate window, or the one-per-subject limit) counts as success.
func (r *Runner) enqueue(ctx context.Context, job Job) error {
	subj := WorkSubject(r.o.Family, job.Kind, job.ID)
	msg := nats.NewMsg(subj)
	msg.Data = []byte(job.ID)
	telemetry.InjectMsg(ctx, msg)
	err := r.retry(ctx, 3, func(cctx context.Context) error {
		_, err := r.js.PublishMsg(cctx, msg, jetstream.WithMsgID(job.ID))
		var apiErr *jetstream.APIError
		if err != nil && errors.As(err, &apiErr) {
			// Most likely "maximum messages per subject exceeded": the job's message is already waiting.
			if _, gerr := r.stream.GetLastMsgForSubject(cctx, subj); gerr == nil {
				return nil
			}
		}
		return err
	})
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "jobs: queuing job %s (nothing was started; submit it again with the same id)", job.ID)
	}
	return nil
}

// Get returns a job's record; errs.NotFound if there is none (never submitted, or finished longer than
// Options.Retention ago).
func (r *Runner) Get(ctx context.Context, id string) (Job, error) {
	if err := ids.Validate("job", id); err != nil {
		return Job{}, err
	}
	job, _, err := r.load(ctx, id)
	return job, err
}

// List returns the jobs of the family that filter accepts (all when filter is nil), oldest first.
func (r *Runner) List(ctx context.Context, filter func(Job) bool) ([]Job, error) {
	w, stop, err := r.watchKey(ctx, jetstream.AllKeys, false, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer stop()
	var out []Job
	gap := time.NewTimer(r.o.CallTimeout)
	defer gap.Stop()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errs.Unavailablef("jobs: listing jobs of family %s: the watch ended early", r.o.Family)
			}
			if e == nil { // all current values seen
				sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
				return out, nil
			}
			var job Job
			if json.Unmarshal(e.Value(), &job) != nil {
				r.log.Warn("jobs: skipping an undecodable job record", "key", e.Key())
				continue
			}
			job.Revision = e.Revision()
			if filter == nil || filter(job) {
				out = append(out, job)
			}
			gap.Reset(r.o.CallTimeout)
		case <-gap.C:
			return nil, errs.Unavailablef("jobs: listing jobs of family %s: NATS went silent for %s", r.o.Family, r.o.CallTimeout)
		case <-ctx.Done():
			return nil, errs.From(ctx.Err())
		}
	}
}

// Cancel cancels a job. A queued job is cancelled at once. A running job gets CancelRequested: its runner
// cancels the handler's context and the job ends "cancelled" (or "succeeded", if the handler finished its
// work anyway); the returned record then still says running: Watch it for the end. A finished job is a
// Conflict.
func (r *Runner) Cancel(ctx context.Context, id string) (Job, error) {
	if err := ids.Validate("job", id); err != nil {
		return Job{}, err
	}
	return r.update(ctx, id, 5, func(j *Job) error {
		switch {
		case j.State.Final():
			return errs.Conflictf("job %s is already %s; only queued or running jobs can be cancelled", id, j.State)
		case j.State == StateRunning:
			if j.CancelRequested {
				return errNoChange
			}
			j.CancelRequested = true
		default:
			j.CancelRequested = true
			j.State = StateCancelled
			j.Worker = ""
			j.Finished = time.Now().UTC()
			j.Error = errCancelledOnRequest()
		}
		return nil
	})
}

func errCancelledOnRequest() *errs.Error { return errs.New(errs.Cancelled, "job cancelled on request") }

// Watch sends the job's record after every change (first its current state) until it reaches a final
// state, then closes the channel. The channel also closes when ctx ends, the record disappears or the
// connection closes. An unknown job is errs.NotFound.
func (r *Runner) Watch(ctx context.Context, id string) (<-chan Job, error) {
	job, err := r.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	out := make(chan Job, 16)
	if job.State.Final() {
		out <- job
		close(out)
		return out, nil
	}
	w, stop, err := r.watchKey(ctx, id, false)
	if err != nil {
		return nil, err
	}
	go func() {
		defer close(out)
		defer stop()
		var last uint64
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					continue
				}
				if e.Operation() != jetstream.KeyValuePut {
					return
				}
				var j Job
				if json.Unmarshal(e.Value(), &j) != nil || e.Revision() <= last {
					continue
				}
				last = e.Revision()
				j.Revision = last
				select {
				case out <- j:
				case <-ctx.Done():
					return
				}
				if j.State.Final() {
					return
				}
			}
		}
	}()
	return out, nil
}

// watchKey watches one job's key (or all keys, for ">"); updatesOnly skips the current values. The watch
// lives until stop is called or ctx ends; only creating it is bounded by CallTimeout (the watch's context
// is also its lifetime, so it cannot carry that deadline).
func (r *Runner) watchKey(ctx context.Context, key string, updatesOnly bool, opts ...jetstream.WatchOpt) (w jetstream.KeyWatcher, stop func(), err error) {
	if updatesOnly {
		opts = append(opts, jetstream.UpdatesOnly())
	}
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 && !sleepCtx(ctx, backoff(100*time.Millisecond, attempt-1, 2*time.Second)) {
			break
		}
		wctx, cancel := context.WithCancel(ctx)
		timer := time.AfterFunc(r.o.CallTimeout, cancel)
		w, err = r.kv.Watch(wctx, key, opts...)
		if !timer.Stop() && err == nil {
			_ = w.Stop()
			err = context.DeadlineExceeded
		}
		if err == nil {
			return w, func() { _ = w.Stop(); cancel() }, nil
		}
		cancel()
		if !r.retryable(ctx, err) {
			break
		}
	}
	return nil, nil, errs.Wrap(errs.Unavailable, err, "jobs: watching %s in bucket %s", key, BucketName(r.o.Family))
}
