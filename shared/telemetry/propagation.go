package telemetry

import (
	"context"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
)

// HeaderCarrier adapts nats.Header to OpenTelemetry propagation with the lower-case W3C keys
// ("traceparent", "tracestate", "baggage"). nats.Header is a plain map, but casting it to
// propagation.HeaderCarrier would canonicalise the keys to "Traceparent", which other clients don't read.
type HeaderCarrier nats.Header

// Get returns the first value for key.
func (c HeaderCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set replaces key's value.
func (c HeaderCarrier) Set(key, value string) { c[key] = []string{value} }

// Keys lists the keys present.
func (c HeaderCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

var _ propagation.TextMapCarrier = HeaderCarrier{}

// Inject writes ctx's trace context into h (which must be non-nil).
func Inject(ctx context.Context, h nats.Header) {
	otel.GetTextMapPropagator().Inject(ctx, HeaderCarrier(h))
}

// InjectMsg writes ctx's trace context into m's headers, creating them if needed.
func InjectMsg(ctx context.Context, m *nats.Msg) {
	if m.Header == nil {
		m.Header = nats.Header{}
	}
	Inject(ctx, m.Header)
}

// Extract returns ctx carrying the trace context found in h (if any).
func Extract(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, HeaderCarrier(h))
}

func init() {
	// W3C trace context and baggage are what every hop speaks; set them even before Setup runs (tests).
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
}
