package telemetry

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"troveng.dev/shared/errs"
)

// Metrics are the instruments every service shares; create them once per service with NewMetrics.
// Prometheus names (OTel names are translated by the exporter): trove_requests_total{endpoint,code},
// trove_request_duration_seconds{endpoint,code}, trove_bytes_total{op,direction},
// trove_jobs_total{kind,state}, trove_job_duration_seconds{kind,state}.
type Metrics struct {
	requests        metric.Int64Counter
	requestDuration metric.Float64Histogram
	bytes           metric.Int64Counter
	jobs            metric.Int64Counter
	jobDuration     metric.Float64Histogram
}

// CodeOK is the code label of a request that succeeded.
const CodeOK = "ok"

// Bucket bounds in seconds: requests are expected to take milliseconds, jobs minutes to hours.
var (
	requestBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
	jobBuckets     = []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800}
)

// NewMetrics creates the common instruments on m (normally Telemetry.Meter()).
func NewMetrics(m metric.Meter) (*Metrics, error) {
	var out Metrics
	var err error
	if out.requests, err = m.Int64Counter("trove.requests",
		metric.WithDescription("Requests handled, by endpoint and outcome code (ok or the error code).")); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "telemetry: create trove.requests")
	}
	if out.requestDuration, err = m.Float64Histogram("trove.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Time to handle a request, by endpoint and outcome code."),
		metric.WithExplicitBucketBoundaries(requestBuckets...)); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "telemetry: create trove.request.duration")
	}
	if out.bytes, err = m.Int64Counter("trove.bytes",
		metric.WithDescription("Bytes moved, by operation and direction (in or out).")); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "telemetry: create trove.bytes")
	}
	if out.jobs, err = m.Int64Counter("trove.jobs",
		metric.WithDescription("Jobs that reached a state, by kind and state.")); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "telemetry: create trove.jobs")
	}
	if out.jobDuration, err = m.Float64Histogram("trove.job.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from a job's start to the state it reached, by kind and state."),
		metric.WithExplicitBucketBoundaries(jobBuckets...)); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "telemetry: create trove.job.duration")
	}
	return &out, nil
}

// Request counts and times one handled request; code is "" when it succeeded. Safe on a nil *Metrics.
func (m *Metrics) Request(ctx context.Context, endpoint string, code errs.Code, d time.Duration) {
	if m == nil {
		return
	}
	label := string(code)
	if label == "" {
		label = CodeOK
	}
	attrs := metric.WithAttributeSet(attribute.NewSet(attribute.String("endpoint", endpoint), attribute.String("code", label)))
	m.requests.Add(ctx, 1, attrs)
	m.requestDuration.Record(ctx, d.Seconds(), attrs)
}

// Bytes counts n bytes moved by op ("put", "get", "backup", ...) in direction ("in" or "out").
// Safe on a nil *Metrics.
func (m *Metrics) Bytes(ctx context.Context, op, direction string, n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.bytes.Add(ctx, n, metric.WithAttributeSet(attribute.NewSet(attribute.String("op", op), attribute.String("direction", direction))))
}

// Job counts a job of kind reaching state ("completed", "failed", ...) after d. Safe on a nil *Metrics.
func (m *Metrics) Job(ctx context.Context, kind string, state string, d time.Duration) {
	if m == nil {
		return
	}
	attrs := metric.WithAttributeSet(attribute.NewSet(attribute.String("kind", kind), attribute.String("state", state)))
	m.jobs.Add(ctx, 1, attrs)
	m.jobDuration.Record(ctx, d.Seconds(), attrs)
}
