package storage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"troveng.dev/services/storage"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/s3test"
	"troveng.dev/shared/storageclient"
)

// s3Stack is a storage service on the s3 strategy (5 MiB parts) with a direct-transfer client, and an S3
// client of the same bucket to look behind the service's back.
type s3Stack struct {
	*stack
	direct *storageclient.Client
	s3     *s3.Client
	bucket string
	opts   map[string]string // the s3 strategy's configuration, for a restart
}

func startS3Stack(t *testing.T) *s3Stack {
	t.Helper()
	srv := s3test.Start(t)
	opts := map[string]string{"endpoint": srv.Endpoint(), "region": srv.Region(), "bucket": srv.Bucket(),
		"access_key": srv.AccessKey(), "secret_key": srv.SecretKey(), "path_style": "true", "part_size": "5MiB", "concurrency": "3"}
	st := startStack(t, "s3", opts)
	cfg, err := awsconfig.LoadDefaultConfig(t.Context(), awsconfig.WithRegion(srv.Region()),
		awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(srv.AccessKey(), srv.SecretKey(), "")))
	if err != nil {
		t.Fatal(err)
	}
	cli := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true; o.BaseEndpoint = aws.String(srv.Endpoint()) })
	// Small chunks and batches, so a 20 MiB object takes several presign batches and ranged GETs.
	direct := st.client.WithDirect(storageclient.DirectOptions{Concurrency: 3, GetChunkSize: 3 << 20, PresignBatch: 2})
	return &s3Stack{stack: st, direct: direct, s3: cli, bucket: srv.Bucket(), opts: opts}
}

// openUploads lists the bucket's unfinished multipart uploads.
func (s *s3Stack) openUploads(t *testing.T) []string {
	t.Helper()
	out, err := s.s3.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: &s.bucket})
	if err != nil {
		t.Fatalf("list multipart uploads: %v", err)
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, aws.ToString(u.Key))
	}
	return keys
}

// dataObjects lists the data objects under key (the s3 strategy's data/<key>/<id>).
func (s *s3Stack) dataObjects(t *testing.T, key string) []string {
	t.Helper()
	out, err := s.s3.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: aws.String("data/" + key + "/")})
	if err != nil {
		t.Fatalf("list objects: %v", err)
	}
	var keys []string
	for _, o := range out.Contents {
		keys = append(keys, aws.ToString(o.Key))
	}
	return keys
}

