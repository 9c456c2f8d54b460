// Package telemetrytest gives tests a Telemetry whose spans are recorded in memory.
package telemetrytest

import (
	"context"
	"sync"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/shared/telemetry"
)

// The tracer provider is global, so every test in the process shares one; each test gets its own exporter,
// registered as a span processor for the test's lifetime. Parallel tests see each other's spans: filter them
// by trace id (SpansOfTrace).
var (
	once     sync.Once
	provider *sdktrace.TracerProvider
)

// Provider is the process-wide test tracer provider (always samples).
func Provider() *sdktrace.TracerProvider {
	once.Do(func() {
		provider = sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	})
	return provider
}

// New returns a Telemetry named after the test (own meter provider and Prometheus registry) and the
// exporter that receives every span ended while the test runs. Both are cleaned up when the test ends.
func New(t testing.TB) (*telemetry.Telemetry, *tracetest.InMemoryExporter) {
	t.Helper()
	tp := Provider()
	exp := tracetest.NewInMemoryExporter()
	sp := sdktrace.NewSimpleSpanProcessor(exp)
	tp.RegisterSpanProcessor(sp)
	t.Cleanup(func() { tp.UnregisterSpanProcessor(sp) })

	tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "test-" + t.Name(), ServiceVersion: "0.0.0", TracerProvider: tp})
	if err != nil {
		t.Fatalf("telemetrytest: %v", err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel, exp
}

// SpansOfTrace returns the recorded spans that belong to trace id.
func SpansOfTrace(exp *tracetest.InMemoryExporter, id trace.TraceID) tracetest.SpanStubs {
	var out tracetest.SpanStubs
	for _, s := range exp.GetSpans() {
		if s.SpanContext.TraceID() == id {
			out = append(out, s)
		}
	}
	return out
}

// SpanNamed returns the first recorded span called name, or false.
func SpanNamed(spans tracetest.SpanStubs, name string) (tracetest.SpanStub, bool) {
	for _, s := range spans {
		if s.Name == name {
			return s, true
		}
	}
	return tracetest.SpanStub{}, false
}
