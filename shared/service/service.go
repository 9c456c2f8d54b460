// Package service runs a trove family's NATS micro service: versioned subjects (trove.<family>.v1.<name>),
// a queue group so replicas share requests, $SRV discovery, and on every request trace context, a server
// span, panic recovery, metrics, coded errors and a log line per failure.
//
// micro delivers an endpoint's requests one at a time per instance (one subscription each). A handler must
// therefore answer fast: validate, start the work, reply. Work that can take longer than a request timeout
// belongs in a job (JetStream) or a bounded goroutine, never in the handler.
package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
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

// Handler answers one request. The returned value is sent as JSON (nil: empty body); an error is sent as a
// coded error reply (errs.From classifies uncoded errors as Internal).
type Handler func(ctx context.Context, req micro.Request) (any, error)

// Endpoint is one operation of a family.
type Endpoint struct {
	Name     string // no dots; the subject is trove.<family>.v1.<Name>
	Handler  Handler
	Mutating bool // changes state (shown as endpoint metadata "mutating": "true"; used for permissions/docs)
	// Concurrency > 0 runs the handler in a goroutine of its own, at most Concurrency at once for this
	// endpoint (further requests wait for a slot, in arrival order): for handlers that wait, such as long
	// polls. Their context is cancelled by Stop, which waits for them to reply. 0 runs the handler on the
	// endpoint's subscription, one request at a time.
	Concurrency int
}

// Spec describes a family's service.
type Spec struct {
	Family      string // "storage" -> service "trove-storage", group "trove.storage.v1", queue group "trove-storage"
	Version     string // SemVer
	Description string
	Endpoints   []Endpoint
	Metadata    map[string]string // e.g. strategy names; shown in $SRV INFO
	// Group overrides the subject prefix of the endpoints (default Group(Family)): a service whose every
	// instance has subjects of its own (one guest's "trove.guest.<instance>"). Literal tokens only.
	Group string
	// QueueGroup overrides the queue group (default ServiceName(Family)).
	QueueGroup string
	// MaxRequestBytes refuses a larger request body with BadRequest before the handler runs (0: only the
	// NATS server's max payload limits it).
	MaxRequestBytes int
}

// group is the subject prefix of the spec's endpoints.
func (s Spec) group() string {
	if s.Group != "" {
		return s.Group
	}
	return Group(s.Family)
}

// queueGroup is the spec's queue group.
func (s Spec) queueGroup() string {
	if s.QueueGroup != "" {
		return s.QueueGroup
	}
	return ServiceName(s.Family)
}

// ServiceName is the micro service name of a family ("trove-<family>"); it is also the queue group.
func ServiceName(family string) string { return "trove-" + family }

// Subject is the request subject of an endpoint of a family.
func Subject(family, endpoint string) string { return Group(family) + "." + endpoint }

// Group is the subject prefix of a family's endpoints.
func Group(family string) string { return "trove." + family + ".v1" }

var (
	tokenRe        = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	subjectTokenRe = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
)

// validSubjectPrefix accepts dot-separated literal tokens of letters, digits, '-' and '_'.
func validSubjectPrefix(s string) bool {
	if s == "" || len(s) > 200 {
		return false
	}
	for _, tok := range strings.Split(s, ".") {
		if !subjectTokenRe.MatchString(tok) {
			return false
		}
	}
	return true
}