func TestDirectRoundTrip(t *testing.T) {
	st := startS3Stack(t)
	ctx := ctxT(t)
	data := randomBytes(21<<20+12345, 11)
	obj, err := st.direct.PutDirect(ctx, "db1/full/direct.bin", bytes.NewReader(data), map[string]string{"engine": "postgresql"})
	if err != nil {
		t.Fatalf("put direct: %v", err)
	}
	if obj.Size != int64(len(data)) || obj.SHA256 != sum(data) || obj.Metadata["engine"] != "postgresql" {
		t.Fatalf("put direct returned %+v", obj)
	}
	if st, err := st.client.Stat(ctx, "db1/full/direct.bin"); err != nil || st.SHA256 != obj.SHA256 || st.Metadata["engine"] != "postgresql" {
		t.Fatalf("stat: %+v %v", st, err)
	}
	// The completion read the object back, and its record says so (a backup then needs no second
	// read-back); a plain put reads nothing back and records no verification.
	if st, err := st.client.Stat(ctx, "db1/full/direct.bin"); err != nil || st.Verified.IsZero() || time.Since(st.Verified) > time.Minute {
		t.Fatalf("stat after a direct put: verified %v, %v", st.Verified, err)
	}
	if _, err := st.client.Put(ctx, "db1/full/plain.bin", bytes.NewReader(data[:1000]), nil); err != nil {
		t.Fatal(err)
	}
	if st, err := st.client.Stat(ctx, "db1/full/plain.bin"); err != nil || !st.Verified.IsZero() {
		t.Fatalf("stat after a plain put: verified %v, %v", st.Verified, err)
	}

	var got bytes.Buffer
	rep, err := st.direct.GetDirect(ctx, "db1/full/direct.bin", 0, 0, &got)
	if err != nil || rep.Length != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("get direct: %v (%d bytes, equal=%v)", err, got.Len(), bytes.Equal(got.Bytes(), data))
	}
	got.Reset()
	if _, err := st.client.Get(ctx, "db1/full/direct.bin", 0, 0, &got, nil); err != nil || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("normal get of a direct upload: %v", err)
	}
	got.Reset()
	rep, err = st.direct.GetDirect(ctx, "db1/full/direct.bin", 4<<20+7, 7<<20, &got)
	if err != nil || rep.Length != 7<<20 || !bytes.Equal(got.Bytes(), data[4<<20+7:11<<20+7]) {
		t.Fatalf("ranged get direct: %v (%d bytes)", err, got.Len())
	}
	_, err = st.direct.GetDirect(ctx, "db1/full/direct.bin", int64(len(data)), 0, io.Discard)
	wantCode(t, err, errs.BadRequest)
	_, err = st.direct.GetDirect(ctx, "nope", 0, 0, io.Discard)
	wantCode(t, err, errs.NotFound)

	j, err := st.client.Verify(ctx, storagev1.VerifyRequest{Key: "db1/full/direct.bin"})
	if err != nil {
		t.Fatal(err)
	}
	if j = waitJob(t, st.client, j.ID); j.State != jobs.StateSucceeded {
		t.Fatalf("verify job: %+v", j)
	}

	// Empty and one-part objects, and an overwrite that frees the old data.
	if o, err := st.direct.PutDirect(ctx, "db1/full/direct.bin", bytes.NewReader(nil), nil); err != nil || o.Size != 0 || o.SHA256 != sum(nil) {
		t.Fatalf("empty put direct: %+v %v", o, err)
	}
	got.Reset()
	if _, err := st.direct.GetDirect(ctx, "db1/full/direct.bin", 0, 0, &got); err != nil || got.Len() != 0 {
		t.Fatalf("empty get direct: %v", err)
	}
	if d := st.dataObjects(t, "db1/full/direct.bin"); len(d) != 1 {
		t.Fatalf("data objects after overwrite: %v", d)
	}
	if u := st.openUploads(t); len(u) != 0 {
		t.Fatalf("open uploads: %v", u)
	}
}

// completeRaw sends complete_direct by hand and waits for its outcome, as the client does.
func completeRaw(t *testing.T, st *s3Stack, req storagev1.CompleteDirectRequest) (storagev1.Object, error) {
	t.Helper()
	req.Reply = st.cli.NewRespInbox()
	sub, err := st.cli.SubscribeSync(req.Reply)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := rpc.Call(ctxT(t), st.cli, storagev1.Subject(storagev1.EndpointCompleteDirect), req, nil); err != nil {
		return storagev1.Object{}, err
	}
	msg, err := sub.NextMsg(20 * time.Second)
	if err != nil {
		t.Fatalf("no complete_direct outcome: %v", err)
	}
	var res storagev1.CompleteDirectResult
	if err := json.Unmarshal(msg.Data, &res); err != nil {
		t.Fatal(err)
	}
	if res.Error != nil {
		return storagev1.Object{}, res.Error
	}
	return *res.Object, nil
}

// uploadRaw starts a direct upload of data by hand (one part per part size) and returns the parts.
func uploadRaw(t *testing.T, st *s3Stack, key string, data []byte) (storagev1.PutDirectReply, []storagev1.CompletedPart) {
	t.Helper()
	ctx := ctxT(t)
	var up storagev1.PutDirectReply
	if err := rpc.Call(ctx, st.cli, storagev1.Subject(storagev1.EndpointPutDirect), storagev1.PutDirectRequest{Key: key}, &up); err != nil {
		t.Fatal(err)
	}
	var nums []int32
	for i := int64(0); i == 0 || i*up.PartSize < int64(len(data)); i++ {
		nums = append(nums, int32(i+1))
	}
	var urls storagev1.PresignPartsReply
	if err := rpc.Call(ctx, st.cli, storagev1.Subject(storagev1.EndpointPresignParts), storagev1.PresignPartsRequest{Key: key, Token: up.Token, Parts: nums}, &urls); err != nil {
		t.Fatal(err)
	}
	var parts []storagev1.CompletedPart
	for i, p := range urls.Parts {
		off := int64(i) * up.PartSize
		req, _ := http.NewRequest(p.Method, p.URL, bytes.NewReader(data[off:min(off+up.PartSize, int64(len(data)))]))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT part %d: %v %v", p.Part, err, resp)
		}
		_ = resp.Body.Close()
		parts = append(parts, storagev1.CompletedPart{Number: p.Part, ETag: resp.Header.Get("ETag")})
	}
	return up, parts
}

