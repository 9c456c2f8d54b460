package storage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/ratelimit"
	"troveng.dev/shared/storageclient"
)

// signalReader reads r and closes reached once `after` bytes went through.
type signalReader struct {
	r       io.Reader
	n       atomic.Int64
	after   int64
	reached chan struct{}
	fired   bool
}

func (s *signalReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if s.n.Add(int64(n)) >= s.after && !s.fired {
		s.fired = true
		close(s.reached)
	}
	return n, err
}

type putResult struct {
	resumes int
	offsets []int64
	err     error
}

func putStaged(ctx context.Context, st *stack, key string, r io.Reader, opt storageclient.Staged) <-chan putResult {
	done := make(chan putResult, 1)
	go func() {
		var offsets []int64
		opt.OnResume = func(off int64, _ error) { offsets = append(offsets, off) }
		_, n, err := st.client.PutStaged(ctx, key, r, map[string]string{"kind": "staged"}, opt)
		done <- putResult{resumes: n, offsets: offsets, err: err}
	}()
	return done
}

func waitPut(t *testing.T, done <-chan putResult) putResult {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(60 * time.Second):
		t.Fatal("the put did not end")
		return putResult{}
	}
}

// tmpEntries lists the fs store's tmp/ (puts in progress and staged uploads).
func tmpEntries(t *testing.T, st *stack) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(st.root, "tmp"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// TestPutStagedResumesAcrossServiceRestart: the storage service restarts while a staged put streams (its
// source rate-limited, so segments are moving when it stops); the put continues from what storage holds,
// reads its source once, and the stored object is the source's bytes exactly.
func TestPutStagedResumesAcrossServiceRestart(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx := ctxT(t)
	data := randomBytes(24<<20, 51)
	src := &signalReader{r: ratelimit.Reader(ctx, bytes.NewReader(data), ratelimit.New(16<<20)), after: 8 << 20, reached: make(chan struct{})}
	done := putStaged(ctx, st, "staged/whole", src, storageclient.Staged{SegmentSize: 2 << 20, Within: 30 * time.Second})
	<-src.reached
	restartService(t, st)
	r := waitPut(t, done)
	if r.err != nil {
		t.Fatalf("put across the restart: %v", r.err)
	}
	if r.resumes < 1 {
		t.Fatalf("want at least one resume, got %d", r.resumes)
	}
	var got bytes.Buffer
	if _, err := st.client.Get(ctx, "staged/whole", 0, 0, &got, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("stored %d bytes (sha256 %s), want %d (sha256 %s)", got.Len(), sum(got.Bytes()), len(data), sum(data))
	}
	obj, err := st.client.Stat(ctx, "staged/whole")
	if err != nil || obj.SHA256 != sum(data) || obj.Metadata["kind"] != "staged" {
		t.Fatalf("stat: %+v %v", obj, err)
	}
	if left := tmpEntries(t, st); len(left) != 0 {
		t.Fatalf("the completed put left %v", left)
	}
	t.Logf("resumed %d time(s) at %v", r.resumes, r.offsets)
}

// TestPutStagedWaitsForStorage: storage is down between two segments for longer than one retry; the put
// waits, resumes once it is back, and completes.
func TestPutStagedWaitsForStorage(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx := ctxT(t)
	data := randomBytes(6<<20, 52)
	pr, pw := io.Pipe()
	done := putStaged(ctx, st, "staged/waits", pr, storageclient.Staged{SegmentSize: 1 << 20, Within: 30 * time.Second})
	if _, err := pw.Write(data[:3<<20]); err != nil {
		t.Fatal(err)
	}
	if err := st.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = pw.Write(data[3<<20:])
		_ = pw.Close()
	}()
	time.Sleep(1500 * time.Millisecond)
	restartService(t, st)
	r := waitPut(t, done)
	if r.err != nil {
		t.Fatalf("put: %v", r.err)
	}
	if r.resumes < 1 {
		t.Fatalf("want a resume after the outage, got %d", r.resumes)
	}
	obj, err := st.client.Stat(ctx, "staged/waits")
	if err != nil || obj.Size != int64(len(data)) || obj.SHA256 != sum(data) {
		t.Fatalf("stat: %+v %v", obj, err)
	}
}