// Service is a running family service.
type Service struct {
	spec    Spec
	micro   micro.Service
	tracer  trace.Tracer
	metrics *telemetry.Metrics
	log     *slog.Logger
	nc      *nats.Conn

	// Concurrent endpoints' goroutines: cancelled and waited for by Stop.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start registers the family's endpoints on nc and starts serving. tel and m may be nil (then the global
// tracer is used and nothing is counted).
func Start(nc *nats.Conn, spec Spec, tel *telemetry.Telemetry, m *telemetry.Metrics) (*Service, error) {
	if nc == nil {
		return nil, errs.Unavailablef("service %s: no NATS connection", spec.Family)
	}
	if !tokenRe.MatchString(spec.Family) {
		return nil, errs.BadRequestf("service family %q must be lower-case letters, digits, '-' or '_'", spec.Family)
	}
	if len(spec.Endpoints) == 0 {
		return nil, errs.BadRequestf("service %s has no endpoints", spec.Family)
	}
	if spec.Group != "" && !validSubjectPrefix(spec.Group) {
		return nil, errs.BadRequestf("service %s: group %q must be dot-separated tokens of letters, digits, '-' or '_' (no wildcards)", spec.Family, spec.Group)
	}
	if spec.QueueGroup != "" && !validSubjectPrefix(spec.QueueGroup) {
		return nil, errs.BadRequestf("service %s: queue group %q must be dot-separated tokens of letters, digits, '-' or '_'", spec.Family, spec.QueueGroup)
	}
	seen := map[string]bool{}
	for _, ep := range spec.Endpoints {
		if !tokenRe.MatchString(ep.Name) {
			return nil, errs.BadRequestf("service %s: endpoint name %q must be lower-case letters, digits, '-' or '_' (no dots)", spec.Family, ep.Name)
		}
		if seen[ep.Name] {
			return nil, errs.BadRequestf("service %s: endpoint %q is declared twice", spec.Family, ep.Name)
		}
		seen[ep.Name] = true
		if ep.Handler == nil {
			return nil, errs.BadRequestf("service %s: endpoint %q has no handler", spec.Family, ep.Name)
		}
		if ep.Concurrency < 0 {
			return nil, errs.BadRequestf("service %s: endpoint %q has a negative concurrency", spec.Family, ep.Name)
		}
	}

	s := &Service{spec: spec, metrics: m, nc: nc, log: slog.Default().With("service", ServiceName(spec.Family))}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if tel != nil {
		s.tracer = tel.Tracer()
	} else {
		s.tracer = otel.GetTracerProvider().Tracer(telemetry.InstrumentationName)
	}

	svc, err := micro.AddService(nc, micro.Config{
		Name:        ServiceName(spec.Family),
		Version:     spec.Version,
		Description: spec.Description,
		Metadata:    spec.Metadata,
		QueueGroup:  spec.queueGroup(),
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			s.log.Error("nats subscription error", "subject", e.Subject, "error", e.Description)
		},
	})
	if err != nil {
		s.cancel()
		if errors.Is(err, micro.ErrConfigValidation) {
			return nil, errs.Wrap(errs.BadRequest, err, "service %s (version must be SemVer, e.g. 1.2.3)", spec.Family)
		}
		return nil, errs.Wrap(errs.Unavailable, err, "start service %s", spec.Family)
	}
	s.micro = svc
	group := svc.AddGroup(spec.group())
	for _, ep := range spec.Endpoints {
		md := map[string]string{"mutating": strconv.FormatBool(ep.Mutating)}
		if err := group.AddEndpoint(ep.Name, s.handler(ep), micro.WithEndpointMetadata(md)); err != nil {
			_ = svc.Stop()
			s.cancel()
			return nil, errs.Wrap(errs.Unavailable, err, "service %s: add endpoint %s", spec.Family, ep.Name)
		}
	}
	// Make sure the server knows the subscriptions before callers are told the service is up. While NATS is
	// unreachable this fails; the subscriptions are then sent on reconnect, so it is not an error.
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		s.log.Warn("service started while NATS is unreachable; it serves once NATS is back", "error", err)
	}
	return s, nil
}

// Micro is the underlying micro service (Info, Stats).
func (s *Service) Micro() micro.Service { return s.micro }

// Stop stops taking requests: the endpoint subscriptions are drained, so requests already delivered are
// still answered. Handlers of concurrent endpoints still running have their context cancelled and are waited
// for. Drain the NATS connection afterwards to wait for the rest. Safe to call twice.
func (s *Service) Stop() error {
	if s == nil || s.micro == nil {
		return nil
	}
	err := s.micro.Stop()
	s.cancel()
	s.wg.Wait()
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "stop service %s", s.spec.Family)
	}
	return nil
}

func (s *Service) handler(ep Endpoint) micro.Handler {
	name := s.spec.Family + "." + ep.Name
	subject := s.spec.group() + "." + ep.Name
	serve := s.serve(ep, name, subject)
	if ep.Concurrency == 0 {
		return micro.HandlerFunc(func(req micro.Request) { serve(context.Background(), req) })
	}
	slots := make(chan struct{}, ep.Concurrency)
	return micro.HandlerFunc(func(req micro.Request) {
		select {
		case slots <- struct{}{}: // waits here, on the subscription, while every slot is taken
		case <-s.ctx.Done():
			serve(s.ctx, req) // stopping: answer at once with a cancelled context
			return
		}
		s.wg.Add(1)
		detached := detachedRequest{Request: req, nc: s.nc}
		go func() {
			defer s.wg.Done()
			defer func() { <-slots }()
			serve(s.ctx, detached)
		}()
	})
}

