package jobs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/natstest"
)

// TestTakeoverAfterWorkerConnectionDies: runner A's connection is closed abruptly mid-job. This stands in
// for a killed process (TestKilledWorkerProcess does it for real): no Stop, no Nak, no record update, and
// A's handler does not report or return while the takeover happens. Runner B finishes the job after
// AckWait, and A's late outcome does not replace B's.
func TestTakeoverAfterWorkerConnectionDies(t *testing.T) {
	t.Parallel()
	srv := server(t)
	ncA := srv.Connect()
	ctx := ctxT(t)
	a, job, releaseA := runningOnA(t, ncA, "copy-1")

	ncA.Close()
	killed := time.Now()

	b := startB(t, srv)
	j := waitState(t, b, job.ID, StateSucceeded, 2*time.Second+5*time.Second)
	if took := time.Since(killed); took < time.Second {
		t.Fatalf("taken over after %s: before the silent worker's AckWait (2s) could have run out", took)
	}
	if j.Attempts != 2 || j.Worker != "worker-b" || resultString(t, j) != "from B" {
		t.Fatalf("after takeover: %+v", j)
	}

	// A's handler returns its own result now; A cannot record it.
	releaseA()
	a.Stop()
	after, err := b.Get(ctx, job.ID)
	if err != nil || after.Revision != j.Revision || resultString(t, after) != "from B" {
		t.Fatalf("record after A's late outcome: %+v, %v", after, err)
	}
}

// runningOnA starts runner A ("worker-a") on nc with a "copy" handler that blocks, submits job id and waits
// until A runs it. release lets A's handler return "from A"; it is also called when the test ends.
func runningOnA(t *testing.T, nc *nats.Conn, id string) (a *Runner, job Job, release func()) {
	t.Helper()
	started, unblock := make(chan struct{}), make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(unblock) }) }
	t.Cleanup(release)
	a = newRunner(t, nc, Options{WorkerID: "worker-a"}, map[string]Handler{"copy": blockingHandler(started, unblock, "from A")})
	start(t, a)
	job, err := a.Submit(ctxT(t), "copy", nil, id)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	waitJob(t, a, job.ID, 5*time.Second, "running under A", func(j Job) bool { return j.State == StateRunning && j.Worker == "worker-a" })
	return a, job, release
}

// startB starts runner B ("worker-b") on a connection of its own; its "copy" handler returns "from B".
func startB(t *testing.T, srv *natstest.Server) *Runner {
	t.Helper()
	b := newRunner(t, srv.Connect(), Options{WorkerID: "worker-b"}, map[string]Handler{
		"copy": func(ctx context.Context, job Job, report func(Progress)) (any, error) { return "from B", nil },
	})
	start(t, b)
	return b
}

// TestTakeoverSurvivesAHealedPartition: A keeps running behind a network partition (its bytes are held,
// not dropped), B takes the job over and finishes it; when the partition heals, A's handler returns a
// result of its own, and A must see that it lost the job instead of overwriting B's record.
func TestTakeoverSurvivesAHealedPartition(t *testing.T) {
	t.Parallel()
	srv := server(t)
	proxy := startProxy(t, strings.TrimPrefix(srv.URL(), "nats://"))
	ncA, err := nats.Connect(proxy.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncA.Close)
	ctx := ctxT(t)
	a, job, releaseA := runningOnA(t, ncA, "copy-2")

	proxy.setPaused(true)
	b := startB(t, srv)
	j := waitState(t, b, job.ID, StateSucceeded, 7*time.Second)
	if j.Attempts != 2 || j.Worker != "worker-b" {
		t.Fatalf("after takeover: %+v", j)
	}

	releaseA() // A's handler finishes while A is still cut off...
	time.Sleep(100 * time.Millisecond)
	proxy.setPaused(false) // ...then the partition heals and A tries to record its outcome.
	a.Stop()               // returns once A's run has concluded
	after, err := b.Get(ctx, job.ID)
	if err != nil || after.Revision != j.Revision || resultString(t, after) != "from B" || after.Worker != "worker-b" {
		t.Fatalf("record after A came back: %+v, %v", after, err)
	}
	if n := workMessages(t, srv.Connect()); n != 0 {
		t.Fatalf("%d work messages left", n)
	}
}

