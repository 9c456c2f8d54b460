package stream

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"troveng.dev/shared/errs"
)

// Faults of a real part: each must end as an error on the other side, never as success, and in time.

const testIdle = 400 * time.Millisecond

// within is the bound for noticing a dead or silent peer: the idle timeout plus scheduling slack
// (generous: the race detector slows everything down).
const within = testIdle + 2*time.Second

func TestNoReceiverFailsFast(t *testing.T) {
	e := newEnv(t)
	start := time.Now()
	// A long idle timeout: only the server's "no responders" can make this fast.
	_, err := Dial(context.Background(), e.send, e.send.NewInbox(), Options{IdleTimeout: time.Minute})
	wantCode(t, "Dial", err, errs.Unavailable, "no receiver listens")
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Dial to nobody took %s", d)
	}
	_, _, err = Send(context.Background(), e.send, e.send.NewInbox(), bytes.NewReader(nil), Options{IdleTimeout: time.Minute})
	wantCode(t, "Send", err, errs.Unavailable, "")
}

func TestSenderGoesSilent(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{IdleTimeout: testIdle})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{})
	// A hung sender process: opened, sent two chunks, then nothing (no trailer, no pings). Its control
	// inbox stays subscribed, so only the idle timeout can notice.
	raw := dialRaw(t, e.send, r.Subject(), 1024)
	raw.data(1, []byte("first"))
	raw.data(2, []byte("second"))
	start := time.Now()
	rc := wait(t, got, 10*time.Second, "receiver")
	wantCode(t, "receiver", rc.err, errs.Timeout, "heard nothing from the sender")
	if d := rc.at.Sub(start); d < testIdle/2 || d > within {
		t.Fatalf("timed out after %s, idle timeout is %s", d, testIdle)
	}
	// The receiver tells the (hung) sender too, in case it wakes up.
	wantCode(t, "raw sender", raw.failure(2*time.Second), errs.Timeout, "")
}

func TestNoSenderEverOpens(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{IdleTimeout: testIdle})
	if err != nil {
		t.Fatal(err)
	}
	rc := wait(t, receive(r, receiveOpts{}), 10*time.Second, "receiver")
	wantCode(t, "receiver", rc.err, errs.Timeout, "no sender opened")
}

func TestSenderConnectionLost(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{IdleTimeout: testIdle, Window: 4})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{readPause: 20 * time.Millisecond})
	sent := sendAsync(context.Background(), e.send, r.Subject(), newSource(-1, 1), Options{IdleTimeout: testIdle, ChunkSize: 4 << 10})
	time.Sleep(150 * time.Millisecond)
	killed := time.Now()
	e.send.Close() // the sender's process dies: its connection and subscriptions vanish

	sr := wait(t, sent, 10*time.Second, "Send")
	wantCode(t, "sender", sr.err, errs.Unavailable, "")
	rc := wait(t, got, 10*time.Second, "receiver")
	if !isCode(rc.err, errs.Unavailable, errs.Timeout) {
		t.Fatalf("receiver: want unavailable or timeout, got %v", rc.err)
	}
	t.Logf("sender %v after %s; receiver %v after %s", sr.err, sr.at.Sub(killed), rc.err, rc.at.Sub(killed))
	if d := rc.at.Sub(killed); d > within {
		t.Fatalf("receiver noticed the dead sender after %s", d)
	}
}

func TestReceiverConnectionLost(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{IdleTimeout: testIdle, Window: 4})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{readPause: 20 * time.Millisecond})
	sent := sendAsync(context.Background(), e.send, r.Subject(), newSource(-1, 2), Options{IdleTimeout: testIdle, ChunkSize: 4 << 10})
	time.Sleep(150 * time.Millisecond)
	killed := time.Now()
	e.recv.Close()

	rc := wait(t, got, 10*time.Second, "receiver")
	wantCode(t, "receiver", rc.err, errs.Unavailable, "connection was lost")
	sr := wait(t, sent, 10*time.Second, "Send")
	if !isCode(sr.err, errs.Unavailable, errs.Timeout) {
		t.Fatalf("sender: want unavailable or timeout, got %v", sr.err)
	}
	t.Logf("sender %v after %s; receiver %v after %s", sr.err, sr.at.Sub(killed), rc.err, rc.at.Sub(killed))
	if d := sr.at.Sub(killed); d > within {
		t.Fatalf("sender noticed the dead receiver after %s", d)
	}
}

