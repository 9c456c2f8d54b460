package ratelimit

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"troveng.dev/shared/errs"
)

// fakeClock makes the limiter's time virtual: sleeping advances it, so the test measures the limiter's own
// arithmetic, not the scheduler.
type fakeClock struct {
	t     time.Time
	slept time.Duration
}

func (c *fakeClock) now() time.Time { return c.t }
func (c *fakeClock) sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return errs.Wrap(errs.CodeOf(err), err, "rate-limited transfer")
	}
	c.t = c.t.Add(d)
	c.slept += d
	return nil
}

func withClock(l *Limiter) *fakeClock {
	c := &fakeClock{t: time.Unix(1000, 0)}
	l.now, l.sleep, l.last = c.now, c.sleep, c.t
	return c
}

func TestRateOverTime(t *testing.T) {
	const rate = 1 << 20 // 1 MiB/s
	l := New(rate)
	c := withClock(l)
	var dst bytes.Buffer
	n, err := io.Copy(Writer(context.Background(), &dst, l), bytes.NewReader(make([]byte, 4<<20)))
	if err != nil || n != 4<<20 {
		t.Fatal(n, err)
	}
	// 4 MiB at 1 MiB/s with a quarter-second burst to start from: 3.75 s.
	if want := 3750 * time.Millisecond; c.slept < want-10*time.Millisecond || c.slept > want+10*time.Millisecond {
		t.Fatalf("slept %s for 4 MiB at 1 MiB/s, want ~%s", c.slept, want)
	}

	l2 := New(rate)
	c2 := withClock(l2)
	if n, err := io.Copy(io.Discard, Reader(context.Background(), bytes.NewReader(make([]byte, 2<<20)), l2)); err != nil || n != 2<<20 {
		t.Fatal(n, err)
	}
	if want := 1750 * time.Millisecond; c2.slept < want-10*time.Millisecond || c2.slept > want+10*time.Millisecond {
		t.Fatalf("reader slept %s, want ~%s", c2.slept, want)
	}
}

func TestNilAndZeroDoNotLimit(t *testing.T) {
	if New(0) != nil || New(-5) != nil {
		t.Fatal("a limit <= 0 must be no limiter")
	}
	var buf bytes.Buffer
	if w := Writer(context.Background(), &buf, nil); w != io.Writer(&buf) {
		t.Fatal("nil limiter wrapped the writer")
	}
	var l *Limiter
	if err := l.Wait(context.Background(), 1<<30); err != nil || l.Rate() != 0 {
		t.Fatal(err)
	}
}

func TestCancelledWait(t *testing.T) {
	l := New(MinBurst) // one burst per second
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Wait(ctx, MinBurst); err != nil {
		t.Fatalf("the first burst is free: %v", err)
	}
	if err := l.Wait(ctx, MinBurst); !errs.Is(err, errs.Cancelled) {
		t.Fatalf("want cancelled, got %v", err)
	}
}

func TestRealTime(t *testing.T) {
	l := New(4 << 20) // 4 MiB/s: 3 MiB take ~0.5 s (the first 1 MiB is the burst)
	begin := time.Now()
	if _, err := io.Copy(Writer(context.Background(), io.Discard, l), bytes.NewReader(make([]byte, 3<<20))); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d < 400*time.Millisecond || d > 3*time.Second {
		t.Fatalf("3 MiB at 4 MiB/s took %s, want ~0.5 s", d)
	}
}
