package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/natstest"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/service"
	"troveng.dev/shared/telemetry"
	"troveng.dev/shared/telemetry/telemetrytest"
)

type echoReq struct {
	Text  string `json:"text"`
	Count int    `json:"count"`
}

type echoResp struct {
	Text     string `json:"text"`
	Instance string `json:"instance"`
}

func (r echoReq) Validate() error {
	if r.Count < 0 {
		return errors.New("count must not be negative")
	}
	return nil
}

// testSpec is a family with an echo endpoint and endpoints that fail in each way a handler can fail.
func testSpec(family, instance string) service.Spec {
	return service.Spec{
		Family:      family,
		Version:     "1.2.3",
		Description: "test service",
		Metadata:    map[string]string{"strategies": "fs,s3"},
		Endpoints: []service.Endpoint{
			{Name: "echo", Handler: service.JSON(func(ctx context.Context, r echoReq) (echoResp, error) {
				return echoResp{Text: r.Text, Instance: instance}, nil
			})},
			{Name: "missing", Handler: service.JSON(func(ctx context.Context, r echoReq) (*echoResp, error) {
				return nil, errs.NotFoundf("backup %q does not exist", r.Text)
			})},
			{Name: "plain_error", Handler: func(ctx context.Context, _ micro.Request) (any, error) {
				return nil, errors.New("disk on fire\nsecond line")
			}},
			{Name: "boom", Mutating: true, Handler: func(ctx context.Context, _ micro.Request) (any, error) {
				panic("handler bug")
			}},
			{Name: "nothing", Handler: func(ctx context.Context, _ micro.Request) (any, error) {
				return nil, nil
			}},
		},
	}
}

type env struct {
	srv *natstest.Server
	nc  *nats.Conn // the service's connection
	cli *nats.Conn // the client's connection
	tel *telemetry.Telemetry
	svc *service.Service
}

func start(t *testing.T, family string) *env {
	t.Helper()
	srv := natstest.Start(t)
	tel, _ := telemetrytest.New(t)
	m, err := telemetry.NewMetrics(tel.Meter())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{srv: srv, nc: srv.Connect(), cli: srv.Connect(), tel: tel}
	e.svc, err = service.Start(e.nc, testSpec(family, "a"), tel, m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.svc.Stop() })
	return e
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestCallSuccess(t *testing.T) {
	e := start(t, "echotest")
	var out echoResp
	if err := rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.echotest.v1.echo", echoReq{Text: "hello"}, &out); err != nil {
		t.Fatal(err)
	}
	if out.Text != "hello" || out.Instance != "a" {
		t.Fatalf("reply %+v", out)
	}
	// An empty body is the zero request; a nil reply is an empty body.
	if err := rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.echotest.v1.echo", nil, &out); err != nil || out.Text != "" {
		t.Fatalf("empty request: %+v %v", out, err)
	}
	if err := rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.echotest.v1.nothing", nil, &out); err != nil {
		t.Fatal(err)
	}
	// No deadline on the context: the default timeout applies and the call still works.
	if err := rpc.Call(context.Background(), e.cli, "trove.echotest.v1.echo", echoReq{Text: "x"}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestBadRequests(t *testing.T) {
	e := start(t, "echotest")
	for _, tc := range []struct {
		body string
		want string // in the message
	}{
		{`{"text":`, "ends early"},
		{`{"text": nope}`, "at byte"},
		{`{"text":"a"} {"text":"b"}`, "after the JSON document"},
		{`{"text":"a"}x`, "after the JSON document"},
		{`{"count":"three"}`, `field "count" must be int`},
		{`[1,2]`, "must be"},
		{`{"count":-1}`, "count must not be negative"},
	} {
		_, err := rpc.CallMsg(ctxT(t, 5*time.Second), e.cli, &nats.Msg{Subject: "trove.echotest.v1.echo", Data: []byte(tc.body)})
		if !errs.Is(err, errs.BadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("body %s: want bad_request mentioning %q, got %v", tc.body, tc.want, err)
		}
	}
	// Unknown fields are accepted (a newer client talking to an older service).
	if err := rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.echotest.v1.echo", map[string]any{"text": "a", "new_field": 1}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestErrorReplies(t *testing.T) {
	e := start(t, "echotest")
	err := rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.echotest.v1.missing", echoReq{Text: "b1"}, nil)
	var ce *errs.Error
	if !errors.As(err, &ce) || ce.Code != errs.NotFound || ce.Message != `backup "b1" does not exist` {
		t.Fatalf("want not_found with the handler's message, got %#v", err)
	}

	// The raw reply carries the code in micro's headers and in the JSON body.
	reply, err := e.cli.RequestWithContext(ctxT(t, 5*time.Second), "trove.echotest.v1.missing", []byte(`{"text":"b1"}`))
	if err != nil {
		t.Fatal(err)
	}
	if reply.Header.Get(micro.ErrorCodeHeader) != "404" || reply.Header.Get(micro.ErrorHeader) != `backup "b1" does not exist` {
		t.Fatalf("headers %v", reply.Header)
	}
	if p := errs.Parse("", "", reply.Data); p == nil || p.Code != errs.NotFound {
		t.Fatalf("body %s", reply.Data)
	}

	// An uncoded error is Internal; a multi-line message still fits the header.
	reply, err = e.cli.RequestWithContext(ctxT(t, 5*time.Second), "trove.echotest.v1.plain_error", nil)
	if err != nil {
		t.Fatal(err)
	}
	if reply.Header.Get(micro.ErrorCodeHeader) != "500" || reply.Header.Get(micro.ErrorHeader) != "disk on fire second line" {
		t.Fatalf("headers %v", reply.Header)
	}
	if err := rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.echotest.v1.plain_error", nil, nil); !errs.Is(err, errs.Internal) || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("got %v", err)
	}
}

