// Package registry keeps a guest's Registration in the JetStream KV bucket guestv1.RegistryBucket (key:
// the instance id), rewritten every heartbeat. A failed heartbeat is logged and retried on the next beat,
// never fatal: the record going stale is how callers learn that the agent is gone. A clean stop does not
// delete the record either; it goes stale the same way, so "stopped" and "died" look alike to callers and
// neither needs special handling.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

// BucketTTL is the bucket's max age: a guest that has not beaten for a day drops out of the list.
const BucketTTL = 24 * time.Hour

// callTimeout bounds each JetStream call (a call on a dead connection blocks until its deadline).
const callTimeout = 5 * time.Second

// Snapshot returns the registration to write now (Heartbeat is set by the registry).
type Snapshot func(ctx context.Context) guestv1.Registration

// reconnectAfter is how many beats in a row may time out on a connection that says it is up before the
// registry makes it reconnect: a link that died silently (a peer's packets dropped, a NAT or bridge that
// lost the flow) looks connected until the client's pings run out, minutes by default, and meanwhile the
// guest goes stale.
const reconnectAfter = 3

// Registry is a running heartbeat.
type Registry struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	instance string
	every    time.Duration
	snapshot Snapshot
	log      *slog.Logger

	mu    sync.Mutex
	kv    jetstream.KeyValue
	beats atomic.Int64
	last  atomic.Value // error of the last beat (errBox)

	stop    chan struct{}
	done    chan struct{}
	ctx     context.Context // cancelled by Stop: a beat in flight ends at once
	cancelC context.CancelFunc
}

type errBox struct{ err error }

// Start begins beating at once and then every interval.
func Start(nc *nats.Conn, instance string, every time.Duration, snapshot Snapshot, log *slog.Logger) (*Registry, error) {
	if err := guestv1.ValidateInstance(instance); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "JetStream")
	}
	r := &Registry{nc: nc, js: js, instance: instance, every: every, snapshot: snapshot, log: log.With("component", "registry"),
		stop: make(chan struct{}), done: make(chan struct{})}
	r.ctx, r.cancelC = context.WithCancel(context.Background())
	r.last.Store(errBox{})
	go r.loop()
	return r, nil
}

func (r *Registry) loop() {
	defer close(r.done)
	t := time.NewTicker(r.every)
	defer t.Stop()
	failing, timeouts := false, 0
	for {
		err := r.Beat()
		switch {
		case err != nil && !failing:
			r.log.Warn("heartbeat failed; retrying every beat", "error", err)
			failing = true
		case err != nil:
			r.log.Debug("heartbeat still failing", "error", err)
		case failing:
			r.log.Info("heartbeat recovered")
			failing = false
		}
		if err != nil && errors.Is(err, context.DeadlineExceeded) && r.nc.IsConnected() {
			timeouts++
		} else {
			timeouts = 0
		}
		if timeouts >= reconnectAfter {
			r.log.Warn("heartbeats time out on a connection that looks up; forcing a NATS reconnect", "timeouts", timeouts)
			if ferr := r.nc.ForceReconnect(); ferr != nil {
				r.log.Warn("forced reconnect refused", "error", ferr)
			}
			timeouts = 0
		}
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
	}
}

// Beat writes the registration once.
func (r *Registry) Beat() error {
	ctx, cancel := context.WithTimeout(r.ctx, callTimeout)
	defer cancel()
	err := r.beat(ctx)
	r.last.Store(errBox{err})
	if err == nil {
		r.beats.Add(1)
	}
	return err
}

func (r *Registry) beat(ctx context.Context) error {
	kv, err := r.bucket(ctx)
	if err != nil {
		return err
	}
	reg := r.snapshot(ctx)
	reg.Heartbeat = time.Now().UTC()
	reg.HeartbeatMs = r.every.Milliseconds()
	b, err := json.Marshal(reg)
	if err != nil {
		return errs.Wrap(errs.Internal, err, "encode the registration")
	}
	if _, err := kv.Put(ctx, r.instance, b); err != nil {
		r.mu.Lock()
		r.kv = nil // reopen next time (the bucket may have been deleted and re-made)
		r.mu.Unlock()
		return errs.Wrap(errs.Unavailable, err, "write the registration to %s", guestv1.RegistryBucket)
	}
	return nil
}

// bucket opens the registry bucket, creating it when missing.
func (r *Registry) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.kv != nil {
		return r.kv, nil
	}
	kv, err := r.js.KeyValue(ctx, guestv1.RegistryBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = r.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      guestv1.RegistryBucket,
			Description: "Trove guests: one registration per instance, rewritten on every agent heartbeat",
			History:     1,
			TTL:         BucketTTL,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = r.js.KeyValue(ctx, guestv1.RegistryBucket)
		}
	}
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "open the guest registry %s", guestv1.RegistryBucket)
	}
	r.kv = kv
	return kv, nil
}

// Beats counts successful heartbeats.
func (r *Registry) Beats() int64 { return r.beats.Load() }

// LastError is the last beat's error (nil when it succeeded).
func (r *Registry) LastError() error { return r.last.Load().(errBox).err }

// Stop ends the heartbeat (the record is left to go stale).
func (r *Registry) Stop() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	r.cancelC()
	<-r.done
}
