package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/shared/errs"
)

func TestSubmitRunsToSuccessWithProgress(t *testing.T) {
	t.Parallel()
	srv := server(t)
	nc := srv.Connect()
	r := newRunner(t, nc, Options{}, map[string]Handler{
		"steps": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			var p struct{ N int }
			if err := json.Unmarshal(job.Params, &p); err != nil {
				return nil, errs.BadRequestf("params: %v", err)
			}
			for i := 1; i <= p.N; i++ {
				report(Progress{Done: int64(i), Total: int64(p.N), Unit: "steps", Stage: "stepping"})
				time.Sleep(300 * time.Millisecond)
			}
			return map[string]int{"did": p.N}, nil
		},
	})
	ctx := ctxT(t)

	// Events on the subject, from before the job exists.
	var mu sync.Mutex
	var events []Job
	sub, err := nc.Subscribe(EventSubject(testFamily, "job-1"), func(m *nats.Msg) {
		var j Job
		if err := json.Unmarshal(m.Data, &j); err == nil {
			mu.Lock()
			events = append(events, j)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	job, err := r.Submit(ctx, "steps", map[string]int{"N": 3}, "job-1")
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if job.ID != "job-1" || job.State != StateQueued || job.Family != testFamily || job.Kind != "steps" || job.Revision == 0 {
		t.Fatalf("submitted record: %+v", job)
	}
	updates, err := r.Watch(ctx, job.ID)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	start(t, r)

	var seen []Job
	for j := range updates {
		seen = append(seen, j)
	}
	if len(seen) == 0 {
		t.Fatal("Watch sent nothing")
	}
	final := seen[len(seen)-1]
	if final.State != StateSucceeded {
		t.Fatalf("final state %s, want succeeded: %+v", final.State, final)
	}
	if string(final.Result) != `{"did":3}` || final.Error != nil || final.Attempts != 1 || final.Worker != r.WorkerID() {
		t.Fatalf("final record: %+v", final)
	}
	if final.Progress != (Progress{Done: 3, Total: 3, Unit: "steps", Stage: "stepping"}) {
		t.Fatalf("final progress %+v, want the last report", final.Progress)
	}
	if final.Started.IsZero() || final.Finished.Before(final.Started) || final.Created.After(final.Started) {
		t.Fatalf("timestamps: %+v", final)
	}
	sawProgress := false
	for i, j := range seen {
		if i > 0 && j.Revision <= seen[i-1].Revision {
			t.Fatalf("Watch revisions not increasing: %d after %d", j.Revision, seen[i-1].Revision)
		}
		if j.State == StateRunning && j.Progress.Done > 0 && j.Progress.Done < 3 {
			sawProgress = true
		}
	}
	if !sawProgress {
		t.Fatalf("Watch saw no intermediate progress: %+v", seen)
	}

	// The event subject carried the same story.
	deadline := time.Now().Add(2 * time.Second)
	for {
		mu.Lock()
		n := len(events)
		done := n > 0 && events[n-1].State == StateSucceeded
		mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	states := map[State]bool{}
	evProgress := false
	for _, e := range events {
		states[e.State] = true
		if e.State == StateRunning && e.Progress.Done > 0 {
			evProgress = true
		}
	}
	last := events[len(events)-1]
	mu.Unlock()
	if !states[StateQueued] || !states[StateRunning] || !states[StateSucceeded] || !evProgress {
		t.Fatalf("events missing a state or progress: %v progress=%v", states, evProgress)
	}
	if last.Revision != final.Revision || string(last.Result) != string(final.Result) {
		t.Fatalf("last event %+v differs from the final record %+v", last, final)
	}

	// Get and List.
	got, err := r.Get(ctx, job.ID)
	if err != nil || got.State != StateSucceeded || got.Revision != final.Revision {
		t.Fatalf("Get: %+v, %v", got, err)
	}
	if _, err := r.Submit(ctx, "steps", map[string]int{"N": 0}, "job-2"); err != nil {
		t.Fatal(err)
	}
	waitState(t, r, "job-2", StateSucceeded, 5*time.Second)
	all, err := r.List(ctx, nil)
	if err != nil || len(all) != 2 || all[0].ID != "job-1" || all[1].ID != "job-2" {
		t.Fatalf("List: %+v, %v", all, err)
	}
	some, err := r.List(ctx, func(j Job) bool { return j.ID == "job-2" })
	if err != nil || len(some) != 1 || some[0].ID != "job-2" {
		t.Fatalf("List filtered: %+v, %v", some, err)
	}
	// Finished jobs leave no work behind.
	if n := workMessages(t, nc); n != 0 {
		t.Fatalf("%d work messages left in the stream", n)
	}
}

func TestProgressIsThrottledAndLastAlwaysKept(t *testing.T) {
	t.Parallel()
	srv := server(t)
	nc := srv.Connect()
	r := newRunner(t, nc, Options{}, map[string]Handler{
		"burst": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			for i := 1; i <= 1000; i++ {
				report(Progress{Done: int64(i), Total: 1000})
				time.Sleep(time.Millisecond)
			}
			return nil, nil
		},
	})
	ctx := ctxT(t)
	job, err := r.Submit(ctx, "burst", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	updates, err := r.Watch(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	start(t, r)
	t0 := time.Now()
	writes := 0
	var final Job
	for j := range updates {
		if j.State == StateRunning && j.Progress.Done > 0 {
			writes++
		}
		final = j
	}
	elapsed := time.Since(t0)
	// At most one write per 500 ms, plus the first one.
	if limit := int(elapsed/progressInterval) + 2; writes > limit {
		t.Fatalf("%d progress writes in %s; throttling allows %d", writes, elapsed, limit)
	}
	if final.State != StateSucceeded || final.Progress.Done != 1000 || final.Result != nil {
		t.Fatalf("final record %+v: want succeeded with the last progress (1000) and no result", final)
	}
}

func TestTraceContextFollowsTheJob(t *testing.T) {
	t.Parallel()
	srv := server(t)
	nc := srv.Connect()
	var handlerTrace atomic.Value
	r := newRunner(t, nc, Options{}, map[string]Handler{
		"traced": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			handlerTrace.Store(trace.SpanContextFromContext(ctx).TraceID())
			return "ok", nil
		},
	})
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	ctx := trace.ContextWithSpanContext(ctxT(t), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true,
	}))
	events := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(EventSubject(testFamily, "traced-1"), events)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if _, err := r.Submit(ctx, "traced", nil, "traced-1"); err != nil {
		t.Fatal(err)
	}
	start(t, r)
	waitState(t, r, "traced-1", StateSucceeded, 5*time.Second)
	if got, _ := handlerTrace.Load().(trace.TraceID); got != tid {
		t.Fatalf("handler ran in trace %v, want the submitter's %v", got, tid)
	}
	// Every event, the worker's included, carries the trace.
	timeout := time.After(2 * time.Second)
	for {
		select {
		case m := <-events:
			if tp := m.Header.Get("traceparent"); !strings.Contains(tp, tid.String()) {
				t.Fatalf("event without the job's trace: traceparent %q, body %s", tp, m.Data)
			}
			var j Job
			_ = json.Unmarshal(m.Data, &j)
			if j.State == StateSucceeded {
				return
			}
		case <-timeout:
			t.Fatal("no succeeded event")
		}
	}
}

func TestSubmitValidationAndIdempotence(t *testing.T) {
	t.Parallel()
	srv := server(t)
	nc := srv.Connect()
	nop := func(ctx context.Context, job Job, report func(Progress)) (any, error) { return nil, nil }
	r := newRunner(t, nc, Options{}, map[string]Handler{"a": nop, "b": nop})
	ctx := ctxT(t)

	first, err := r.Submit(ctx, "a", map[string]string{"x": "1"}, "same-id")
	if err != nil {
		t.Fatal(err)
	}
	second, err := r.Submit(ctx, "a", map[string]string{"x": "2"}, "same-id")
	if err != nil {
		t.Fatalf("second Submit: %v", err)
	}
	if second.Revision != first.Revision || !second.Created.Equal(first.Created) || string(second.Params) != `{"x":"1"}` {
		t.Fatalf("second Submit made a new job: %+v vs %+v", second, first)
	}
	if n := workMessages(t, nc); n != 1 {
		t.Fatalf("%d work messages for one job, want 1", n)
	}
	// Past the Nats-Msg-Id window too, the stream refuses a second message for a waiting job, and queuing
	// the job again counts that as done.
	extra := nats.NewMsg(WorkSubject(testFamily, "a", "same-id"))
	extra.Data = []byte("same-id")
	if _, err := mustJS(t, nc).PublishMsg(ctx, extra, jetstream.WithMsgID("another-msg-id")); err == nil {
		t.Fatal("the work stream took a second message for one job")
	}
	if err := r.enqueue(ctx, first); err != nil {
		t.Fatalf("enqueue of a job whose message is waiting: %v", err)
	}
	if n := workMessages(t, nc); n != 1 {
		t.Fatalf("%d work messages for one job, want 1", n)
	}
	if _, err := r.Submit(ctx, "b", nil, "same-id"); !errs.Is(err, errs.Conflict) {
		t.Fatalf("same id, other kind: %v, want conflict", err)
	}
	if _, err := r.Submit(ctx, "nope", nil, ""); !errs.Is(err, errs.BadRequest) || !strings.Contains(err.Error(), "known kinds: a, b") {
		t.Fatalf("unknown kind: %v, want bad_request naming the known kinds", err)
	}
	for _, bad := range []string{"has.dot", "has space", "-lead", strings.Repeat("x", 65), "wild*", ">"} {
		if _, err := r.Submit(ctx, "a", nil, bad); !errs.Is(err, errs.BadRequest) {
			t.Fatalf("id %q: %v, want bad_request", bad, err)
		}
		if _, err := r.Get(ctx, bad); !errs.Is(err, errs.BadRequest) {
			t.Fatalf("Get %q: %v, want bad_request", bad, err)
		}
	}
	if _, err := r.Submit(ctx, "a", func() {}, ""); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("unencodable params: %v, want bad_request", err)
	}
	if _, err := r.Get(ctx, "never-submitted"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("Get unknown: %v, want not_found", err)
	}
	if _, err := r.Watch(ctx, "never-submitted"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("Watch unknown: %v, want not_found", err)
	}
	if _, err := r.Cancel(ctx, "never-submitted"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("Cancel unknown: %v, want not_found", err)
	}
	generated, err := r.Submit(ctx, "b", nil, "")
	if err != nil || len(generated.ID) != 26 || generated.Params != nil {
		t.Fatalf("generated id: %+v, %v", generated, err)
	}

	// A second runner of the family (another replica) sees the same jobs, and running the queued ones
	// leaves the work stream empty.
	r2 := newRunner(t, srv.Connect(), Options{}, map[string]Handler{"a": nop, "b": nop})
	if j, err := r2.Get(ctx, "same-id"); err != nil || j.Kind != "a" {
		t.Fatalf("other replica Get: %+v, %v", j, err)
	}
	start(t, r2)
	waitState(t, r, "same-id", StateSucceeded, 5*time.Second)
	waitState(t, r, generated.ID, StateSucceeded, 5*time.Second)
	// Submitting a finished id again returns it and runs nothing.
	again, err := r.Submit(ctx, "a", nil, "same-id")
	if err != nil || again.State != StateSucceeded {
		t.Fatalf("resubmit of a finished job: %+v, %v", again, err)
	}
	time.Sleep(100 * time.Millisecond)
	if n := workMessages(t, nc); n != 0 {
		t.Fatalf("%d work messages after all jobs finished", n)
	}
}

