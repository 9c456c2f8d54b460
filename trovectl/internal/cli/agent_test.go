package cli

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/agent"
	"troveng.dev/shared/contract/guestv1"
)

// testHeartbeat is the heartbeat of the agents and registrars the tests run: a guest is stale after 600ms.
const testHeartbeat = 200 * time.Millisecond

// agentConn connects as an agent does: its inbox prefix, and reporting every asynchronous error (a
// permission refusal among them) to errCh when given.
func agentConn(t testing.TB, url, instance string, errCh chan error, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append(opts, nats.CustomInboxPrefix(agent.InboxPrefix(instance)), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errCh != nil {
			select {
			case errCh <- err:
			default:
			}
		}
	}))
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("agent connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// startAgent runs the real guest agent (troveng.dev/agent) in this process on nc, without an engine, with
// its default allow-list as this host resolves it (cat, sha256sum, tar, ...), and waits until it is registered.
func startAgent(t testing.TB, nc *nats.Conn, instance string) *agent.Agent {
	t.Helper()
	a, err := agent.Start(context.Background(), nc, nil, agent.Config{
		Instance: instance, DataRoot: t.TempDir(), ConfigRoot: t.TempDir(), Heartbeat: testHeartbeat,
		Address: "10.88.0.7", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	t.Cleanup(func() { _ = a.Stop() })
	waitRegistered(t, nc, instance)
	return a
}

// waitRegistered waits until instance's record is in the registry.
func waitRegistered(t testing.TB, nc *nats.Conn, instance string) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		kv, err := js.KeyValue(ctx, guestv1.RegistryBucket)
		if err == nil {
			_, err = kv.Get(ctx, instance)
		}
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not registered within 10s: %v", instance, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sampleRegistration is a record as an agent with a healthy engine writes it.
func sampleRegistration(instance, engine string) guestv1.Registration {
	now := time.Now().UTC()
	return guestv1.Registration{
		Instance: instance, Engine: engine, EngineVersion: "7.0.15", AgentVersion: guestv1.Version, Address: "10.88.0.7",
		Capabilities: []string{guestv1.OpInfo, guestv1.OpExec}, Tools: []string{"cat", "redis-cli", "sha256sum"},
		Roots:   []string{guestv1.RootData, guestv1.RootConfig},
		Status:  guestv1.EngineStatus{Engine: engine, Version: "7.0.15", State: guestv1.EngineRunning, Healthy: true, PID: 42, Port: 6379},
		Started: now, Heartbeat: now, HeartbeatMs: testHeartbeat.Milliseconds(),
	}
}

// registrar keeps a healthy registration fresh, as an agent whose engine is up does: the stand-in for a
// guest container in the `guest start` tests (the real agent is run by startAgent; an engine is not
// available on this host).
type registrar struct {
	stop chan struct{}
	done sync.WaitGroup
	once sync.Once
}

func startRegistrar(t testing.TB, nc *nats.Conn, instance, engine string) *registrar {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: guestv1.RegistryBucket})
	if err != nil {
		t.Fatalf("registrar: %v", err)
	}
	reg := sampleRegistration(instance, engine)
	put := func() {
		reg.Heartbeat = time.Now().UTC()
		b, _ := json.Marshal(reg)
		pctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := kv.Put(pctx, instance, b); err != nil && !strings.Contains(err.Error(), "closed") {
			t.Errorf("registrar: %v", err)
		}
	}
	put()
	r := &registrar{stop: make(chan struct{})}
	r.done.Add(1)
	go func() {
		defer r.done.Done()
		tick := time.NewTicker(testHeartbeat)
		defer tick.Stop()
		for {
			select {
			case <-r.stop:
				return
			case <-tick.C:
				put()
			}
		}
	}()
	t.Cleanup(r.Stop)
	return r
}

// Stop ends the heartbeat; the record stays and turns stale.
func (r *registrar) Stop() {
	r.once.Do(func() { close(r.stop); r.done.Wait() })
}
