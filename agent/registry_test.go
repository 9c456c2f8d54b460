package agent

import (
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/guestclient"
)

func TestRegistrationHeartbeatAndStale(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Heartbeat = 100 * time.Millisecond; c.Address = "192.0.2.7" })
	js, err := jetstream.New(h.cliNC)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 30*time.Second)
	var first guestv1.Registration
	waitFor(t, "the registration", 5*time.Second, func() bool {
		gs, err := guestclient.Guests(ctx, js)
		if err != nil || len(gs) != 1 {
			return false
		}
		first = gs[0]
		return true
	})
	if first.Instance != "g1" || first.AgentVersion != Version || first.Address != "192.0.2.7" || first.HeartbeatMs != 100 ||
		!slices.Contains(first.Tools, "datagen") || !slices.Contains(first.Tools, "sha256sum") ||
		!slices.Equal(first.Roots, []string{guestv1.RootData, guestv1.RootConfig}) ||
		!slices.Contains(first.Capabilities, "aes-256-gcm") || !slices.Contains(first.Capabilities, guestv1.OpFileExtract) ||
		first.Stale(time.Now()) {
		t.Fatalf("registration %+v", first)
	}
	// Heartbeats advance.
	kv, err := js.KeyValue(ctx, guestv1.RegistryBucket)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a later heartbeat", 5*time.Second, func() bool {
		r, err := guestclient.Guest(ctx, kv, "g1")
		return err == nil && r.Heartbeat.After(first.Heartbeat.Add(150*time.Millisecond))
	})
	// info answers with a fresh view.
	info, err := h.gc.Info(ctx)
	if err != nil || info.Instance != "g1" || info.Status.State != guestv1.EngineStopped || !info.Heartbeat.After(first.Heartbeat) {
		t.Fatalf("info %+v %v", info, err)
	}
	// After a stop the record stays, and goes stale after StaleBeats missed beats.
	if err := h.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	r, err := guestclient.Guest(ctx, kv, "g1")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the record to go stale", 5*time.Second, func() bool { return r.Stale(time.Now()) })
	if d := time.Since(stopped); d > time.Second {
		t.Fatalf("stale only %s after the stop; want ~%s", d, r.StaleAfter())
	}
	time.Sleep(300 * time.Millisecond)
	if again, err := guestclient.Guest(ctx, kv, "g1"); err != nil || !again.Heartbeat.Equal(r.Heartbeat) {
		t.Fatalf("a stopped agent still beats: %+v %v", again.Heartbeat, err)
	}
	// A new agent for the instance makes it fresh again.
	a2, err := Start(ctx, h.agentNC, nil, h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a2.Stop() }()
	waitFor(t, "fresh again", 5*time.Second, func() bool {
		r, err := guestclient.Guest(ctx, kv, "g1")
		return err == nil && !r.Stale(time.Now())
	})
}

func TestHeartbeatSurvivesNATSOutage(t *testing.T) {
	h := newHarness(t, nil)
	waitFor(t, "first beats", 5*time.Second, func() bool { return h.agent.Heartbeats() > 0 })
	// Without a registry bucket, heartbeats still work (the agent makes the bucket); delete it under it.
	js, _ := jetstream.New(h.cliNC)
	ctx := ctxFor(t, 30*time.Second)
	if err := js.DeleteKeyValue(ctx, guestv1.RegistryBucket); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the bucket re-made", 5*time.Second, func() bool {
		kv, err := js.KeyValue(ctx, guestv1.RegistryBucket)
		if err != nil {
			return false
		}
		_, err = guestclient.Guest(ctx, kv, "g1")
		return err == nil
	})
}