// TestStaleWriteIsRejected: a write based on an old revision fails (compare-and-set), whoever makes it.
func TestStaleWriteIsRejected(t *testing.T) {
	t.Parallel()
	srv := server(t)
	r := newRunner(t, srv.Connect(), Options{}, map[string]Handler{
		"k": func(ctx context.Context, job Job, report func(Progress)) (any, error) { return nil, nil },
	})
	ctx := ctxT(t)
	job, err := r.Submit(ctx, "k", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	stale, rev, err := r.load(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Cancel(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	stale.State, stale.Worker = StateRunning, "late-writer"
	if err := r.store(ctx, &stale, rev); !errors.Is(err, errRevision) {
		t.Fatalf("stale write: %v, want a revision conflict", err)
	}
	if j, _ := r.Get(ctx, job.ID); j.State != StateCancelled || j.Worker != "" {
		t.Fatalf("record after the stale write: %+v", j)
	}
}

// TestKilledWorkerProcess: a real worker process is killed with SIGKILL mid-job; a runner in this process
// finishes the job.
func TestKilledWorkerProcess(t *testing.T) {
	t.Parallel()
	srv := server(t)
	survivor := newRunner(t, srv.Connect(), Options{WorkerID: "survivor"}, map[string]Handler{
		"long": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			report(Progress{Done: 10, Total: 10, Stage: "survivor"})
			return "finished by the survivor", nil
		},
	})
	ctx := ctxT(t)
	job, err := survivor.Submit(ctx, "long", nil, "killed-1")
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childURLEnv+"="+srv.URL(), childWorkerEnv+"=child-worker")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		j, err := survivor.Get(ctx, job.ID)
		if err == nil && j.State == StateRunning && j.Worker == "child-worker" && j.Progress.Stage == "child" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child worker never ran the job (record %+v, %v); its output:\n%s", j, err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	exited = true
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", cmd.ProcessState)
	}

	start(t, survivor)
	j := waitState(t, survivor, job.ID, StateSucceeded, 2*time.Second+5*time.Second)
	if j.Attempts != 2 || j.Worker != "survivor" || resultString(t, j) != "finished by the survivor" || j.Progress.Stage != "survivor" {
		t.Fatalf("after the kill: %+v", j)
	}
}

// TestStopHandsOverAtOnce: a stopping runner gives its running job to another replica right away, long
// before AckWait would.
func TestStopHandsOverAtOnce(t *testing.T) {
	t.Parallel()
	srv := server(t)
	const ackWait = 20 * time.Second
	startedA := make(chan struct{})
	causeA := make(chan error, 1)
	a := newRunner(t, srv.Connect(), Options{WorkerID: "worker-a", AckWait: ackWait}, map[string]Handler{
		"copy": func(ctx context.Context, job Job, report func(Progress)) (any, error) {
			report(Progress{Done: 3, Stage: "copying"})
			close(startedA)
			<-ctx.Done()
			causeA <- context.Cause(ctx)
			return nil, ctx.Err()
		},
	})
	ctx := ctxT(t)
	start(t, a)
	job, err := a.Submit(ctx, "copy", nil, "copy-3")
	if err != nil {
		t.Fatal(err)
	}
	<-startedA
	waitJob(t, a, job.ID, 5*time.Second, "running under A with progress", func(j Job) bool {
		return j.State == StateRunning && j.Worker == "worker-a" && j.Progress.Done == 3
	})

	b := newRunner(t, srv.Connect(), Options{WorkerID: "worker-b", AckWait: ackWait}, map[string]Handler{
		"copy": func(ctx context.Context, job Job, report func(Progress)) (any, error) { return "from B", nil },
	})
	start(t, b)

	t0 := time.Now()
	a.Stop()
	stopTook := time.Since(t0)
	j := waitState(t, b, job.ID, StateSucceeded, 5*time.Second)
	handover := time.Since(t0)
	if handover > ackWait/4 {
		t.Fatalf("handover took %s; AckWait is %s", handover, ackWait)
	}
	if stopTook > 5*time.Second {
		t.Fatalf("Stop took %s", stopTook)
	}
	if cause := <-causeA; !errors.Is(cause, errStopping) {
		t.Fatalf("A's handler context ended with %v, want the stop cause", cause)
	}
	if j.Attempts != 2 || j.Worker != "worker-b" || resultString(t, j) != "from B" || j.Error != nil {
		t.Fatalf("after handover: %+v", j)
	}
}

