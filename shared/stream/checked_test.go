package stream

import (
	"context"
	"testing"
	"time"

	"troveng.dev/shared/errs"
)

// TestSendChecked: the sender sees the trailer before it goes out; a check that passes changes nothing, a
// check that fails ends the stream with its error on both sides instead of a good trailer.
func TestSendChecked(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	r, err := Listen(ctx, e.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{})
	src := newSource(300_001, 1)
	var seen Trailer
	_, tr, err := SendChecked(ctx, e.send, r.Subject(), src, Options{ChunkSize: 64 << 10}, func(tr Trailer) error { seen = tr; return nil })
	if err != nil {
		t.Fatalf("SendChecked with a passing check: %v", err)
	}
	if rc := wait(t, got, 10*time.Second, "receiver"); rc.err != nil || seen != tr || tr.SHA256 != src.sum.hex() || tr.Size != 300_001 {
		t.Fatalf("passing check: receiver %v, check saw %+v, trailer %+v", rc.err, seen, tr)
	}

	r2, err := Listen(ctx, e.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got2 := receive(r2, receiveOpts{})
	bad := errs.New(errs.Corrupt, "recorded digest differs")
	_, _, err = SendChecked(ctx, e.send, r2.Subject(), newSource(100_000, 2), Options{ChunkSize: 64 << 10}, func(Trailer) error { return bad })
	wantCode(t, "sender", err, errs.Corrupt, "recorded digest differs")
	rc := wait(t, got2, 10*time.Second, "receiver")
	wantCode(t, "receiver", rc.err, errs.Corrupt, "recorded digest differs")
}
