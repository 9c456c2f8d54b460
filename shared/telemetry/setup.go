// Package telemetry sets up OpenTelemetry for one service: traces (global provider, OTLP export when an
// endpoint is configured) and metrics (a meter provider of the service's own, read by Prometheus on the admin
// port's /metrics and optionally pushed by OTLP), plus W3C trace context over NATS headers (propagation.go).
package telemetry

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/shared/errs"
)

// InstrumentationName names the tracer and meter of the shared packages.
const InstrumentationName = "troveng.dev/shared"

// Config says who the service is and where telemetry goes.
type Config struct {
	ServiceName    string // e.g. "trove-storage"
	ServiceVersion string
	// OTLPEndpoint is the OTLP/gRPC collector: "host:port" (TLS unless OTLPInsecure) or a URL
	// ("http://host:4317" is plaintext, "https://..." TLS). Empty: traces are not exported and metrics are
	// only served for Prometheus to scrape.
	OTLPEndpoint string
	OTLPInsecure bool
	// TracerProvider, when set, is used (and made global) instead of building one; Shutdown leaves it
	// running because its owner shuts it down. Tests use it to record spans in memory (telemetrytest).
	TracerProvider *sdktrace.TracerProvider
}

// Telemetry is one service's telemetry. Its meter provider and Prometheus registry are its own, so several
// services in one process (tests, the embedded all-in-one mode) don't clash; the tracer provider is global.
type Telemetry struct {
	tracerProvider *sdktrace.TracerProvider
	ownsTracer     bool
	meterProvider  *sdkmetric.MeterProvider
	registry       *prometheus.Registry
	handler        http.Handler
}

// Setup builds the providers, installs them as the global ones and returns the handle that serves /metrics
// and shuts everything down.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	if cfg.ServiceName == "" {
		return nil, errs.BadRequestf("telemetry: a service name is required")
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", cfg.ServiceName)}
	if cfg.ServiceVersion != "" {
		attrs = append(attrs, attribute.String("service.version", cfg.ServiceVersion))
	}
	// No schema URL: merging resources with different schema URLs fails, and plain keys need none.
	res, err := resource.New(ctx, resource.WithTelemetrySDK(), resource.WithHost(), resource.WithAttributes(attrs...))
	if err != nil && res == nil {
		return nil, errs.Wrap(errs.Internal, err, "telemetry: build resource")
	}

	t := &Telemetry{registry: prometheus.NewRegistry()}
	t.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	promExporter, err := otelprom.New(otelprom.WithRegisterer(t.registry))
	if err != nil {
		return nil, errs.Wrap(errs.Internal, err, "telemetry: prometheus exporter")
	}
	meterOpts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(promExporter)}

	var traceExporter sdktrace.SpanExporter
	if cfg.OTLPEndpoint != "" {
		metricExporter, err := otlpmetricgrpc.New(ctx, metricEndpointOptions(cfg)...)
		if err != nil {
			return nil, errs.Wrap(errs.BadRequest, err, "telemetry: OTLP metrics exporter for %q", cfg.OTLPEndpoint)
		}
		meterOpts = append(meterOpts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metricExporter, sdkmetric.WithInterval(30*time.Second))))
		traceExporter, err = otlptracegrpc.New(ctx, traceEndpointOptions(cfg)...)
		if err != nil {
			_ = metricExporter.Shutdown(ctx)
			return nil, errs.Wrap(errs.BadRequest, err, "telemetry: OTLP trace exporter for %q", cfg.OTLPEndpoint)
		}
	}
	t.meterProvider = sdkmetric.NewMeterProvider(meterOpts...)

	switch {
	case cfg.TracerProvider != nil:
		t.tracerProvider = cfg.TracerProvider
	case traceExporter != nil:
		t.tracerProvider = sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithBatcher(traceExporter))
		t.ownsTracer = true
	default:
		// No exporter: spans are still created (so trace ids flow to the next hop) but nothing is kept.
		t.tracerProvider = sdktrace.NewTracerProvider(sdktrace.WithResource(res))
		t.ownsTracer = true
	}

	otel.SetTracerProvider(t.tracerProvider)
	otel.SetMeterProvider(t.meterProvider)
	t.handler = promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{Registry: t.registry})
	return t, nil
}

func traceEndpointOptions(cfg Config) []otlptracegrpc.Option {
	if strings.Contains(cfg.OTLPEndpoint, "://") {
		return []otlptracegrpc.Option{otlptracegrpc.WithEndpointURL(cfg.OTLPEndpoint)}
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.OTLPEndpoint)}
	if cfg.OTLPInsecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	return opts
}

func metricEndpointOptions(cfg Config) []otlpmetricgrpc.Option {
	if strings.Contains(cfg.OTLPEndpoint, "://") {
		return []otlpmetricgrpc.Option{otlpmetricgrpc.WithEndpointURL(cfg.OTLPEndpoint)}
	}
	opts := []otlpmetricgrpc.Option{otlpmetricgrpc.WithEndpoint(cfg.OTLPEndpoint)}
	if cfg.OTLPInsecure {
		opts = append(opts, otlpmetricgrpc.WithInsecure())
	}
	return opts
}

// MetricsHandler serves this service's metrics in the Prometheus text format (mount it on /metrics).
func (t *Telemetry) MetricsHandler() http.Handler { return t.handler }

// Meter is this service's meter (its own provider, not the global one).
func (t *Telemetry) Meter() metric.Meter { return t.meterProvider.Meter(InstrumentationName) }

// MeterProvider is this service's meter provider (e.g. for otelhttp).
func (t *Telemetry) MeterProvider() metric.MeterProvider { return t.meterProvider }

// Tracer is a tracer of the service's tracer provider.
func (t *Telemetry) Tracer() trace.Tracer { return t.tracerProvider.Tracer(InstrumentationName) }

// TracerProvider is the service's tracer provider.
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tracerProvider }

// Shutdown flushes and stops the exporters. Safe to call on a nil Telemetry.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	var all []error
	if err := t.meterProvider.Shutdown(ctx); err != nil {
		all = append(all, err)
	}
	if t.ownsTracer {
		if err := t.tracerProvider.Shutdown(ctx); err != nil {
			all = append(all, err)
		}
	}
	if err := errors.Join(all...); err != nil {
		return errs.Wrap(errs.Unavailable, err, "telemetry: shutdown")
	}
	return nil
}
