package execs

import (
	"context"
	"testing"
	"time"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

func TestSlotsWaitCancelRetention(t *testing.T) {
	tb := New(1)
	slot, err := tb.Reserve()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Reserve(); !errs.Is(err, errs.Busy) {
		t.Fatalf("second reserve: %v", err)
	}
	j := tb.Launch(context.Background(), slot, "t", func(ctx context.Context, j *Job) guestv1.ExecResult {
		j.StdoutBytes.Store(5)
		<-ctx.Done()
		return guestv1.ExecResult{Error: errs.From(context.Cause(ctx))}
	})
	r, err := tb.Wait(context.Background(), j.ID, 20*time.Millisecond)
	if err != nil || r.Done || r.StdoutBytes != 5 {
		t.Fatalf("running: %+v %v", r, err)
	}
	if _, err := tb.Cancel(j.ID, errs.New(errs.Cancelled, "stop")); err != nil {
		t.Fatal(err)
	}
	r, _ = tb.Wait(context.Background(), j.ID, time.Second)
	if !r.Done || r.Error == nil || r.Error.Code != errs.Cancelled || r.Tool != "t" || r.StdoutBytes != 5 {
		t.Fatalf("cancelled: %+v", r)
	}
	if tb.Running() != 0 {
		t.Fatal("the slot was not given back")
	}
	// Retention: past it the result is gone.
	tb.now = func() time.Time { return time.Now().Add(guestv1.ResultRetention + time.Minute) }
	tb.Prune()
	if _, err := tb.Wait(context.Background(), j.ID, time.Millisecond); !errs.Is(err, errs.NotFound) {
		t.Fatalf("after retention: %v", err)
	}
	if _, err := tb.Wait(context.Background(), "bad.id", time.Millisecond); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("bad id: %v", err)
	}
	if err := tb.Close(context.Background(), errs.Unavailablef("stop")); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Reserve(); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("reserve after close: %v", err)
	}
}