func TestPanicIsInternalAndServiceKeepsServing(t *testing.T) {
	e := start(t, "echotest")
	for range 3 {
		err := rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.echotest.v1.boom", nil, nil)
		if !errs.Is(err, errs.Internal) {
			t.Fatalf("want internal, got %v", err)
		}
		if strings.Contains(err.Error(), "handler bug") || strings.Contains(err.Error(), "goroutine") {
			t.Fatalf("panic details leaked onto the wire: %v", err)
		}
	}
	if err := rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.echotest.v1.boom", nil, nil); !errs.Is(err, errs.Internal) {
		t.Fatalf("boom endpoint stopped answering: %v", err)
	}
	var out echoResp
	if err := rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.echotest.v1.echo", echoReq{Text: "still here"}, &out); err != nil || out.Text != "still here" {
		t.Fatalf("after panics: %+v %v", out, err)
	}
}

func TestNoServiceIsUnavailableQuickly(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	begin := time.Now()
	err := rpc.Call(ctxT(t, 5*time.Second), nc, "trove.nobody.v1.create", echoReq{}, nil)
	if !errs.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "no trove.nobody.v1.create service is running") {
		t.Fatalf("want unavailable, got %v", err)
	}
	if d := time.Since(begin); d > time.Second {
		t.Fatalf("took %s; no-responders should answer at once", d)
	}
}