// TestRunnerSurvivesNATSRestart: the server restarts while the runner is idle; jobs submitted afterwards
// still run.
func TestRunnerSurvivesNATSRestart(t *testing.T) {
	t.Parallel()
	srv := server(t)
	r := newRunner(t, srv.Connect(), Options{}, map[string]Handler{
		"echo": func(ctx context.Context, job Job, report func(Progress)) (any, error) { return string(job.Params), nil },
	})
	ctx := ctxT(t)
	start(t, r)
	if _, err := r.Submit(ctx, "echo", "before", "before-1"); err != nil {
		t.Fatal(err)
	}
	waitState(t, r, "before-1", StateSucceeded, 5*time.Second)

	srv.Restart()

	for i, id := range []string{"after-1", "after-2"} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := r.Submit(ctx, "echo", i, id)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Submit after restart: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		j := waitState(t, r, id, StateSucceeded, 10*time.Second)
		if j.Attempts != 1 {
			t.Fatalf("%s: %+v", id, j)
		}
	}
	if j, err := r.Get(ctx, "before-1"); err != nil || j.State != StateSucceeded {
		t.Fatalf("record from before the restart: %+v, %v", j, err)
	}
}

// TestRunnerRecreatesALostWorkQueue: the bucket, stream and consumer vanish (a server that lost its
// store); the idle runner makes them again and jobs run.
func TestRunnerRecreatesALostWorkQueue(t *testing.T) {
	t.Parallel()
	srv := server(t)
	nc := srv.Connect()
	r := newRunner(t, nc, Options{}, map[string]Handler{
		"echo": func(ctx context.Context, job Job, report func(Progress)) (any, error) { return "ok", nil },
	})
	ctx := ctxT(t)
	start(t, r)
	js := mustJS(t, nc)
	if err := js.DeleteStream(ctx, StreamName(testFamily)); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(ctx, BucketName(testFamily)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := r.Submit(ctx, "echo", nil, "after-loss")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Submit after the queue was lost: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitState(t, r, "after-loss", StateSucceeded, 5*time.Second)
}

// TestHandlersThatIgnoreTheirContext: a handler that does not return when its context is cancelled does
// not hold up Stop or Cancel beyond StopTimeout.
func TestHandlersThatIgnoreTheirContext(t *testing.T) {
	t.Parallel()
	srv := server(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	stuck := func(started chan struct{}) Handler { return blockingHandler(started, release, "never recorded") }
	startedStop, startedCancel := make(chan struct{}), make(chan struct{})
	const stopTimeout = 500 * time.Millisecond
	a := newRunner(t, srv.Connect(), Options{WorkerID: "worker-a", AckWait: 20 * time.Second, StopTimeout: stopTimeout}, map[string]Handler{
		"handover": stuck(startedStop),
		"cancel":   stuck(startedCancel),
	})
	ctx := ctxT(t)
	start(t, a)
	if _, err := a.Submit(ctx, "cancel", nil, "stuck-cancel"); err != nil {
		t.Fatal(err)
	}
	<-startedCancel
	t0 := time.Now()
	if _, err := a.Cancel(ctx, "stuck-cancel"); err != nil {
		t.Fatal(err)
	}
	j := waitState(t, a, "stuck-cancel", StateCancelled, 5*time.Second)
	if took := time.Since(t0); took < stopTimeout {
		t.Fatalf("cancelled after %s, before StopTimeout gave the handler its chance", took)
	}
	if j.Result != nil || j.Error == nil || j.Error.Code != "cancelled" {
		t.Fatalf("cancelled record: %+v", j)
	}

	if _, err := a.Submit(ctx, "handover", nil, "stuck-stop"); err != nil {
		t.Fatal(err)
	}
	<-startedStop
	b := newRunner(t, srv.Connect(), Options{WorkerID: "worker-b", AckWait: 20 * time.Second, StopTimeout: stopTimeout}, map[string]Handler{
		"handover": func(ctx context.Context, job Job, report func(Progress)) (any, error) { return "from B", nil },
		"cancel":   func(ctx context.Context, job Job, report func(Progress)) (any, error) { return nil, nil },
	})
	start(t, b)
	t0 = time.Now()
	a.Stop()
	if took := time.Since(t0); took > stopTimeout+3*time.Second {
		t.Fatalf("Stop took %s with a stuck handler", took)
	}
	j = waitState(t, b, "stuck-stop", StateSucceeded, 5*time.Second)
	if j.Worker != "worker-b" || j.Attempts != 2 {
		t.Fatalf("after handover: %+v", j)
	}
}