// TestPutStagedGivesUp: storage does not come back within the window: unavailable, nothing visible.
func TestPutStagedGivesUp(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx := ctxT(t)
	pr, pw := io.Pipe()
	done := putStaged(ctx, st, "staged/gone", pr, storageclient.Staged{SegmentSize: 1 << 20, Within: time.Second})
	if _, err := pw.Write(randomBytes(2<<20, 53)); err != nil {
		t.Fatal(err)
	}
	if err := st.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = pw.Write(randomBytes(2<<20, 54)); _ = pw.Close() }()
	start := time.Now()
	r := waitPut(t, done)
	wantCode(t, r.err, errs.Unavailable)
	if took := time.Since(start); took > 15*time.Second {
		t.Fatalf("gave up after %s, want about the 1s window", took)
	}
	restartService(t, st)
	_, err := st.client.Stat(ctx, "staged/gone")
	wantCode(t, err, errs.NotFound)
	t.Logf("put: %v", r.err)
}

// TestPutStagedSourceFails: the source breaks off or the caller cancels: a coded error, nothing visible,
// the staged upload aborted (tmp/ empty).
func TestPutStagedSourceFails(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx := ctxT(t)
	pr, pw := io.Pipe()
	done := putStaged(ctx, st, "staged/broken", pr, storageclient.Staged{SegmentSize: 1 << 20})
	if _, err := pw.Write(randomBytes(3<<20, 55)); err != nil {
		t.Fatal(err)
	}
	pw.CloseWithError(errors.New("the tool died"))
	r := waitPut(t, done)
	wantCode(t, r.err, errs.BadRequest)
	_, err := st.client.Stat(ctx, "staged/broken")
	wantCode(t, err, errs.NotFound)
	if left := tmpEntries(t, st); len(left) != 0 {
		t.Fatalf("a failed staged put left %v", left)
	}

	cctx, cancel := context.WithCancel(ctx)
	pr, pw = io.Pipe()
	done = putStaged(cctx, st, "staged/cancelled", pr, storageclient.Staged{SegmentSize: 1 << 20})
	if _, err := pw.Write(randomBytes(3<<20, 56)); err != nil {
		t.Fatal(err)
	}
	cancel()
	r = waitPut(t, done)
	wantCode(t, r.err, errs.Cancelled)
	_ = pw.Close()
	if left := tmpEntries(t, st); len(left) != 0 {
		t.Fatalf("a cancelled staged put left %v", left)
	}
}

// TestPutStagedFallsBack: a strategy without staged uploads (nats) gets a plain put.
func TestPutStagedFallsBack(t *testing.T) {
	st := startStack(t, "nats", map[string]string{"bucket": "staged-fallback"})
	ctx := ctxT(t)
	data := randomBytes(3<<20, 57)
	obj, n, err := st.client.PutStaged(ctx, "staged/fallback", bytes.NewReader(data), nil, storageclient.Staged{})
	if err != nil || n != 0 || obj.SHA256 != sum(data) {
		t.Fatalf("put: %+v, %d resumes, %v", obj, n, err)
	}
	// And a purge there drops nothing, without an error.
	if n, err := st.client.PurgeStaged(ctx, "staged/"); err != nil || n != 0 {
		t.Fatalf("purge: %d %v", n, err)
	}
}

// TestPurgeStaged: purging a prefix drops the staged uploads under it, not others, and the writer of a
// purged upload ends not_found.
func TestPurgeStaged(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx := ctxT(t)
	pr, pw := io.Pipe()
	done := putStaged(ctx, st, "backups/b1/data", pr, storageclient.Staged{SegmentSize: 1 << 20, Within: 5 * time.Second})
	if _, err := pw.Write(randomBytes(2<<20, 58)); err != nil {
		t.Fatal(err)
	}
	// Wait for the first segment to be committed (a stage file exists), then purge another prefix and ours.
	deadline := time.Now().Add(10 * time.Second)
	for len(tmpEntries(t, st)) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n, err := st.client.PurgeStaged(ctx, "backups/b2/"); err != nil || n != 0 {
		t.Fatalf("purge of another prefix: %d %v", n, err)
	}
	if n, err := st.client.PurgeStaged(ctx, "backups/b1/"); err != nil || n != 1 {
		t.Fatalf("purge: %d %v, want 1", n, err)
	}
	go func() { _, _ = pw.Write(randomBytes(2<<20, 59)); _ = pw.Close() }()
	r := waitPut(t, done)
	wantCode(t, r.err, errs.NotFound)
	if left := tmpEntries(t, st); len(left) != 0 {
		t.Fatalf("purged upload left %v", left)
	}
	_, err := st.client.PurgeStaged(ctx, "../")
	wantCode(t, err, errs.BadRequest)
}
