package backend

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/natstest"
)

// Through Open with the service's connection in Env and no url, the nats strategy shares that connection
// and leaves it open on Close.
func TestNATSSharedConnection(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	b, err := Open(t.Context(), "nats", map[string]string{"bucket": "shared"}, Env{NATS: nc})
	if err != nil {
		t.Fatal(err)
	}
	put(t, b, "x", []byte("x"), nil)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if nc.IsClosed() {
		t.Fatal("Close closed the service's connection")
	}
	// Opening the existing bucket again without settings keeps its contents.
	b, err = Open(t.Context(), "nats", map[string]string{"bucket": "shared"}, Env{NATS: nc})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, _ := get(t, b, "x", 0, -1); string(got) != "x" {
		t.Fatalf("reopened bucket: %q", got)
	}
	_, err = Open(t.Context(), "nats", map[string]string{"creds": "/nonexistent"}, Env{NATS: nc})
	wantCode(t, err, errs.BadRequest, "creds without url")
}

// While NATS is down, calls fail with a coded error within the caller's deadline; after it returns,
// a put cut off by the outage shows nothing and the next put works.
func TestNATSOutage(t *testing.T) {
	srv := natstest.Start(t)
	js, err := jetstream.New(srv.Connect(), jetstream.WithDefaultTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewNATS(t.Context(), js, "outage")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	put(t, b, "before", []byte("before"), nil)

	srv.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	start := time.Now()
	_, err = b.Stat(ctx, "before")
	cancel()
	if c := errs.CodeOf(err); c != errs.Unavailable && c != errs.Timeout {
		t.Fatalf("stat while NATS is down: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("stat while NATS is down took %v", d)
	}
	_, err = b.Put(t.Context(), "during", bytes.NewReader(randomBytes(1<<20, 30)), nil)
	if err == nil {
		t.Fatal("put succeeded while NATS was down")
	}
	t.Logf("put while down: %v", err)

	srv.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for b.Ping(t.Context()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("no reconnect within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = b.Stat(t.Context(), "during")
	wantCode(t, err, errs.NotFound, "stat of the put cut off by the outage")
	if got, _ := get(t, b, "before", 0, -1); string(got) != "before" {
		t.Fatalf("object from before the outage: %q", got)
	}
	put(t, b, "after", randomBytes(1<<20, 31), nil)
}
