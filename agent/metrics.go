package agent

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/telemetry"
)

// metrics are the agent's own instruments besides the shared request and byte counters. Prometheus names:
// trove_guest_execs_total{tool,outcome} (outcome: ok, exit_nonzero, or the error code; refused requests
// count with the code of the refusal) and trove_guest_busy_total{op} (requests refused past MaxExecs) and trove_guest_resumes_total{direction} (downloads and uploads
// resumed mid-transfer).
type metrics struct {
	common *telemetry.Metrics
	execs  metric.Int64Counter
	busy   metric.Int64Counter
	resume metric.Int64Counter
}

func newMetrics(tel *telemetry.Telemetry) (*metrics, error) {
	if tel == nil {
		return &metrics{}, nil
	}
	m := &metrics{}
	var err error
	if m.common, err = telemetry.NewMetrics(tel.Meter()); err != nil {
		return nil, err
	}
	if m.execs, err = tel.Meter().Int64Counter("trove.guest.execs",
		metric.WithDescription("Execs and extracts by tool and outcome (ok, exit_nonzero or an error code).")); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "telemetry: create trove.guest.execs")
	}
	if m.busy, err = tel.Meter().Int64Counter("trove.guest.busy",
		metric.WithDescription("Requests refused because the guest's exec limit was reached, by operation.")); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "telemetry: create trove.guest.busy")
	}
	if m.resume, err = tel.Meter().Int64Counter("trove.guest.resumes",
		metric.WithDescription("Storage transfers (direction download or upload) resumed after the storage service or the link to it failed mid-transfer.")); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "telemetry: create trove.guest.resumes")
	}
	return m, nil
}

// Outcomes of an exec besides error codes.
const (
	outcomeOK      = "ok"
	outcomeNonZero = "exit_nonzero"
)

func (m *metrics) exec(ctx context.Context, tool, outcome string) {
	if m.execs == nil {
		return
	}
	m.execs.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(attribute.String("tool", tool), attribute.String("outcome", outcome))))
}

func (m *metrics) refusedBusy(ctx context.Context, op string) {
	if m.busy == nil {
		return
	}
	m.busy.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(attribute.String("op", op))))
}

func (m *metrics) resumed(ctx context.Context, direction string) {
	if m.resume == nil {
		return
	}
	m.resume.Add(ctx, 1, metric.WithAttributes(attribute.String("direction", direction)))
}

func (m *metrics) bytes(ctx context.Context, op, direction string, n int64) {
	m.common.Bytes(ctx, op, direction, n)
}

// onResume is the hook of a storage transfer (direction "download" or "upload") that resumed
// mid-transfer: logged, on the transfer's span, and counted. Why it resumed (the storage service's error)
// is safe to log: errors carry no secrets.
func (a *Agent) onResume(ctx context.Context, key, direction string) func(offset int64, cause error) {
	return func(offset int64, cause error) {
		a.log.Warn("storage "+direction+" resumed", "key", key, "offset", offset, "cause", cause)
		trace.SpanFromContext(ctx).AddEvent("resumed", trace.WithAttributes(
			attribute.Int64("trove.offset", offset), attribute.String("trove.cause", string(errs.CodeOf(cause)))))
		a.metrics.resumed(ctx, direction)
	}
}