// serve answers one request with base as the parent of the handler's context.
func (s *Service) serve(ep Endpoint, name, subject string) func(base context.Context, req micro.Request) {
	return func(base context.Context, req micro.Request) {
		start := time.Now()
		ctx := telemetry.Extract(base, nats.Header(req.Headers()))
		ctx, span := s.tracer.Start(ctx, name,
			trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(
				attribute.String("messaging.system", "nats"),
				attribute.String("messaging.destination.name", subject),
				attribute.String("messaging.operation.type", "process"),
				attribute.Int("messaging.message.body.size", len(req.Data())),
			))
		defer span.End()

		var resp any
		var panicked bool
		var err error
		if limit := s.spec.MaxRequestBytes; limit > 0 && len(req.Data()) > limit {
			err = errs.BadRequestf("%s: the request is %d bytes; the limit is %d (send large data as a stream)", name, len(req.Data()), limit)
		} else {
			resp, panicked, err = s.invoke(ctx, name, ep.Handler, req)
		}
		var body []byte
		if err == nil && resp != nil {
			if body, err = json.Marshal(resp); err != nil {
				s.log.Error("cannot encode reply", "endpoint", name, "error", err)
				err = errs.Internalf("%s produced a reply that cannot be encoded as JSON; see the service log", name)
			}
		}

		code := errs.CodeOf(err)
		if err != nil {
			e := errs.From(err)
			span.SetAttributes(attribute.String("error.type", string(e.Code)))
			span.SetStatus(codes.Error, e.Message)
			level := slog.LevelWarn
			if e.Code == errs.Internal {
				level = slog.LevelError
			}
			if !panicked { // a panic has logged its own line, with the stack
				s.log.Log(ctx, level, "request failed", "endpoint", name, "code", e.Code, "error", e.Message,
					"trace_id", span.SpanContext().TraceID().String(), "duration", time.Since(start))
			}
			if rerr := req.Error(strconv.Itoa(e.Code.Status()), headerSafe(e.Message), errs.Body(e)); rerr != nil {
				s.log.Error("cannot send error reply", "endpoint", name, "error", rerr)
			}
		} else if rerr := req.Respond(body); rerr != nil {
			s.log.Error("cannot send reply", "endpoint", name, "error", rerr)
		}
		if s.metrics != nil {
			s.metrics.Request(ctx, name, code, time.Since(start))
		}
	}
}

// invoke runs h, turning a panic into an Internal error; the stack goes to the log, not on the wire.
func (s *Service) invoke(ctx context.Context, name string, h Handler, req micro.Request) (resp any, panicked bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("handler panicked", "endpoint", name, "panic", fmt.Sprint(p),
				"trace_id", trace.SpanContextFromContext(ctx).TraceID().String(), "stack", string(debug.Stack()))
			resp, panicked, err = nil, true, errs.Internalf("%s failed unexpectedly; see the service log", name)
		}
	}()
	resp, err = h(ctx, req)
	return resp, false, err
}

// headerSafe makes a message fit a NATS header value (one line) and never empty (micro requires one).
func headerSafe(msg string) string {
	msg = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, msg)
	if msg == "" {
		return "error"
	}
	return msg
}

// Validator is implemented by requests that check themselves after decoding (JSON calls it).
type Validator interface{ Validate() error }

// JSON adapts a typed handler: the request body is decoded into Req (an empty body is the zero Req; unknown
// fields are ignored so older services accept newer clients; malformed JSON or trailing data is a
// BadRequest naming the problem), Validate is called when Req has it (an uncoded error becomes BadRequest),
// and the Resp is the reply.
func JSON[Req any, Resp any](h func(ctx context.Context, req Req) (Resp, error)) Handler {
	return func(ctx context.Context, r micro.Request) (any, error) {
		var req Req
		if err := decode(r.Data(), &req); err != nil {
			return nil, err
		}
		if v, ok := any(&req).(Validator); ok {
			if err := v.Validate(); err != nil {
				if errs.CodeOf(err) == errs.Internal {
					return nil, errs.Wrap(errs.BadRequest, err, "invalid request")
				}
				return nil, err
			}
		}
		return h(ctx, req)
	}
}

func decode(data []byte, into any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(into); err != nil {
		return errs.BadRequestf("malformed JSON request: %s", describeJSONError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return errs.BadRequestf("malformed JSON request: unexpected data after the JSON document at byte %d", dec.InputOffset())
	}
	return nil
}

func describeJSONError(err error) string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Sprintf("%s (at byte %d)", syntax.Error(), syntax.Offset)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "the document"
		} else {
			field = "field " + strconv.Quote(field)
		}
		return fmt.Sprintf("%s must be %s, not a JSON %s (at byte %d)", field, typ.Type, typ.Value, typ.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the document ends early"
	}
	return err.Error()
}
