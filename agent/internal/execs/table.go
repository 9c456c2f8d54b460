// Package execs keeps the agent's running and recently finished execs (and extracts, which run like
// execs): a bounded number of slots (past them: errs.Busy), long-poll waits, cancellation, and results
// kept for guestv1.ResultRetention so a caller whose wait was cut can ask again.
package execs

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// MaxRetained bounds the finished results kept (the oldest go first).
const MaxRetained = 1024

// Wait bounds.
const (
	DefaultWait = 10 * time.Second
	MaxWait     = 60 * time.Second
)

// Job is one running or finished exec.
type Job struct {
	ID      string
	Tool    string
	Started time.Time
	// Live counters, shown by waits that end before the job does.
	StdoutBytes atomic.Int64
	StdinBytes  atomic.Int64

	cancel context.CancelCauseFunc
	done   chan struct{}
	result guestv1.ExecResult // set before done is closed
	ended  time.Time
}

// Done is closed when the job has finished.
func (j *Job) Done() <-chan struct{} { return j.done }

// snapshot is the job's current result.
func (j *Job) snapshot() guestv1.ExecResult {
	select {
	case <-j.done:
		return j.result
	default:
	}
	return guestv1.ExecResult{ExecID: j.ID, Tool: j.Tool, Done: false, ExitCode: -1, Started: j.Started,
		StdoutBytes: j.StdoutBytes.Load(), StdinBytes: j.StdinBytes.Load(), DurationMs: time.Since(j.Started).Milliseconds()}
}

// Table holds the jobs.
type Table struct {
	slots chan struct{}
	ctx   context.Context // parent of every job; cancelled by Close
	stop  context.CancelCauseFunc
	wg    sync.WaitGroup

	mu   sync.Mutex
	jobs map[string]*Job
	now  func() time.Time
}

// New makes a table with max concurrent jobs.
func New(max int) *Table {
	ctx, stop := context.WithCancelCause(context.Background())
	return &Table{slots: make(chan struct{}, max), ctx: ctx, stop: stop, jobs: map[string]*Job{}, now: time.Now}
}

// Slot is a reserved place for one job.
type Slot struct {
	t    *Table
	once sync.Once
}

// Release gives the slot back (when the job could not be started after all).
func (s *Slot) Release() { s.once.Do(func() { <-s.t.slots }) }

// Reserve takes a slot or fails with errs.Busy.
func (t *Table) Reserve() (*Slot, error) {
	if t.ctx.Err() != nil {
		return nil, errs.Unavailablef("the agent is stopping; retry on its next start")
	}
	select {
	case t.slots <- struct{}{}:
		return &Slot{t: t}, nil
	default:
		return nil, errs.New(errs.Busy, "%d execs and extracts are already running on this guest (its limit); retry when one ends", cap(t.slots))
	}
}

// Running counts the jobs that hold a slot.
func (t *Table) Running() int { return len(t.slots) }

// Launch starts run as a new job in slot. run gets a context cancelled by Cancel (cause: the coded error to
// report) and returns the final result; ExecID, Tool, Done, Started and DurationMs are filled in here.
func (t *Table) Launch(ctx context.Context, slot *Slot, tool string, run func(ctx context.Context, j *Job) guestv1.ExecResult) *Job {
	jctx, cancel := context.WithCancelCause(ctx)
	// The table's own end (agent stop) cancels every job too.
	stopWatch := context.AfterFunc(t.ctx, func() { cancel(context.Cause(t.ctx)) })
	j := &Job{ID: ids.New(), Tool: tool, Started: t.now().UTC(), cancel: cancel, done: make(chan struct{})}
	t.mu.Lock()
	t.jobs[j.ID] = j
	t.mu.Unlock()
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		defer slot.Release()
		defer stopWatch()
		res := run(jctx, j)
		cancel(nil)
		res.ExecID, res.Tool, res.Done, res.Started = j.ID, tool, true, j.Started
		res.DurationMs = time.Since(j.Started).Milliseconds()
		if res.StdoutBytes == 0 {
			res.StdoutBytes = j.StdoutBytes.Load()
		}
		if res.StdinBytes == 0 {
			res.StdinBytes = j.StdinBytes.Load()
		}
		t.mu.Lock()
		j.result, j.ended = res, t.now()
		t.mu.Unlock()
		// The slot is free before anyone hears the job is done, so a caller that starts the next exec
		// on that news is not refused busy (the deferred Release is then a no-op).
		slot.Release()
		close(j.done)
		t.prune()
	}()
	return j
}

func (t *Table) get(id string) (*Job, error) {
	if err := ids.Validate("exec", id); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	j, ok := t.jobs[id]
	if !ok {
		return nil, errs.NotFoundf("no exec %s on this guest (results are kept %s after the end, and not across agent restarts)", id, guestv1.ResultRetention)
	}
	return j, nil
}

// Wait waits up to wait (bounded by MaxWait; 0 is DefaultWait) or until ctx ends for the job to finish, and
// returns its result then (Done false if it is still running).
func (t *Table) Wait(ctx context.Context, id string, wait time.Duration) (guestv1.ExecResult, error) {
	j, err := t.get(id)
	if err != nil {
		return guestv1.ExecResult{}, err
	}
	if wait <= 0 {
		wait = DefaultWait
	}
	wait = min(wait, MaxWait)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-j.done:
	case <-timer.C:
	case <-ctx.Done():
	}
	return j.snapshot(), nil
}

// Cancel cancels the job with cause (a coded error for the result) and returns its result now: Done false
// while the tool is being stopped, the final result if it had already finished.
func (t *Table) Cancel(id string, cause error) (guestv1.ExecResult, error) {
	j, err := t.get(id)
	if err != nil {
		return guestv1.ExecResult{}, err
	}
	j.cancel(cause)
	// A job that ends at once (nothing to stop) is reported as finished.
	select {
	case <-j.done:
	case <-time.After(50 * time.Millisecond):
	}
	return j.snapshot(), nil
}

// prune drops finished results past the retention, and the oldest beyond MaxRetained.
func (t *Table) prune() {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var finished []*Job
	for id, j := range t.jobs {
		if j.ended.IsZero() {
			continue
		}
		if now.Sub(j.ended) > guestv1.ResultRetention {
			delete(t.jobs, id)
			continue
		}
		finished = append(finished, j)
	}
	if len(finished) > MaxRetained {
		sort.Slice(finished, func(a, b int) bool { return finished[a].ended.Before(finished[b].ended) })
		for _, j := range finished[:len(finished)-MaxRetained] {
			delete(t.jobs, j.ID)
		}
	}
}

// Prune runs the retention now (the agent calls it periodically).
func (t *Table) Prune() { t.prune() }

// Close cancels every job with cause and waits for them to end, at most until ctx ends.
func (t *Table) Close(ctx context.Context, cause error) error {
	t.stop(cause)
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return errs.Wrap(errs.Timeout, ctx.Err(), "execs still running when the agent stopped")
	}
}