func TestDirectRefusals(t *testing.T) {
	st := startS3Stack(t)
	ctx := ctxT(t)
	data := randomBytes(6<<20, 12)

	t.Run("lies at complete", func(t *testing.T) {
		for name, lie := range map[string]func(r *storagev1.CompleteDirectRequest){
			"sha256": func(r *storagev1.CompleteDirectRequest) { r.SHA256 = sum([]byte("something else")) },
			"size":   func(r *storagev1.CompleteDirectRequest) { r.Size++ },
		} {
			up, parts := uploadRaw(t, st, "liar", data)
			req := storagev1.CompleteDirectRequest{Key: "liar", Token: up.Token, Parts: parts, Size: int64(len(data)), SHA256: sum(data)}
			lie(&req)
			_, err := completeRaw(t, st, req)
			if errs.CodeOf(err) != errs.Corrupt {
				t.Fatalf("lie about %s: want corrupt, got %v", name, err)
			}
			_, err = st.client.Stat(ctx, "liar")
			wantCode(t, err, errs.NotFound)
			if d := st.dataObjects(t, "liar"); len(d) != 0 {
				t.Fatalf("lie about %s left data: %v", name, d)
			}
		}
		// The honest completion of the same kind of upload works.
		up, parts := uploadRaw(t, st, "liar", data)
		if o, err := completeRaw(t, st, storagev1.CompleteDirectRequest{Key: "liar", Token: up.Token, Parts: parts, Size: int64(len(data)), SHA256: sum(data)}); err != nil || o.SHA256 != sum(data) {
			t.Fatalf("honest complete: %+v %v", o, err)
		}
	})

	t.Run("tampered token", func(t *testing.T) {
		var up storagev1.PutDirectReply
		if err := rpc.Call(ctx, st.cli, storagev1.Subject(storagev1.EndpointPutDirect), storagev1.PutDirectRequest{Key: "mine"}, &up); err != nil {
			t.Fatal(err)
		}
		tampered := up.Token[:len(up.Token)-3] + "AAA"
		for _, req := range []storagev1.PresignPartsRequest{
			{Key: "yours", Token: up.Token, Parts: []int32{1}},
			{Key: "mine", Token: tampered, Parts: []int32{1}},
			{Key: "mine", Token: "", Parts: []int32{1}},
		} {
			err := rpc.Call(ctx, st.cli, storagev1.Subject(storagev1.EndpointPresignParts), req, nil)
			wantCode(t, err, errs.BadRequest)
		}
		_, err := completeRaw(t, st, storagev1.CompleteDirectRequest{Key: "yours", Token: up.Token, Parts: []storagev1.CompletedPart{{Number: 1, ETag: `"x"`}}, Size: 1, SHA256: sum([]byte("x"))})
		wantCode(t, err, errs.BadRequest)
		err = rpc.Call(ctx, st.cli, storagev1.Subject(storagev1.EndpointAbortDirect), storagev1.AbortDirectRequest{Key: "yours", Token: up.Token}, nil)
		wantCode(t, err, errs.BadRequest)
		// Bad keys and metadata are refused as by put.
		err = rpc.Call(ctx, st.cli, storagev1.Subject(storagev1.EndpointPutDirect), storagev1.PutDirectRequest{Key: "../x"}, nil)
		wantCode(t, err, errs.BadRequest)
		err = rpc.Call(ctx, st.cli, storagev1.Subject(storagev1.EndpointPutDirect), storagev1.PutDirectRequest{Key: "x", Metadata: map[string]string{"bad key": "v"}}, nil)
		wantCode(t, err, errs.BadRequest)

		// Abort leaves no multipart upload behind.
		if err := rpc.Call(ctx, st.cli, storagev1.Subject(storagev1.EndpointAbortDirect), storagev1.AbortDirectRequest{Key: "mine", Token: up.Token}, nil); err != nil {
			t.Fatal(err)
		}
		if u := st.openUploads(t); len(u) != 0 {
			t.Fatalf("open uploads after abort: %v", u)
		}
	})
}

// blockingReader yields n bytes, then blocks until its context ends.
type blockingReader struct {
	n       int
	reached chan struct{}
	ctx     context.Context
}

