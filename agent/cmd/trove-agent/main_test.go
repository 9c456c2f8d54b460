package main

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/natstest"
)

func TestServeRefusesABadInstanceBeforeConnecting(t *testing.T) {
	begin := time.Now()
	for _, id := range []string{"a.b", "*", ">", ""} {
		err := serve([]string{"-instance", id, "-nats-url", "nats://127.0.0.1:1", "-admin-addr", "", "-data-root", t.TempDir(), "-config-root", t.TempDir()})
		if !errs.Is(err, errs.BadRequest) {
			t.Fatalf("instance %q: want bad_request, got %v", id, err)
		}
	}
	if err := serve([]string{"-instance", "ok", "-heartbeat", "soon", "-admin-addr", ""}); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("bad heartbeat: %v", err)
	}
	if time.Since(begin) > 2*time.Second {
		t.Fatal("refusals waited for NATS")
	}
}

// TestServeWaitsForNATSAndStopsOnSIGTERM: the agent starts before NATS, connects when it comes, registers,
// and stops cleanly on SIGTERM.
func TestServeWaitsForNATSAndStopsOnSIGTERM(t *testing.T) {
	srv := natstest.Start(t)
	url := srv.URL()
	srv.Stop()
	done := make(chan error, 1)
	go func() {
		done <- serve([]string{"-nats-url", url, "-instance", "cmdtest", "-engine", "", "-admin-addr", "127.0.0.1:0", "-heartbeat", "100ms",
			"-data-root", t.TempDir(), "-config-root", t.TempDir(), "-log-level", "warn"})
	}()
	time.Sleep(700 * time.Millisecond)
	srv.Restart()
	nc := srv.Connect()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		gs, err := guestclient.Guests(context.Background(), js)
		if err == nil && len(gs) == 1 && gs[0].Instance == "cmdtest" {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve ended early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no registration after NATS came up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// serve holds the signal now (it registered its handler before connecting).
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
}
