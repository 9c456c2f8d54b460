package guestclient

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/stream"
)

// Live finds a guest in the registry and checks, before a job commits to it, that its agent is alive
// (heartbeat fresh) and its engine healthy; wantEngine, if set, must be the guest's engine. It returns the
// registration and a client for the guest.
func Live(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, instance, wantEngine string, opts stream.Options) (guestv1.Registration, *Client, error) {
	if err := guestv1.ValidateInstance(instance); err != nil {
		return guestv1.Registration{}, nil, err
	}
	kv, err := js.KeyValue(ctx, guestv1.RegistryBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return guestv1.Registration{}, nil, errs.NotFoundf("no guest %q is registered (no guest has ever registered)", instance)
	}
	if err != nil {
		return guestv1.Registration{}, nil, errs.Wrap(errs.Unavailable, err, "open the guest registry %s", guestv1.RegistryBucket)
	}
	reg, err := Guest(ctx, kv, instance)
	if err != nil {
		return reg, nil, err
	}
	if now := time.Now(); reg.Stale(now) {
		return reg, nil, errs.Unavailablef("guest %s is stale: its agent's last heartbeat was %s ago", instance, reg.Age(now).Round(time.Second))
	}
	if wantEngine != "" && reg.Engine != wantEngine {
		return reg, nil, errs.BadRequestf("guest %s runs %s, not %s (wrong engine)", instance, reg.Engine, wantEngine)
	}
	c, err := New(nc, instance, opts)
	if err != nil {
		return reg, nil, err
	}
	return reg, c, nil
}

// CallerPublish lists what a service that drives guests publishes to, beyond its inbox: requests to any
// guest's agent, and reads of the guest registry (stream info to open the bucket, direct gets of records).
func CallerPublish() []string {
	stream := "KV_" + guestv1.RegistryBucket
	return []string{
		"trove.guest.*.>",
		"$JS.API.STREAM.INFO." + stream,
		"$JS.API.DIRECT.GET." + stream + ".$KV." + guestv1.RegistryBucket + ".>",
	}
}