func (r *blockingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		if r.reached != nil {
			close(r.reached)
			r.reached = nil
		}
		<-r.ctx.Done()
		return 0, r.ctx.Err()
	}
	n := min(len(p), r.n)
	clear(p[:n])
	r.n -= n
	return n, nil
}

func TestDirectCancelAborts(t *testing.T) {
	st := startS3Stack(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	r := &blockingReader{n: 12 << 20, reached: make(chan struct{}), ctx: ctx}
	reached := r.reached
	done := make(chan error, 1)
	go func() {
		_, err := st.direct.PutDirect(ctx, "cancelled", r, nil)
		done <- err
	}()
	<-reached
	// Wait until the full parts are in S3's upload (the client keeps uploading while it reads).
	deadline := time.Now().Add(10 * time.Second)
	for len(st.openUploads(t)) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if len(st.openUploads(t)) == 0 {
		t.Fatal("the upload never started")
	}
	cancel()
	select {
	case err := <-done:
		wantCode(t, err, errs.Cancelled)
	case <-time.After(20 * time.Second):
		t.Fatal("put direct did not return after cancel")
	}
	if u := st.openUploads(t); len(u) != 0 {
		t.Fatalf("open uploads after cancel: %v", u)
	}
	_, err := st.client.Stat(ctxT(t), "cancelled")
	wantCode(t, err, errs.NotFound)
}

// TestDirectFallback: strategies without direct transfers answer bad_request naming the strategy, and the
// client falls back to put and get.
func TestDirectFallback(t *testing.T) {
	for _, name := range []string{"fs", "nats"} {
		t.Run(name, func(t *testing.T) {
			var opts map[string]string
			if name == "nats" {
				opts = map[string]string{"bucket": "direct-fallback"}
			}
			st := startStack(t, name, opts)
			ctx := ctxT(t)
			err := rpc.Call(ctx, st.cli, storagev1.Subject(storagev1.EndpointPutDirect), storagev1.PutDirectRequest{Key: "k"}, nil)
			wantCode(t, err, errs.BadRequest)
			if msg := errs.From(err).Message; !strings.Contains(msg, name+" "+storagev1.NoDirect) {
				t.Fatalf("message does not name the strategy: %q", msg)
			}
			data := randomBytes(1<<20+3, 13)
			obj, err := st.client.PutDirect(ctx, "fallback/obj", bytes.NewReader(data), map[string]string{"a": "b"})
			if err != nil || obj.SHA256 != sum(data) || obj.Metadata["a"] != "b" {
				t.Fatalf("put direct fallback: %+v %v", obj, err)
			}
			var got bytes.Buffer
			rep, err := st.client.GetDirect(ctx, "fallback/obj", 10, 100, &got)
			if err != nil || rep.Length != 100 || !bytes.Equal(got.Bytes(), data[10:110]) {
				t.Fatalf("get direct fallback: %v %+v", err, rep)
			}
		})
	}
}

// TestDirectPutOutlivesServiceRestart: the storage service is away between presign batches of a direct
// upload; the parts already uploaded stay in the object store, the client waits and presigns the rest once
// a service is back, and the object completes intact.
func TestDirectPutOutlivesServiceRestart(t *testing.T) {
	st := startS3Stack(t)
	ctx := ctxT(t)
	data := randomBytes(30<<20, 61)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		obj, err := st.direct.PutDirect(ctx, "restart/direct.bin", pr, nil)
		if err == nil && obj.SHA256 != sum(data) {
			err = errs.Internalf("stored sha256 %s, want %s", obj.SHA256, sum(data))
		}
		done <- err
	}()
	if _, err := pw.Write(data[:12<<20]); err != nil { // two parts presigned (batch of 2) and going up
		t.Fatal(err)
	}
	if err := st.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = pw.Write(data[12<<20:]); _ = pw.Close() }()
	time.Sleep(1500 * time.Millisecond)
	svc, err := storage.Start(context.Background(), st.nc, st.tel, storage.Config{Strategy: "s3", Options: st.opts, Stream: testStream,
		Jobs: jobs.Options{AckWait: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("direct put across the restart: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the direct put did not end")
	}
	if left := st.openUploads(t); len(left) != 0 {
		t.Fatalf("open multipart uploads after the put: %v", left)
	}
}
