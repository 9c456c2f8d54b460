package rpc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/natstest"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/telemetry/telemetrytest"
)

// These responders are plain subscriptions, not micro services: they produce reply shapes a micro service
// built with package service never sends (header-only errors, body-only errors), which clients must still
// read correctly.
func respond(t *testing.T, nc *nats.Conn, subject string, reply func(m *nats.Msg) *nats.Msg) {
	t.Helper()
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) { _ = m.RespondMsg(reply(m)) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestReplyShapes(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	respond(t, nc, "t.headers", func(*nats.Msg) *nats.Msg {
		return &nats.Msg{Header: nats.Header{"Nats-Service-Error": {"slot busy"}, "Nats-Service-Error-Code": {"409"}}}
	})
	respond(t, nc, "t.body", func(*nats.Msg) *nats.Msg {
		return &nats.Msg{Data: errs.Body(errs.New(errs.Corrupt, "frame 3 checksum mismatch"))}
	})
	respond(t, nc, "t.field", func(*nats.Msg) *nats.Msg {
		return &nats.Msg{Data: []byte(`{"state":"failed","error":{"code":"internal","message":"x"}}`)}
	})
	respond(t, nc, "t.echo", func(m *nats.Msg) *nats.Msg {
		// Echo the body and report whether trace context arrived.
		h := nats.Header{"Got-Traceparent": {m.Header.Get("traceparent")}}
		return &nats.Msg{Header: h, Data: m.Data}
	})
	respond(t, nc, "t.garbage", func(*nats.Msg) *nats.Msg { return &nats.Msg{Data: []byte("not json")} })

	cli := srv.Connect()
	telemetrytest.New(t) // a recording tracer provider, so there is trace context to send
	var ce *errs.Error
	if err := rpc.Call(ctx5(t), cli, "t.headers", nil, nil); !errors.As(err, &ce) || ce.Code != errs.Conflict || ce.Message != "slot busy" {
		t.Fatalf("header-only error: %#v", err)
	}
	if err := rpc.Call(ctx5(t), cli, "t.body", nil, nil); !errors.As(err, &ce) || ce.Code != errs.Corrupt || ce.Message != "frame 3 checksum mismatch" {
		t.Fatalf("body-only error: %#v", err)
	}
	var doc struct {
		State string `json:"state"`
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := rpc.Call(ctx5(t), cli, "t.field", nil, &doc); err != nil || doc.State != "failed" || doc.Error.Code != "internal" {
		t.Fatalf("a document with an error field is a reply, not an error: %+v %v", doc, err)
	}

	var out map[string]int
	if err := rpc.Call(ctx5(t), cli, "t.echo", map[string]int{"n": 7}, &out); err != nil || out["n"] != 7 {
		t.Fatalf("echo: %v %v", out, err)
	}
	msg, err := rpc.CallMsg(ctx5(t), cli, &nats.Msg{Subject: "t.echo", Data: []byte("raw"), Header: nats.Header{"X-Keep": {"1"}}})
	if err != nil || string(msg.Data) != "raw" {
		t.Fatalf("raw: %v", err)
	}
	if msg.Header.Get("Got-Traceparent") == "" {
		t.Fatalf("no traceparent header was sent")
	}

	if err := rpc.Call(ctx5(t), cli, "t.garbage", nil, &out); !errs.Is(err, errs.Internal) {
		t.Fatalf("undecodable reply: %v", err)
	}
	if err := rpc.Call(ctx5(t), cli, "t.echo", make(chan int), nil); !errs.Is(err, errs.Internal) {
		t.Fatalf("unencodable request: %v", err)
	}
}

func TestTransportFailures(t *testing.T) {
	srv := natstest.Start(t)
	cli := srv.Connect()

	if err := rpc.Call(ctx5(t), nil, "t.x", nil, nil); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("nil conn: %v", err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := rpc.Call(cancelled, cli, "t.x", nil, nil); !errs.Is(err, errs.Cancelled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
	closed := srv.Connect()
	closed.Close()
	if err := rpc.Call(ctx5(t), closed, "t.x", nil, nil); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("closed conn: %v", err)
	}
}
