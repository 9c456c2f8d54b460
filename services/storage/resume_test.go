package storage_test

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"troveng.dev/services/storage"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/storageclient"
)

// gateWriter takes bytes until it holds `after` of them, then blocks every write until opened: the
// reader on the other end of a get is still busy while the test restarts the service under it.
type gateWriter struct {
	buf     bytes.Buffer
	after   int
	reached chan struct{}
	open    chan struct{}
	once    sync.Once
}

func newGateWriter(after int) *gateWriter {
	return &gateWriter{after: after, reached: make(chan struct{}), open: make(chan struct{})}
}

func (g *gateWriter) Write(p []byte) (int, error) {
	if g.buf.Len() >= g.after {
		g.once.Do(func() { close(g.reached) })
		<-g.open
	}
	return g.buf.Write(p)
}

// restartService stops the stack's storage service and starts a new one on the same fs root and NATS,
// as an operator's restart (or a crash and a supervisor) does.
func restartService(t *testing.T, st *stack) {
	t.Helper()
	if err := st.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // a moment with no storage service at all
	svc, err := storage.Start(context.Background(), st.nc, st.tel, storage.Config{
		Strategy: "fs", Options: map[string]string{"root": st.root}, Stream: testStream,
		Jobs: jobs.Options{AckWait: 2 * time.Second},
	})
	if err != nil {
		t.Fatalf("restart storage: %v", err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	st.svc = svc
}

type getResult struct {
	resumes int
	err     error
	offsets []int64
}

func getResumable(ctx context.Context, st *stack, key string, w io.Writer, within time.Duration) <-chan getResult {
	done := make(chan getResult, 1)
	go func() {
		var offsets []int64
		_, n, err := st.client.GetResumable(ctx, key, w, storageclient.Resume{Within: within,
			OnResume: func(off int64, _ error) { offsets = append(offsets, off) }})
		done <- getResult{resumes: n, err: err, offsets: offsets}
	}()
	return done
}

func waitGet(t *testing.T, done <-chan getResult) getResult {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(60 * time.Second):
		t.Fatal("the get did not end")
		return getResult{}
	}
}

// TestGetResumesAcrossServiceRestart: the storage service restarts in the middle of a get; the client
// gets the rest from the first byte it had not taken, and the bytes are the object's, exactly.
func TestGetResumesAcrossServiceRestart(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx := ctxT(t)
	data := randomBytes(8<<20, 41)
	if _, err := st.client.Put(ctx, "resume/whole", bytes.NewReader(data), nil); err != nil {
		t.Fatal(err)
	}
	w := newGateWriter(1 << 20)
	done := getResumable(ctx, st, "resume/whole", w, 30*time.Second)
	<-w.reached
	restartService(t, st)
	close(w.open)
	r := waitGet(t, done)
	if r.err != nil {
		t.Fatalf("get across the restart: %v", r.err)
	}
	if r.resumes < 1 || len(r.offsets) < 1 || r.offsets[0] < 1<<20 {
		t.Fatalf("want a resume from at least byte %d, got %d resumes at %v", 1<<20, r.resumes, r.offsets)
	}
	if !bytes.Equal(w.buf.Bytes(), data) {
		t.Fatalf("resumed get delivered %d bytes (sha256 %s), want %d (sha256 %s)", w.buf.Len(), sum(w.buf.Bytes()), len(data), sum(data))
	}
	t.Logf("resumed %d time(s) at %v", r.resumes, r.offsets)
}

// TestGetResumeRefusesReplacedObject: the object was replaced while the service was away; resuming would
// splice two objects, so the get ends conflict.
func TestGetResumeRefusesReplacedObject(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx := ctxT(t)
	if _, err := st.client.Put(ctx, "resume/replaced", bytes.NewReader(randomBytes(8<<20, 42)), nil); err != nil {
		t.Fatal(err)
	}
	w := newGateWriter(1 << 20)
	done := getResumable(ctx, st, "resume/replaced", w, 30*time.Second)
	<-w.reached
	restartService(t, st)
	if _, err := st.client.Put(ctx, "resume/replaced", bytes.NewReader(randomBytes(8<<20, 43)), nil); err != nil {
		t.Fatal(err)
	}
	close(w.open)
	r := waitGet(t, done)
	wantCode(t, r.err, errs.Conflict)
	t.Logf("get: %v", r.err)
}

// TestGetResumeGivesUp: the service does not come back; the get ends unavailable once the resume window
// passed, saying where it stopped.
func TestGetResumeGivesUp(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx := ctxT(t)
	if _, err := st.client.Put(ctx, "resume/gone", bytes.NewReader(randomBytes(8<<20, 44)), nil); err != nil {
		t.Fatal(err)
	}
	w := newGateWriter(1 << 20)
	done := getResumable(ctx, st, "resume/gone", w, time.Second)
	<-w.reached
	if err := st.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	close(w.open)
	r := waitGet(t, done)
	wantCode(t, r.err, errs.Unavailable)
	if took := time.Since(start); took > 15*time.Second {
		t.Fatalf("gave up after %s, want about the 1s window", took)
	}
	t.Logf("get: %v", r.err)
}

// TestGetResumableNotStarted: a get that never started (no such object) is not retried.
func TestGetResumableNotStarted(t *testing.T) {
	st := startStack(t, "fs", nil)
	var buf bytes.Buffer
	_, n, err := st.client.GetResumable(ctxT(t), "resume/missing", &buf, storageclient.Resume{})
	wantCode(t, err, errs.NotFound)
	if n != 0 {
		t.Fatalf("resumed %d times a get that never started", n)
	}
}
