package storage_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"troveng.dev/services/storage"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/natstest"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/s3test"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/telemetry"
	"troveng.dev/shared/telemetry/telemetrytest"
)

// stack is one storage service on a real embedded NATS server, and a client of it.
type stack struct {
	ns     *natstest.Server
	nc     *nats.Conn // the service's connection
	cli    *nats.Conn // the client's connection
	svc    *storage.Service
	client *storageclient.Client
	root   string // fs root when the strategy is fs
	tel    *telemetry.Telemetry
	spans  *tracetest.InMemoryExporter
}

var testStream = stream.Options{ChunkSize: 64 << 10, Window: 8, IdleTimeout: 2 * time.Second}

func startStack(t *testing.T, strategy string, opts map[string]string) *stack {
	t.Helper()
	st := &stack{ns: natstest.Start(t)}
	st.nc = st.ns.Connect()
	st.cli = st.ns.Connect()
	if opts == nil {
		opts = map[string]string{}
	}
	if strategy == "fs" && opts["root"] == "" {
		opts["root"] = t.TempDir()
	}
	st.root = opts["root"]
	tel, spans := telemetrytest.New(t)
	st.tel, st.spans = tel, spans
	svc, err := storage.Start(context.Background(), st.nc, tel, storage.Config{
		Strategy: strategy, Options: opts, Stream: testStream,
		Jobs: jobs.Options{AckWait: 2 * time.Second},
	})
	if err != nil {
		t.Fatalf("start storage (%s): %v", strategy, err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	st.svc = svc
	st.client = storageclient.New(st.cli, testStream)
	return st
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^0x5555))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func wantCode(t *testing.T, err error, code errs.Code) {
	t.Helper()
	if errs.CodeOf(err) != code {
		t.Fatalf("want error code %s, got %v", code, err)
	}
}

func waitJob(t *testing.T, c *storageclient.Client, id string) jobs.Job {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		j, err := c.Job(ctxT(t), id)
		if err != nil {
			t.Fatalf("job status: %v", err)
		}
		if j.State.Final() {
			return j
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("job %s did not finish", id)
	return jobs.Job{}
}

// TestServiceRoundTrip runs the whole surface of the service on every strategy.
func TestServiceRoundTrip(t *testing.T) {
	strategies := map[string]func(t *testing.T) map[string]string{
		"fs":   func(t *testing.T) map[string]string { return nil },
		"nats": func(t *testing.T) map[string]string { return map[string]string{"bucket": "svc-test"} },
		"s3": func(t *testing.T) map[string]string {
			s3 := s3test.Start(t)
			return map[string]string{"endpoint": s3.Endpoint(), "region": s3.Region(), "bucket": s3.Bucket(),
				"access_key": s3.AccessKey(), "secret_key": s3.SecretKey(), "path_style": "true", "part_size": "5MiB", "concurrency": "3"}
		},
	}
	for name, opts := range strategies {
		t.Run(name, func(t *testing.T) {
			st := startStack(t, name, opts(t))
			ctx := ctxT(t)
			data := randomBytes(3<<20+17, 1)
			obj, err := st.client.Put(ctx, "db1/full/data.bin", bytes.NewReader(data), map[string]string{"engine": "mariadb"})
			if err != nil {
				t.Fatalf("put: %v", err)
			}
			if obj.Size != int64(len(data)) || obj.SHA256 != sum(data) || obj.Metadata["engine"] != "mariadb" {
				t.Fatalf("put returned %+v", obj)
			}
			var got bytes.Buffer
			rep, err := st.client.Get(ctx, "db1/full/data.bin", 0, 0, &got, nil)
			if err != nil || !bytes.Equal(got.Bytes(), data) || rep.Length != int64(len(data)) {
				t.Fatalf("get: %v (%d bytes, equal=%v)", err, got.Len(), bytes.Equal(got.Bytes(), data))
			}
			got.Reset()
			if _, err := st.client.Get(ctx, "db1/full/data.bin", 1000, 5000, &got, nil); err != nil || !bytes.Equal(got.Bytes(), data[1000:6000]) {
				t.Fatalf("range get: %v", err)
			}
			_, err = st.client.Get(ctx, "db1/full/data.bin", int64(len(data))+1, 0, io.Discard, nil)
			wantCode(t, err, errs.BadRequest)

			for i := range 5 {
				if _, err := st.client.Put(ctx, "db1/inc/"+string(rune('a'+i)), strings.NewReader("x"), nil); err != nil {
					t.Fatal(err)
				}
			}
			page, err := st.client.List(ctx, storagev1.ListRequest{Prefix: "db1/inc/", Limit: 2})
			if err != nil || len(page.Objects) != 2 || page.Next == "" {
				t.Fatalf("list page: %+v %v", page, err)
			}
			var all []string
			if err := st.client.ListAll(ctx, "db1/", func(o storagev1.Object) error { all = append(all, o.Key); return nil }); err != nil {
				t.Fatal(err)
			}
			if len(all) != 6 {
				t.Fatalf("list all: %v", all)
			}

			j, err := st.client.Verify(ctx, storagev1.VerifyRequest{Key: "db1/full/data.bin"})
			if err != nil {
				t.Fatal(err)
			}
			if j = waitJob(t, st.client, j.ID); j.State != jobs.StateSucceeded {
				t.Fatalf("verify job: %+v", j)
			}
			j, err = st.client.Copy(ctx, storagev1.CopyRequest{Source: "db1/full/data.bin", Destination: "db2/full/data.bin"})
			if err != nil {
				t.Fatal(err)
			}
			if j = waitJob(t, st.client, j.ID); j.State != jobs.StateSucceeded {
				t.Fatalf("copy job: %+v", j)
			}
			cp, err := st.client.Stat(ctx, "db2/full/data.bin")
			if err != nil || cp.SHA256 != obj.SHA256 || cp.Metadata["engine"] != "mariadb" {
				t.Fatalf("copied object: %+v %v", cp, err)
			}

			if err := st.client.Delete(ctx, "db2/full/data.bin"); err != nil {
				t.Fatal(err)
			}
			_, err = st.client.Stat(ctx, "db2/full/data.bin")
			wantCode(t, err, errs.NotFound)
			wantCode(t, st.client.Delete(ctx, "db2/full/data.bin"), errs.NotFound)
			_, err = st.client.Get(ctx, "nope", 0, 0, io.Discard, nil)
			wantCode(t, err, errs.NotFound)

			// An empty object is an object.
			if o, err := st.client.Put(ctx, "empty", bytes.NewReader(nil), nil); err != nil || o.Size != 0 {
				t.Fatalf("empty put: %+v %v", o, err)
			}
			got.Reset()
			if _, err := st.client.Get(ctx, "empty", 0, 0, &got, nil); err != nil || got.Len() != 0 {
				t.Fatalf("empty get: %v", err)
			}
		})
	}
}

// TestBadInput sends malformed and hostile requests straight over NATS: each gets a coded error and the
// service keeps serving.
func TestBadInput(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx := ctxT(t)
	raw := func(endpoint string, body []byte) error {
		msg := nats.NewMsg(storagev1.Subject(endpoint))
		msg.Data = body
		_, err := rpc.CallMsg(ctx, st.cli, msg)
		return err
	}
	wantCode(t, raw(storagev1.EndpointStat, []byte(`{"key":`)), errs.BadRequest)
	wantCode(t, raw(storagev1.EndpointPut, []byte(`[1,2]`)), errs.BadRequest)
	wantCode(t, raw(storagev1.EndpointList, []byte(`{"limit":"ten"}`)), errs.BadRequest)

	call := func(endpoint string, req any) error {
		return rpc.Call(ctx, st.cli, storagev1.Subject(endpoint), req, nil)
	}
	badKeys := []string{"", "../etc/passwd", "a/../b", "/abs", "a//b", "a/./b", "tail/", "ctl\x01char", "nul\x00", "back\\slash", strings.Repeat("k", 1025)}
	for _, k := range badKeys {
		wantCode(t, call(storagev1.EndpointStat, storagev1.KeyRequest{Key: k}), errs.BadRequest)
		wantCode(t, call(storagev1.EndpointPut, storagev1.PutRequest{Key: k}), errs.BadRequest)
		wantCode(t, call(storagev1.EndpointDelete, storagev1.KeyRequest{Key: k}), errs.BadRequest)
		wantCode(t, call(storagev1.EndpointGet, storagev1.GetRequest{Key: k, Stream: "_INBOX.x"}), errs.BadRequest)
	}
	badIDs := []string{"a.b", "*", ">", "a/b", "a b", "-lead", strings.Repeat("j", 65), ""}
	for _, id := range badIDs {
		wantCode(t, call(storagev1.EndpointJobStatus, storagev1.JobRequest{ID: id}), errs.BadRequest)
		wantCode(t, call(storagev1.EndpointJobCancel, storagev1.JobRequest{ID: id}), errs.BadRequest)
		if id != "" {
			wantCode(t, call(storagev1.EndpointVerify, storagev1.VerifyRequest{Key: "k", JobID: id}), errs.BadRequest)
		}
	}
	wantCode(t, call(storagev1.EndpointJobStatus, storagev1.JobRequest{ID: "nosuchjob"}), errs.NotFound)
	// A get may only stream to an inbox: never onto another service's subjects, never to a wildcard.
	for _, s := range []string{"", "trove.storage.v1.put", "_INBOX.*", "_INBOX.>", "_INBOX.a b"} {
		wantCode(t, call(storagev1.EndpointGet, storagev1.GetRequest{Key: "k", Stream: s}), errs.BadRequest)
	}
	wantCode(t, call(storagev1.EndpointGet, storagev1.GetRequest{Key: "k", Offset: -1, Stream: "_INBOX.x"}), errs.BadRequest)
	wantCode(t, call(storagev1.EndpointList, storagev1.ListRequest{Limit: 5000}), errs.BadRequest)
	wantCode(t, call(storagev1.EndpointList, storagev1.ListRequest{Prefix: "../"}), errs.BadRequest)
	wantCode(t, call(storagev1.EndpointPut, storagev1.PutRequest{Key: "k", Metadata: map[string]string{"bad key": "v"}}), errs.BadRequest)
	wantCode(t, call(storagev1.EndpointCopy, storagev1.CopyRequest{Source: "a", Destination: "a"}), errs.BadRequest)
	wantCode(t, call(storagev1.EndpointCopy, storagev1.CopyRequest{Source: "missing", Destination: "b"}), errs.NotFound)

	// Nothing was written by any of it, and the service still serves.
	rep, err := st.client.List(ctx, storagev1.ListRequest{})
	if err != nil || len(rep.Objects) != 0 {
		t.Fatalf("after bad input: %+v %v", rep, err)
	}
	if _, err := st.client.Put(ctx, "ok", strings.NewReader("fine"), nil); err != nil {
		t.Fatalf("service stopped serving: %v", err)
	}
}

func TestUnknownStrategy(t *testing.T) {
	ns := natstest.Start(t)
	_, err := storage.Start(context.Background(), ns.Connect(), nil, storage.Config{Strategy: "tape"})
	wantCode(t, err, errs.BadRequest)
	if !strings.Contains(err.Error(), "fs") {
		t.Fatalf("error should list the known strategies: %v", err)
	}
}

// failingReader stands in for a client whose source breaks midway (a real part cannot be told to fail at
// an exact byte).
type failingReader struct {
	r     io.Reader
	after int
	n     int
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n >= f.after {
		return 0, errors.New("disk read error")
	}
	if len(p) > f.after-f.n {
		p = p[:f.after-f.n]
	}
	n, err := f.r.Read(p)
	f.n += n
	return n, err
}

// assertNothingVisible checks that key is not stored and the fs store holds no leftovers.
func assertNothingVisible(t *testing.T, st *stack, key string) {
	t.Helper()
	_, err := st.client.Stat(ctxT(t), key)
	wantCode(t, err, errs.NotFound)
	if st.root != "" {
		// fs keeps puts in progress under tmp/: a failed put must leave nothing there.
		deadline := time.Now().Add(5 * time.Second)
		for {
			entries, _ := os.ReadDir(filepath.Join(st.root, "tmp"))
			if len(entries) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("leftover temporary files: %v", entries)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func TestFaults(t *testing.T) {
	t.Run("sender dies mid-put", func(t *testing.T) {
		st := startStack(t, "fs", nil)
		data := randomBytes(2<<20, 2)
		_, err := st.client.Put(ctxT(t), "broken", &failingReader{r: bytes.NewReader(data), after: 1 << 20}, nil)
		if err == nil {
			t.Fatal("put of a failing source succeeded")
		}
		assertNothingVisible(t, st, "broken")
		if _, err := st.client.Put(ctxT(t), "broken", bytes.NewReader(data), nil); err != nil {
			t.Fatalf("next put: %v", err)
		}
	})
	t.Run("client connection lost mid-put", func(t *testing.T) {
		st := startStack(t, "fs", nil)
		ctx := ctxT(t)
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			_, err := st.client.Put(ctx, "cut", pr, nil)
			done <- err
		}()
		_, _ = pw.Write(randomBytes(512<<10, 3))
		st.cli.Close() // the sending process is gone: no trailer, no more pings
		_ = pw.CloseWithError(errors.New("gone"))
		if err := <-done; err == nil {
			t.Fatal("put whose connection closed mid-stream reported success")
		}
		// The service notices the silence within its idle timeout and leaves nothing behind.
		time.Sleep(testStream.IdleTimeout + time.Second)
		c2 := storageclient.New(st.ns.Connect(), testStream)
		_, err := c2.Stat(ctx, "cut")
		wantCode(t, err, errs.NotFound)
		st.client = c2
		assertNothingVisible(t, st, "cut")
		if _, err := c2.Put(ctx, "cut", strings.NewReader("again"), nil); err != nil {
			t.Fatalf("next put: %v", err)
		}
	})
	t.Run("receiver dies mid-get", func(t *testing.T) {
		st := startStack(t, "fs", nil)
		ctx := ctxT(t)
		data := randomBytes(4<<20, 4)
		if _, err := st.client.Put(ctx, "big", bytes.NewReader(data), nil); err != nil {
			t.Fatal(err)
		}
		w := &stopWriter{after: 256 << 10}
		_, err := st.client.Get(ctx, "big", 0, 0, w, nil)
		if err == nil {
			t.Fatal("get into a failing writer succeeded")
		}
		var got bytes.Buffer
		if _, err := st.client.Get(ctx, "big", 0, 0, &got, nil); err != nil || !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("next get: %v", err)
		}
	})
	t.Run("NATS restarts mid-put", func(t *testing.T) {
		st := startStack(t, "fs", nil)
		ctx := ctxT(t)
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			_, err := st.client.Put(ctx, "restart", pr, nil)
			done <- err
		}()
		go func() {
			chunk := randomBytes(64<<10, 5)
			for {
				if _, err := pw.Write(chunk); err != nil {
					return
				}
			}
		}()
		time.Sleep(300 * time.Millisecond)
		st.ns.Restart()
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("put across a NATS restart reported success")
			}
			t.Logf("put across restart: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("put hung across a NATS restart")
		}
		_ = pw.CloseWithError(errors.New("stop"))
		waitConnected(t, st.nc)
		waitConnected(t, st.cli)
		time.Sleep(testStream.IdleTimeout + time.Second)
		assertNothingVisible(t, st, "restart")
		if _, err := st.client.Put(ctx, "restart", strings.NewReader("after"), nil); err != nil {
			t.Fatalf("next put: %v", err)
		}
	})
	t.Run("S3 server stopped mid-upload", func(t *testing.T) {
		s3 := s3test.Start(t)
		st := startStack(t, "s3", map[string]string{"endpoint": s3.Endpoint(), "region": s3.Region(), "bucket": s3.Bucket(),
			"access_key": s3.AccessKey(), "secret_key": s3.SecretKey(), "path_style": "true", "part_size": "5MiB", "concurrency": "2"})
		ctx := ctxT(t)
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			_, err := st.client.Put(ctx, "s3cut", pr, nil)
			done <- err
		}()
		// Half the bytes go before S3 stops (parts are uploading), the rest only after: the put cannot
		// finish while S3 is still up, however fast this machine is.
		stopped := make(chan struct{})
		go func() {
			chunk := randomBytes(1<<20, 6)
			for i := 0; i < 64; i++ {
				if i == 32 {
					<-stopped
				}
				if _, err := pw.Write(chunk); err != nil {
					return
				}
			}
			_ = pw.Close()
		}()
		time.Sleep(500 * time.Millisecond)
		s3.Stop()
		close(stopped)
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("put with the S3 server gone reported success")
			}
			t.Logf("put with S3 gone: %v", err)
		case <-time.After(25 * time.Second):
			t.Fatal("put hung with the S3 server gone")
		}
		_ = pw.CloseWithError(errors.New("stop"))
		s3.Restart()
		_, err := st.client.Stat(ctx, "s3cut")
		wantCode(t, err, errs.NotFound)
		if _, err := st.client.Put(ctx, "s3cut", bytes.NewReader(randomBytes(6<<20, 7)), nil); err != nil {
			t.Fatalf("next put: %v", err)
		}
	})
}