func TestTimeout(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	release := make(chan struct{})
	defer close(release)
	svc, err := service.Start(nc, service.Spec{Family: "slow", Version: "0.1.0", Endpoints: []service.Endpoint{
		{Name: "wait", Handler: func(ctx context.Context, _ micro.Request) (any, error) { <-release; return nil, nil }},
	}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	begin := time.Now()
	err = rpc.Call(ctxT(t, 100*time.Millisecond), srv.Connect(), "trove.slow.v1.wait", nil, nil)
	if !errs.Is(err, errs.Timeout) {
		t.Fatalf("want timeout, got %v", err)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Fatalf("timeout took %s", d)
	}
}

func TestDiscovery(t *testing.T) {
	e := start(t, "echotest")
	ping, err := e.cli.RequestWithContext(ctxT(t, 5*time.Second), "$SRV.PING.trove-echotest", nil)
	if err != nil {
		t.Fatal(err)
	}
	var p micro.Ping
	if err := json.Unmarshal(ping.Data, &p); err != nil || p.Name != "trove-echotest" || p.Version != "1.2.3" {
		t.Fatalf("ping %s %v", ping.Data, err)
	}

	msg, err := e.cli.RequestWithContext(ctxT(t, 5*time.Second), "$SRV.INFO.trove-echotest", nil)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	if info.Metadata["strategies"] != "fs,s3" || info.Description != "test service" {
		t.Fatalf("info %s", msg.Data)
	}
	subjects := map[string]micro.EndpointInfo{}
	for _, ep := range info.Endpoints {
		subjects[ep.Subject] = ep
	}
	for _, name := range []string{"echo", "missing", "plain_error", "boom", "nothing"} {
		ep, ok := subjects["trove.echotest.v1."+name]
		if !ok {
			t.Fatalf("endpoint %s missing from INFO: %s", name, msg.Data)
		}
		if ep.QueueGroup != "trove-echotest" {
			t.Fatalf("endpoint %s queue group %q", name, ep.QueueGroup)
		}
	}
	if subjects["trove.echotest.v1.boom"].Metadata["mutating"] != "true" || subjects["trove.echotest.v1.echo"].Metadata["mutating"] != "false" {
		t.Fatalf("mutating metadata: %s", msg.Data)
	}
}

func TestQueueGroupSharesRequests(t *testing.T) {
	srv := natstest.Start(t)
	a, err := service.Start(srv.Connect(), testSpec("shared", "a"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	b, err := service.Start(srv.Connect(), testSpec("shared", "b"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	cli := srv.Connect()
	seen := map[string]int{}
	for range 60 {
		var out echoResp
		if err := rpc.Call(ctxT(t, 5*time.Second), cli, "trove.shared.v1.echo", echoReq{Text: "x"}, &out); err != nil {
			t.Fatal(err)
		}
		seen[out.Instance]++
	}
	// Each request is answered by exactly one instance (one reply each), and both instances get some.
	if seen["a"] == 0 || seen["b"] == 0 || seen["a"]+seen["b"] != 60 {
		t.Fatalf("requests per instance: %v", seen)
	}
}

func TestTraceSpansClientAndServer(t *testing.T) {
	e := start(t, "tracetest")
	_, exp := telemetrytest.New(t)
	ctx, root := otel.Tracer("test").Start(ctxT(t, 5*time.Second), "test-root")
	if err := rpc.Call(ctx, e.cli, "trove.tracetest.v1.missing", echoReq{Text: "zz"}, nil); !errs.Is(err, errs.NotFound) {
		t.Fatalf("want not_found, got %v", err)
	}
	root.End()

	// The server span ends after the reply is sent; give it a moment.
	client, server, rootStub := findSpans(t, exp, root.SpanContext().TraceID())
	if client.Parent.SpanID() != rootStub.SpanContext.SpanID() {
		t.Fatalf("client span's parent is not the caller's span")
	}
	if server.Parent.SpanID() != client.SpanContext.SpanID() || !server.Parent.IsRemote() {
		t.Fatalf("server span's parent %s is not the client span %s", server.Parent.SpanID(), client.SpanContext.SpanID())
	}
	if client.SpanKind != trace.SpanKindClient || server.SpanKind != trace.SpanKindServer {
		t.Fatalf("kinds: client %v server %v", client.SpanKind, server.SpanKind)
	}
	for _, s := range []string{"client", "server"} {
		stub := client
		if s == "server" {
			stub = server
		}
		found := false
		for _, a := range stub.Attributes {
			if a.Key == "messaging.system" && a.Value.AsString() == "nats" {
				found = true
			}
		}
		if !found {
			t.Fatalf("%s span lacks messaging.system=nats: %v", s, stub.Attributes)
		}
	}
	if server.Status.Code.String() != "Error" || client.Status.Code.String() != "Error" {
		t.Fatalf("error status not recorded: client %v server %v", client.Status, server.Status)
	}
}

func findSpans(t *testing.T, exp *tracetest.InMemoryExporter, id trace.TraceID) (client, server, root tracetest.SpanStub) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		spans := telemetrytest.SpansOfTrace(exp, id)
		c, okc := telemetrytest.SpanNamed(spans, "rpc trove.tracetest.v1.missing")
		s, oks := telemetrytest.SpanNamed(spans, "tracetest.missing")
		r, okr := telemetrytest.SpanNamed(spans, "test-root")
		if okc && oks && okr {
			return c, s, r
		}
		if time.Now().After(deadline) {
			t.Fatalf("spans of the trace: %v", spans)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMetricsCountRequests(t *testing.T) {
	e := start(t, "metricstest")
	for range 3 {
		if err := rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.metricstest.v1.echo", echoReq{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	_ = rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.metricstest.v1.missing", echoReq{}, nil)
	_ = rpc.Call(ctxT(t, 5*time.Second), e.cli, "trove.metricstest.v1.boom", nil, nil)

	// The counter is recorded after the reply is sent; poll briefly.
	deadline := time.Now().Add(3 * time.Second)
	var text string
	for {
		rec := httptest.NewRecorder()
		e.tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		text = string(b)
		ok := true
		for _, re := range []string{
			`(?m)^trove_requests_total\{[^}]*code="ok"[^}]*endpoint="metricstest.echo"[^}]*\} 3$`,
			`(?m)^trove_requests_total\{[^}]*code="not_found"[^}]*endpoint="metricstest.missing"[^}]*\} 1$`,
			`(?m)^trove_requests_total\{[^}]*code="internal"[^}]*endpoint="metricstest.boom"[^}]*\} 1$`,
			`(?m)^trove_request_duration_seconds_count\{[^}]*code="ok"[^}]*endpoint="metricstest.echo"[^}]*\} 3$`,
		} {
			if !regexp.MustCompile(re).MatchString(text) {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks the request counts:\n%s", text)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStartRejectsBadSpecs(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	ok := service.Endpoint{Name: "x", Handler: func(context.Context, micro.Request) (any, error) { return nil, nil }}
	for name, spec := range map[string]service.Spec{
		"dotted family":   {Family: "a.b", Version: "1.0.0", Endpoints: []service.Endpoint{ok}},
		"dotted endpoint": {Family: "a", Version: "1.0.0", Endpoints: []service.Endpoint{{Name: "x.y", Handler: ok.Handler}}},
		"wildcard":        {Family: "a", Version: "1.0.0", Endpoints: []service.Endpoint{{Name: "*", Handler: ok.Handler}}},
		"no endpoints":    {Family: "a", Version: "1.0.0"},
		"no handler":      {Family: "a", Version: "1.0.0", Endpoints: []service.Endpoint{{Name: "x"}}},
		"duplicate":       {Family: "a", Version: "1.0.0", Endpoints: []service.Endpoint{ok, ok}},
		"not semver":      {Family: "a", Version: "one", Endpoints: []service.Endpoint{ok}},
	} {
		if _, err := service.Start(nc, spec, nil, nil); !errs.Is(err, errs.BadRequest) {
			t.Errorf("%s: want bad_request, got %v", name, err)
		}
	}
}

func TestStopDrainsRequestsInFlight(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	entered := make(chan struct{})
	var once sync.Once
	var answered atomic.Int32
	svc, err := service.Start(nc, service.Spec{Family: "drain", Version: "0.1.0", Endpoints: []service.Endpoint{
		{Name: "slow", Handler: func(ctx context.Context, _ micro.Request) (any, error) {
			once.Do(func() { close(entered) })
			time.Sleep(300 * time.Millisecond)
			answered.Add(1)
			return map[string]string{"ok": "yes"}, nil
		}},
	}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cli := srv.Connect()
	done := make(chan error, 1)
	go func() {
		var out map[string]string
		err := rpc.Call(ctxT(t, 5*time.Second), cli, "trove.drain.v1.slow", nil, &out)
		if err == nil && out["ok"] != "yes" {
			err = errors.New("wrong reply")
		}
		done <- err
	}()
	<-entered
	if err := service.Stopper(nil, svc, nc, nil)(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("request in flight during stop: %v", err)
	}
	if !nc.IsClosed() {
		t.Fatal("connection not closed after drain")
	}
	// With the only instance gone, callers learn at once that nobody serves the subject.
	if err := rpc.Call(ctxT(t, 5*time.Second), cli, "trove.drain.v1.slow", nil, nil); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("after stop: %v", err)
	}
}