func TestReceiverGoesSilent(t *testing.T) {
	e := newEnv(t)
	// A hung receiver process: it accepts the open with a credit of 3, then never answers again.
	raw := listenRaw(t, e.recv, 3)
	start := time.Now()
	sr := wait(t, sendAsync(context.Background(), e.send, raw.subject, newSource(1<<20, 3), Options{IdleTimeout: testIdle, ChunkSize: 1024}), 10*time.Second, "Send")
	wantCode(t, "sender", sr.err, errs.Timeout, "heard nothing from the receiver")
	if d := sr.at.Sub(start); d > within {
		t.Fatalf("sender noticed the silent receiver after %s", d)
	}
}

func TestReceiverFails(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{Window: 4})
	if err != nil {
		t.Fatal(err)
	}
	backendDown := errs.Unavailablef("backend s3 is down; retry later")
	go func() {
		defer r.Close()
		buf := make([]byte, 10_000)
		var n int
		for n < 50_000 {
			k, err := r.Read(buf)
			n += k
			if err != nil {
				return
			}
		}
		r.Fail(backendDown)
		if k, err := r.Read(buf); k != 0 || !errs.Is(err, errs.Unavailable) {
			t.Errorf("Read after Fail = %d, %v", k, err)
		}
	}()
	_, _, err = Send(context.Background(), e.send, r.Subject(), newSource(-1, 4), Options{ChunkSize: 4 << 10})
	wantCode(t, "sender", err, errs.Unavailable, "backend s3 is down")

	// Fail after the last byte, before Finish: Close must return it (a put not committed is no success).
	r2, err := Listen(context.Background(), e.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer r2.Close()
		buf := make([]byte, 1<<10)
		for {
			if _, err := r2.Read(buf); err != nil {
				break
			}
		}
		r2.Fail(errs.Conflictf("object exists"))
	}()
	_, _, err = Send(context.Background(), e.send, r2.Subject(), newSource(5000, 5), Options{})
	wantCode(t, "sender", err, errs.Conflict, "object exists")

	// Close without Finish or Fail counts as a cancellation.
	r3, err := Listen(context.Background(), e.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 1<<10)
		for {
			if _, err := r3.Read(buf); err != nil {
				break
			}
		}
		r3.Close()
	}()
	_, _, err = Send(context.Background(), e.send, r3.Subject(), newSource(5000, 6), Options{})
	wantCode(t, "sender", err, errs.Cancelled, "closed the stream before finishing")
}

func TestSenderAborts(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{})
	w, err := Dial(context.Background(), e.send, r.Subject(), Options{ChunkSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 3500)); err != nil {
		t.Fatal(err)
	}
	w.Abort(errs.NotFoundf("table t1 vanished during the dump"))
	rc := wait(t, got, 10*time.Second, "receiver")
	wantCode(t, "receiver", rc.err, errs.NotFound, "table t1 vanished")
	if _, err := w.Write([]byte("x")); !errs.Is(err, errs.NotFound) {
		t.Fatalf("Write after Abort: %v", err)
	}
	if _, _, err := w.Close(); !errs.Is(err, errs.NotFound) {
		t.Fatalf("Close after Abort: %v", err)
	}
}

func TestSourceFails(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		code errs.Code
	}{
		{"coded", errs.Unavailablef("disk went away"), errs.Unavailable},
		{"plain", errors.New("read /data/x: input/output error"), errs.Internal},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			r, err := Listen(context.Background(), e.recv, Options{})
			if err != nil {
				t.Fatal(err)
			}
			got := receive(r, receiveOpts{})
			src := newSource(-1, 7)
			src.failAfter, src.failErr = 100_000, c.err
			_, _, err = Send(context.Background(), e.send, r.Subject(), src, Options{ChunkSize: 16 << 10})
			wantCode(t, "Send", err, c.code, c.err.Error())
			rc := wait(t, got, 10*time.Second, "receiver")
			wantCode(t, "receiver", rc.err, c.code, c.err.Error())
		})
	}
}