type stopWriter struct{ after, n int }

func (w *stopWriter) Write(p []byte) (int, error) {
	if w.n+len(p) > w.after {
		return 0, errors.New("client disk full")
	}
	w.n += len(p)
	return len(p), nil
}

func waitConnected(t *testing.T, nc *nats.Conn) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("client did not reconnect")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCorruptionInStorage flips one byte of a stored object behind the service's back: a get ends in
// corrupt instead of delivering wrong bytes, and a verify job fails with corrupt.
func TestCorruptionInStorage(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx := ctxT(t)
	data := randomBytes(1<<20, 8)
	if _, err := st.client.Put(ctx, "victim", bytes.NewReader(data), nil); err != nil {
		t.Fatal(err)
	}
	var file string
	_ = filepath.WalkDir(filepath.Join(st.root, "objects"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			file = p
		}
		return nil
	})
	if file == "" {
		t.Fatal("object file not found under the fs root")
	}
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	_, _ = f.ReadAt(b, 4242)
	b[0] ^= 0xff
	_, _ = f.WriteAt(b, 4242)
	_ = f.Close()

	_, err = st.client.Get(ctx, "victim", 0, 0, io.Discard, nil)
	wantCode(t, err, errs.Corrupt)
	j, err := st.client.Verify(ctx, storagev1.VerifyRequest{Key: "victim"})
	if err != nil {
		t.Fatal(err)
	}
	j = waitJob(t, st.client, j.ID)
	if j.State != jobs.StateFailed || j.Error == nil || j.Error.Code != errs.Corrupt {
		t.Fatalf("verify of a corrupt object: %+v", j)
	}
}

