package backend

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/s3test"
)

// stallingReader yields before bytes, signals reached and waits for resume, then yields after bytes.
type stallingReader struct {
	before, after int
	reached       chan struct{}
	resume        chan struct{}
	src           []byte
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if r.before == 0 && r.reached != nil {
		close(r.reached)
		r.reached = nil
		<-r.resume
	}
	left := &r.before
	if r.before == 0 {
		left = &r.after
	}
	if *left == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), *left)], r.src)
	*left -= n
	return n, nil
}

// TestS3ServerStoppedMidUpload: the S3 server dies while a multipart put streams. The put must fail with a
// coded Unavailable in bounded time, nothing may be visible once the server is back, and the next put
// must work.
func TestS3ServerStoppedMidUpload(t *testing.T) {
	srv := s3test.Start(t)
	b, err := NewS3(t.Context(), s3ConfigFor(srv, "stop/", S3MinPartSize, 2))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	reached, resume := make(chan struct{}), make(chan struct{})
	r := &stallingReader{before: 3 * S3MinPartSize, after: 4 * S3MinPartSize, reached: reached, resume: resume, src: randomBytes(64<<10, 20)}
	done := make(chan error, 1)
	go func() {
		_, err := b.Put(context.Background(), "victim", r, nil)
		done <- err
	}()
	<-reached // two parts uploaded or in flight, the third buffered
	srv.Stop()
	start := time.Now()
	close(resume)
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("put did not return within 30s of the S3 server stopping")
	}
	t.Logf("put failed %v after the stop: %v", time.Since(start).Round(time.Millisecond), err)
	wantCode(t, err, errs.Unavailable, "put while the server is down")

	// While the server is down every call says so, quickly.
	_, err = b.Stat(t.Context(), "victim")
	wantCode(t, err, errs.Unavailable, "stat while the server is down")
	wantCode(t, b.Ping(t.Context()), errs.Unavailable, "ping while the server is down")

	srv.Restart()
	_, err = b.Stat(t.Context(), "victim")
	wantCode(t, err, errs.NotFound, "stat after restart")
	if keys := listAll(t, b, ""); len(keys) != 0 {
		t.Fatalf("list after restart: %q", keys)
	}
	// The abort could not reach the server; a bucket lifecycle rule reclaims such uploads (see s3.go).
	t.Logf("left after the outage (invisible): %q", s3Leftovers(t, b.(*s3Backend)))

	data := randomBytes(3*S3MinPartSize+17, 21)
	info, err := b.Put(t.Context(), "victim", bytes.NewReader(data), nil)
	if err != nil {
		t.Fatalf("put after restart: %v", err)
	}
	if info.SHA256 != sha(data) {
		t.Fatal("put after restart: wrong sha")
	}
	got, _ := get(t, b, "victim", 0, -1)
	if !bytes.Equal(got, data) {
		t.Fatal("get after restart: wrong bytes")
	}
}

// TestS3GetServerStopped: a parallel get whose server dies mid-stream fails with Unavailable, not a hang
// or a silent short read.
func TestS3GetServerStopped(t *testing.T) {
	srv := s3test.Start(t)
	cfg := s3ConfigFor(srv, "", S3MinPartSize, 2)
	cfg.MaxAttempts = 2
	b, err := NewS3(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	data := randomBytes(8*S3MinPartSize, 22)
	put(t, b, "obj", data, nil)
	rc, _, err := b.Get(t.Context(), "obj", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, S3MinPartSize)); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	start := time.Now()
	n, err := io.Copy(io.Discard, rc)
	t.Logf("read %d more bytes, then after %v: %v", n, time.Since(start).Round(time.Millisecond), err)
	wantCode(t, err, errs.Unavailable, "get while the server is down")
	if n >= int64(len(data)-S3MinPartSize) {
		t.Fatal("the whole object arrived although the server stopped")
	}
}