func TestSenderContextCancelled(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{Window: 4})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{readPause: 5 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	sent := sendAsync(ctx, e.send, r.Subject(), newSource(-1, 8), Options{ChunkSize: 4 << 10})
	time.Sleep(100 * time.Millisecond)
	cancel()
	sr := wait(t, sent, 5*time.Second, "Send")
	wantCode(t, "sender", sr.err, errs.Cancelled, "")
	rc := wait(t, got, 5*time.Second, "receiver")
	wantCode(t, "receiver", rc.err, errs.Cancelled, "the sender's context ended")
}

func TestReceiverContextCancelled(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Listen(ctx, e.recv, Options{Window: 4})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{readPause: 5 * time.Millisecond})
	sent := sendAsync(context.Background(), e.send, r.Subject(), newSource(-1, 9), Options{ChunkSize: 4 << 10})
	time.Sleep(100 * time.Millisecond)
	cancel()
	rc := wait(t, got, 5*time.Second, "receiver")
	wantCode(t, "receiver", rc.err, errs.Cancelled, "")
	sr := wait(t, sent, 5*time.Second, "Send")
	wantCode(t, "sender", sr.err, errs.Cancelled, "the receiver's context ended")
}

func TestContextDeadlineIsTimeout(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{Window: 4})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{readPause: 5 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	sr := wait(t, sendAsync(ctx, e.send, r.Subject(), newSource(-1, 10), Options{ChunkSize: 4 << 10}), 5*time.Second, "Send")
	wantCode(t, "sender", sr.err, errs.Timeout, "")
	rc := wait(t, got, 5*time.Second, "receiver")
	wantCode(t, "receiver", rc.err, errs.Timeout, "")
}

func TestNATSRestartMidStream(t *testing.T) {
	srv := newEnv(t)
	r, err := Listen(context.Background(), srv.recv, Options{IdleTimeout: testIdle, Window: 8})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{readPause: 2 * time.Millisecond})
	sent := sendAsync(context.Background(), srv.send, r.Subject(), newSource(-1, 11), Options{IdleTimeout: testIdle, ChunkSize: 16 << 10})
	time.Sleep(200 * time.Millisecond)
	restarted := time.Now()
	srv.srv.Restart()

	rc := wait(t, got, 10*time.Second, "receiver")
	sr := wait(t, sent, 10*time.Second, "Send")
	for who, err := range map[string]error{"receiver": rc.err, "sender": sr.err} {
		if !isCode(err, errs.Unavailable, errs.Timeout) {
			t.Errorf("%s: want unavailable or timeout after the restart, got %v", who, err)
		}
	}
	t.Logf("sender %v after %s; receiver %v after %s", sr.err, sr.at.Sub(restarted), rc.err, rc.at.Sub(restarted))
	if rc.at.Sub(restarted) > within || sr.at.Sub(restarted) > within {
		t.Fatalf("the restart was noticed after %s (receiver) and %s (sender)", rc.at.Sub(restarted), sr.at.Sub(restarted))
	}

	// The connections came back: a new stream works.
	deadline := time.Now().Add(5 * time.Second)
	for !srv.send.IsConnected() || !srv.recv.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("clients did not reconnect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	r2, err := Listen(context.Background(), srv.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got2 := receive(r2, receiveOpts{})
	if _, _, err := Send(context.Background(), srv.send, r2.Subject(), newSource(100_000, 12), Options{}); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	if rc := wait(t, got2, 5*time.Second, "receiver"); rc.err != nil {
		t.Fatal(rc.err)
	}
}

func TestSecondSenderRefused(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{result: []byte("first")})
	w, err := Dial(context.Background(), e.send, r.Subject(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Dial(context.Background(), e.send, r.Subject(), Options{})
	wantCode(t, "second Dial", err, errs.Conflict, "already has a sender")
	// The first stream is unharmed.
	if _, err := w.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	res, tr, err := w.Close()
	if err != nil || string(res) != "first" || tr.Size != 5 {
		t.Fatalf("first stream: %q %+v %v", res, tr, err)
	}
	if rc := wait(t, got, 5*time.Second, "receiver"); rc.err != nil {
		t.Fatal(rc.err)
	}
}