// TestBusy fills every transfer slot of a replica; the next request is refused with busy at once.
func TestBusy(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect()
	svc, err := storage.Start(context.Background(), nc, nil, storage.Config{Strategy: "fs", Options: map[string]string{"root": t.TempDir()}, Stream: testStream, MaxStreams: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	c := storageclient.New(ns.Connect(), testStream)
	ctx := ctxT(t)
	pr, pw := io.Pipe()
	go func() { _, _ = c.Put(ctx, "slow", pr, nil) }()
	_, _ = pw.Write([]byte("first bytes")) // the first put now holds the only slot
	_, err = c.Put(ctx, "second", strings.NewReader("x"), nil)
	wantCode(t, err, errs.Busy)
	_ = pw.Close()
}

// TestTraceAndMetrics: one trace spans the client's call, the service's endpoint and the transfer that
// outlives the request; the bytes are counted in the service's metrics.
func TestTraceAndMetrics(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx, root := telemetrytest.Provider().Tracer("test").Start(ctxT(t), "operator")
	if _, err := st.client.Put(ctx, "traced", strings.NewReader("hello trace"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := st.client.Get(ctx, "traced", 0, 0, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	root.End()
	id := root.SpanContext().TraceID()
	deadline := time.Now().Add(5 * time.Second)
	for {
		spans := telemetrytest.SpansOfTrace(st.spans, id)
		_, put := telemetrytest.SpanNamed(spans, "storage.put")
		_, write := telemetrytest.SpanNamed(spans, "storage.put.write")
		_, get := telemetrytest.SpanNamed(spans, "storage.get")
		_, read := telemetrytest.SpanNamed(spans, "storage.get.read")
		if put && write && get && read {
			break
		}
		if time.Now().After(deadline) {
			var names []string
			for _, s := range spans {
				names = append(names, s.Name)
			}
			t.Fatalf("trace %s lacks a hop; spans: %v", id, names)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rec := httptest.NewRecorder()
	st.tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{`trove_bytes_total{direction="in",op="put"`, `trove_requests_total{code="ok",endpoint="storage.put"`, `trove_requests_total{code="ok",endpoint="storage.put.transfer"`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepTrove(body))
		}
	}
}

func grepTrove(body string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "trove_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestAdminRoutes: reads are open, deletes and cancels need the bearer token, bad input is a coded problem.
func TestAdminRoutes(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx := ctxT(t)
	if _, err := st.client.Put(ctx, "adm/one", strings.NewReader("1"), nil); err != nil {
		t.Fatal(err)
	}
	adm := st.svc.Admin("127.0.0.1:0", "s3cret-token", st.nc, st.tel)
	addr, err := adm.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = adm.Shutdown(context.Background()) })
	base := "http://" + addr
	do := func(method, path, token string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, method, base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do("GET", "/v1/objects?prefix=adm/", ""); code != 200 || !strings.Contains(body, `"adm/one"`) {
		t.Fatalf("list: %d %s", code, body)
	}
	if code, body := do("GET", "/v1/object?key=../x", ""); code != 400 || !strings.Contains(body, `"code":"bad_request"`) {
		t.Fatalf("bad key: %d %s", code, body)
	}
	if code, body := do("GET", "/v1/info", ""); code != 200 || !strings.Contains(body, `"strategy":"fs"`) {
		t.Fatalf("info: %d %s", code, body)
	}
	if code, _ := do("DELETE", "/v1/object?key=adm/one", ""); code != 401 {
		t.Fatalf("delete without token: %d", code)
	}
	if code, _ := do("DELETE", "/v1/object?key=adm/one", "wrong"); code != 401 {
		t.Fatalf("delete with a wrong token: %d", code)
	}
	if _, err := st.client.Stat(ctx, "adm/one"); err != nil {
		t.Fatalf("refused delete removed the object: %v", err)
	}
	if code, body := do("DELETE", "/v1/object?key=adm/one", "s3cret-token"); code != 200 {
		t.Fatalf("delete with the token: %d %s", code, body)
	}
	if code, body := do("POST", "/v1/jobs/nosuchjob/cancel", "s3cret-token"); code != 404 || !strings.Contains(body, "not_found") {
		t.Fatalf("cancel of an unknown job: %d %s", code, body)
	}
	if code, _ := do("GET", "/readyz", ""); code != 200 {
		t.Fatalf("readyz: %d", code)
	}
}

// TestStopEndsTransfersUnavailable: a put in flight when the service stops fails with unavailable (retry
// elsewhere or later), not cancelled, which a client would take for its own cancellation; nothing is stored.
func TestStopEndsTransfersUnavailable(t *testing.T) {
	st := startStack(t, "fs", nil)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	r := &slowReader{ctx: ctx, left: 1 << 30, started: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := st.client.Put(ctx, "stopped/mid-put", r, nil)
		done <- err
	}()
	<-r.started
	time.Sleep(200 * time.Millisecond) // bytes are moving
	if err := st.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		wantCode(t, err, errs.Unavailable)
		t.Logf("put: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the put did not end when the service stopped")
	}
	if es, _ := os.ReadDir(filepath.Join(st.root, "tmp")); len(es) != 0 {
		t.Fatalf("partial put left in tmp/: %d", len(es))
	}
	if _, err := os.Stat(filepath.Join(st.root, "objects", "dstopped", "fmid-put")); !os.IsNotExist(err) {
		t.Fatalf("the interrupted put was stored: %v", err)
	}
}

// slowReader yields 16 KiB every millisecond until left runs out or ctx ends.
type slowReader struct {
	ctx     context.Context
	left    int
	started chan struct{}
	once    sync.Once
}

func (r *slowReader) Read(p []byte) (int, error) {
	r.once.Do(func() { close(r.started) })
	if r.left == 0 {
		return 0, io.EOF
	}
	select {
	case <-r.ctx.Done():
		return 0, r.ctx.Err()
	case <-time.After(time.Millisecond):
	}
	n := min(len(p), 16<<10, r.left)
	clear(p[:n])
	r.left -= n
	return n, nil
}