func TestOptionsAndRegistration(t *testing.T) {
	t.Parallel()
	srv := server(t)
	js := mustJS(t, srv.Connect())
	ctx := ctxT(t)
	for _, fam := range []string{"", "a.b", "a b", "*"} {
		if _, err := New(ctx, js, Options{Family: fam}); !errs.Is(err, errs.BadRequest) {
			t.Fatalf("family %q: %v, want bad_request", fam, err)
		}
	}
	if _, err := New(ctx, js, Options{Family: "x", Retention: 10 * time.Millisecond}); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("tiny retention: %v", err)
	}
	r, err := New(ctx, js, Options{Family: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if r.o.Concurrency != 2 || r.o.AckWait != 30*time.Second || r.o.MaxAttempts != 5 || r.o.Retention != 7*24*time.Hour || r.WorkerID() == "" {
		t.Fatalf("defaults: %+v", r.o)
	}
	if err := r.Start(ctx); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("Start without handlers: %v", err)
	}
	nop := func(ctx context.Context, job Job, report func(Progress)) (any, error) { return nil, nil }
	mustPanic(t, "invalid kind", func() { r.Register("a.b", nop) })
	mustPanic(t, "nil handler", func() { r.Register("k", nil) })
	r.Register("k", nop)
	mustPanic(t, "duplicate kind", func() { r.Register("k", nop) })
	// New is idempotent: a second replica with the same options.
	if _, err := New(ctx, js, Options{Family: "x"}); err != nil {
		t.Fatalf("second New: %v", err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); !errs.Is(err, errs.Conflict) {
		t.Fatalf("second Start: %v", err)
	}
	r.Stop()
	r.Stop()
	if err := r.Start(ctx); !errs.Is(err, errs.Conflict) {
		t.Fatalf("Start after Stop: %v", err)
	}
}

func TestHandlerErrors(t *testing.T) {
	t.Parallel()
	srv := server(t)
	nc := srv.Connect()
	r := newRunner(t, nc, Options{}, map[string]Handler{
		"conflict": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			return nil, errs.Conflictf("instance db1 is busy with another backup")
		},
		"plain": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			return nil, errors.New("disk on fire")
		},
		"panics": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			panic("handler bug")
		},
		"badresult": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			return func() {}, nil
		},
	})
	ctx := ctxT(t)
	start(t, r)
	cases := []struct {
		kind string
		code errs.Code
		msg  string
	}{
		{"conflict", errs.Conflict, "instance db1 is busy with another backup"},
		{"plain", errs.Internal, "disk on fire"},
		{"panics", errs.Internal, "panicked"},
		{"badresult", errs.Internal, "cannot be encoded"},
	}
	for _, c := range cases {
		job, err := r.Submit(ctx, c.kind, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		j := waitState(t, r, job.ID, StateFailed, 5*time.Second)
		if j.Error == nil || j.Error.Code != c.code || !strings.Contains(j.Error.Message, c.msg) || j.Attempts != 1 || j.Finished.IsZero() {
			t.Fatalf("%s: failed record %+v (error %+v), want code %s with %q after 1 attempt", c.kind, j, j.Error, c.code, c.msg)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := workMessages(t, nc); n != 0 {
		t.Fatalf("failed jobs left %d work messages", n)
	}
}

func TestRetryableErrors(t *testing.T) {
	t.Parallel()
	srv := server(t)
	nc := srv.Connect()
	var flakyRuns atomic.Int32
	r := newRunner(t, nc, Options{MaxAttempts: 3}, map[string]Handler{
		"flaky": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			flakyRuns.Add(1)
			if job.Attempts == 1 {
				report(Progress{Done: 5, Stage: "first try"})
				return nil, errs.Unavailablef("storage backend s3 did not answer")
			}
			return "second time lucky", nil
		},
		"down": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			return nil, context.DeadlineExceeded // a timeout: retried, and still failing
		},
	})
	ctx := ctxT(t)
	events := make(chan *nats.Msg, 64)
	sub, _ := nc.ChanSubscribe(EventSubject(testFamily, "flaky-1"), events)
	defer sub.Unsubscribe()
	if _, err := r.Submit(ctx, "flaky", nil, "flaky-1"); err != nil {
		t.Fatal(err)
	}
	down, err := r.Submit(ctx, "down", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	start(t, r)
	j := waitState(t, r, "flaky-1", StateSucceeded, 5*time.Second)
	if j.Attempts != 2 || flakyRuns.Load() != 2 || j.Error != nil || resultString(t, j) != "second time lucky" {
		t.Fatalf("flaky job: %+v after %d runs", j, flakyRuns.Load())
	}
	// Between the attempts the record said queued, with the error that is being retried.
	sawRetry := false
	for len(events) > 0 {
		var e Job
		_ = json.Unmarshal((<-events).Data, &e)
		if e.State == StateQueued && e.Attempts == 1 && e.Error != nil && e.Error.Code == errs.Unavailable {
			sawRetry = true
		}
	}
	if !sawRetry {
		t.Fatal("no queued-for-retry event with the unavailable error")
	}
	d := waitState(t, r, down.ID, StateFailed, 10*time.Second)
	if d.Attempts != 3 || d.Error == nil || d.Error.Code != errs.Timeout {
		t.Fatalf("always-timing-out job: %+v (error %+v), want failed with timeout after 3 attempts", d, d.Error)
	}
}

func TestCancelQueuedRunningAndFinished(t *testing.T) {
	t.Parallel()
	srv := server(t)
	nc := srv.Connect()
	var idleRuns atomic.Int32
	handlerCause := make(chan error, 1)
	running := make(chan struct{})
	// A long AckWait makes the poll fallback slow (AckWait/3): a prompt cancel proves the key watch works.
	r := newRunner(t, nc, Options{AckWait: 20 * time.Second}, map[string]Handler{
		"idle": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			idleRuns.Add(1)
			return nil, nil
		},
		"wait": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			close(running)
			<-ctx.Done()
			handlerCause <- ctx.Err()
			return nil, ctx.Err()
		},
	})
	ctx := ctxT(t)

	// Queued: cancelled at once, and never run once workers start.
	q, err := r.Submit(ctx, "idle", nil, "queued-1")
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.Cancel(ctx, q.ID)
	if err != nil || c.State != StateCancelled || c.Error == nil || c.Error.Code != errs.Cancelled || c.Finished.IsZero() {
		t.Fatalf("cancel queued: %+v, %v", c, err)
	}
	start(t, r)

	// Running: the handler's context is cancelled and the job ends cancelled.
	w, err := r.Submit(ctx, "wait", nil, "running-1")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-running:
	case <-time.After(5 * time.Second):
		t.Fatal("handler did not start")
	}
	c, err = r.Cancel(ctx, w.ID)
	if err != nil || c.State != StateRunning || !c.CancelRequested {
		t.Fatalf("cancel running: %+v, %v", c, err)
	}
	select {
	case cause := <-handlerCause:
		if !errors.Is(cause, context.Canceled) {
			t.Fatalf("handler saw %v", cause)
		}
	case <-time.After(3 * time.Second): // the poll would take 6.7s
		t.Fatal("handler context not cancelled")
	}
	j := waitState(t, r, w.ID, StateCancelled, 5*time.Second)
	if j.Error == nil || j.Error.Code != errs.Cancelled || j.Attempts != 1 {
		t.Fatalf("cancelled record: %+v", j)
	}

	// Finished: conflict, and the record is unchanged.
	for _, id := range []string{q.ID, w.ID} {
		before, _ := r.Get(ctx, id)
		if _, err := r.Cancel(ctx, id); !errs.Is(err, errs.Conflict) {
			t.Fatalf("cancel finished %s: %v, want conflict", id, err)
		}
		after, _ := r.Get(ctx, id)
		if after.Revision != before.Revision {
			t.Fatalf("cancel of a finished job wrote its record")
		}
	}
	// The cancelled queued job's message was dropped without running it.
	time.Sleep(300 * time.Millisecond)
	if n := idleRuns.Load(); n != 0 {
		t.Fatalf("cancelled queued job ran %d times", n)
	}
	if n := workMessages(t, nc); n != 0 {
		t.Fatalf("%d work messages left", n)
	}
}