func TestS3WrongCredentials(t *testing.T) {
	srv := s3test.Start(t)
	cfg := s3ConfigFor(srv, "", S3MinPartSize, 2)
	cfg.SecretKey = "not-the-secret"
	b, err := NewS3(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	err = b.Ping(t.Context())
	wantCode(t, err, errs.Unauthorized, "ping with a wrong secret")
	_, err = b.Put(t.Context(), "x", bytes.NewReader([]byte("x")), nil)
	wantCode(t, err, errs.Unauthorized, "put with a wrong secret")
	if bytes.Contains([]byte(err.Error()), []byte("not-the-secret")) {
		t.Fatalf("error reveals the secret: %v", err)
	}
	cfg = s3ConfigFor(srv, "", S3MinPartSize, 2)
	cfg.Bucket = "no-such-bucket"
	b2, err := NewS3(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	wantCode(t, b2.Ping(t.Context()), errs.Unavailable, "ping of a missing bucket")
}

// On a posix-backed server a key and a longer key under it cannot both exist: the put is refused with
// Conflict, and leaves nothing behind.
func TestS3PosixNestedKeysConflict(t *testing.T) {
	srv := s3test.Start(t)
	b, err := NewS3(t.Context(), s3ConfigFor(srv, "nest/", S3MinPartSize, 2))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	put(t, b, "a/b", []byte("ab"), nil)
	_, err = b.Put(t.Context(), "a", bytes.NewReader([]byte("a")), nil)
	wantCode(t, err, errs.Conflict, "put a next to a/b")
	put(t, b, "x", []byte("x"), nil)
	_, err = b.Put(t.Context(), "x/y", bytes.NewReader([]byte("xy")), nil)
	wantCode(t, err, errs.Conflict, "put x/y next to x")
	if keys := listAll(t, b, ""); len(keys) != 2 || keys[0] != "a/b" || keys[1] != "x" {
		t.Fatalf("list: %q", keys)
	}
	for _, k := range []string{"a/b", "x"} {
		if err := b.Delete(t.Context(), k); err != nil {
			t.Fatal(err)
		}
	}
	if left := s3Leftovers(t, b.(*s3Backend)); len(left) != 0 {
		t.Fatalf("left behind: %q", left)
	}
}

// A record that is not valid JSON is corrupt: Stat says so, List skips it, and both a put and a delete
// of the key still work (so an operator can repair or remove it).
func TestS3CorruptRecord(t *testing.T) {
	srv := s3test.Start(t)
	be, err := NewS3(t.Context(), s3ConfigFor(srv, "corrupt/", S3MinPartSize, 2))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	b := be.(*s3Backend)
	put(t, b, "ok", []byte("ok"), nil)
	for _, k := range []string{"bad", "bad2"} {
		name := b.metaName(k)
		if _, err := b.client.PutObject(t.Context(), &s3.PutObjectInput{Bucket: &b.bucket, Key: &name, Body: strings.NewReader("{not json")}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = b.Stat(t.Context(), "bad")
	wantCode(t, err, errs.Corrupt, "stat of a corrupt record")
	if keys := listAll(t, b, ""); len(keys) != 1 || keys[0] != "ok" {
		t.Fatalf("list: %q", keys)
	}
	put(t, b, "bad", []byte("repaired"), nil)
	if got, _ := get(t, b, "bad", 0, -1); string(got) != "repaired" {
		t.Fatalf("after repair: %q", got)
	}
	if err := b.Delete(t.Context(), "bad2"); err != nil {
		t.Fatalf("delete of a corrupt record: %v", err)
	}
	_, err = b.Stat(t.Context(), "bad2")
	wantCode(t, err, errs.NotFound, "stat after deleting a corrupt record")
}

// A server that accepts connections and then says nothing is noticed after read_timeout.
func TestS3SilentServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c) }() // read requests, never answer
		}
	}()
	b, err := NewS3(t.Context(), S3Config{
		Endpoint: "http://" + l.Addr().String(), Bucket: "b", AccessKey: "a", SecretKey: "s", PathStyle: true,
		MaxAttempts: 1, ReadTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	start := time.Now()
	err = b.Ping(t.Context())
	wantCode(t, err, errs.Unavailable, "ping of a silent server")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("silence noticed after %v", d)
	}
}
