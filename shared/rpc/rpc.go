// Package rpc is the client side of a request/reply call to a trove micro service over NATS.
package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/telemetry"
)

// DefaultTimeout bounds a call whose context has no deadline.
const DefaultTimeout = 10 * time.Second

// Call sends req as JSON to subject with ctx's trace context in the headers, waits for the reply until ctx's
// deadline (DefaultTimeout if it has none) and decodes the JSON reply into resp (skipped when resp is nil).
// A nil req sends an empty body. Every failure is an *errs.Error: the service's own error with its code,
// Unavailable when no instance of the service runs or NATS is unreachable, Timeout when no reply came in time.
func Call(ctx context.Context, nc *nats.Conn, subject string, req, resp any) error {
	var data []byte
	if req != nil {
		var err error
		if data, err = json.Marshal(req); err != nil {
			return errs.Wrap(errs.Internal, err, "encode request for %s", subject)
		}
	}
	reply, err := CallMsg(ctx, nc, &nats.Msg{Subject: subject, Data: data})
	if err != nil {
		return err
	}
	if resp == nil || len(bytes.TrimSpace(reply.Data)) == 0 {
		return nil
	}
	if err := json.Unmarshal(reply.Data, resp); err != nil {
		return errs.Wrap(errs.Internal, err, "decode reply from %s", subject)
	}
	return nil
}

// CallMsg is Call with raw messages: msg's headers are kept (trace context is added) and the reply is
// returned as it came, unless it is an error reply, which becomes an *errs.Error.
func CallMsg(ctx context.Context, nc *nats.Conn, msg *nats.Msg) (*nats.Msg, error) {
	if nc == nil {
		return nil, errs.Unavailablef("no NATS connection to call %s", msg.Subject)
	}
	if err := ctx.Err(); err != nil {
		return nil, errs.Wrap(errs.CodeOf(err), err, "call %s", msg.Subject)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	ctx, span := otel.GetTracerProvider().Tracer(telemetry.InstrumentationName).Start(ctx, "rpc "+msg.Subject,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", msg.Subject),
			attribute.String("messaging.operation.type", "send"),
			attribute.Int("messaging.message.body.size", len(msg.Data)),
		))
	defer span.End()
	telemetry.InjectMsg(ctx, msg)

	start := time.Now()
	reply, err := nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		e := requestError(ctx, msg.Subject, time.Since(start), err)
		recordError(span, e)
		return nil, e
	}
	if e := replyError(reply); e != nil {
		recordError(span, e)
		return nil, e
	}
	return reply, nil
}

func recordError(span trace.Span, e *errs.Error) {
	span.SetAttributes(attribute.String("error.type", string(e.Code)))
	span.SetStatus(codes.Error, e.Message)
}

// requestError turns a failed request into a coded error that says what to do about it.
func requestError(ctx context.Context, subject string, waited time.Duration, err error) *errs.Error {
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return errs.Unavailablef("no %s service is running (no responders on NATS); start one or check its NATS permissions", subject)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return errs.New(errs.Timeout, "no reply from %s within %s; the service may be overloaded or stuck", subject, waited.Round(time.Millisecond))
	case errors.Is(err, context.Canceled):
		return errs.New(errs.Cancelled, "call to %s cancelled", subject)
	case errors.Is(err, nats.ErrMaxPayload):
		return errs.Wrap(errs.BadRequest, err, "request to %s is larger than NATS accepts; send large data as a stream", subject)
	case errors.Is(err, nats.ErrBadSubject), errors.Is(err, nats.ErrInvalidMsg):
		return errs.Wrap(errs.BadRequest, err, "call %s", subject)
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrNoServers):
		return errs.Wrap(errs.Unavailable, err, "NATS is not reachable to call %s", subject)
	}
	if ctx.Err() != nil {
		return errs.Wrap(errs.CodeOf(ctx.Err()), err, "call %s", subject)
	}
	return errs.Wrap(errs.Unavailable, err, "call %s", subject)
}

// replyError reads an error reply: the micro error headers (with the errs JSON body when present), or,
// without headers, a body that is nothing but an errs envelope ({"error":{...}}). A successful reply whose
// document merely has an "error" field among others is not an error.
func replyError(reply *nats.Msg) *errs.Error {
	status := reply.Header.Get(micro.ErrorCodeHeader)
	desc := reply.Header.Get(micro.ErrorHeader)
	if status != "" || desc != "" {
		return errs.Parse(status, desc, reply.Data)
	}
	data := bytes.TrimSpace(reply.Data)
	if len(data) == 0 || data[0] != '{' {
		return nil
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(data, &fields) != nil || len(fields) != 1 || fields["error"] == nil {
		return nil
	}
	return errs.Parse("", "", data)
}