func TestFinishedRecordsExpireAfterRetention(t *testing.T) {
	t.Parallel()
	srv := server(t)
	nc := srv.Connect()
	release := make(chan struct{})
	started := make(chan struct{})
	r := newRunner(t, nc, Options{Retention: time.Second}, map[string]Handler{
		"quick": func(ctx context.Context, job Job, report func(Progress)) (any, error) { return "done", nil },
		"slow":  blockingHandler(started, release, "slow done"),
	})
	ctx := ctxT(t)
	start(t, r)
	quick, _ := r.Submit(ctx, "quick", nil, "")
	slow, _ := r.Submit(ctx, "slow", nil, "")
	waitState(t, r, quick.ID, StateSucceeded, 5*time.Second)
	finishedAt := time.Now()
	deadline := finishedAt.Add(6 * time.Second)
	for {
		_, err := r.Get(ctx, quick.ID)
		if errs.Is(err, errs.NotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("finished record still there %s after it finished (retention 1s): %v", time.Since(finishedAt), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if time.Since(finishedAt) < 500*time.Millisecond {
		t.Fatalf("record expired after %s, before its retention", time.Since(finishedAt))
	}
	// A running record outlives the retention.
	if j, err := r.Get(ctx, slow.ID); err != nil || j.State != StateRunning {
		t.Fatalf("running job record: %+v, %v", j, err)
	}
	close(release)
	waitState(t, r, slow.ID, StateSucceeded, 5*time.Second)
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Fatalf("%s: no panic", what)
		}
	}()
	f()
}
