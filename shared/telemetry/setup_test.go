package telemetry_test

import (
	"context"
	"io"
	"net/http/httptest"
	"regexp"
	"testing"
	"time"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/telemetry"
)

func scrape(t *testing.T, tel *telemetry.Telemetry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics status %d", rec.Code)
	}
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestMetricsNamesAndIsolation(t *testing.T) {
	ctx := context.Background()
	a, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "trove-a", ServiceVersion: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(ctx)
	b, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "trove-b", ServiceVersion: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(ctx)

	ma, err := telemetry.NewMetrics(a.Meter())
	if err != nil {
		t.Fatal(err)
	}
	ma.Request(ctx, "a.put", "", 3*time.Millisecond)
	ma.Request(ctx, "a.put", errs.NotFound, time.Millisecond)
	ma.Bytes(ctx, "put", "in", 1024)
	ma.Job(ctx, "backup", "completed", 90*time.Second)
	// A second service in the same process must be able to create the same instruments.
	if _, err := telemetry.NewMetrics(b.Meter()); err != nil {
		t.Fatal(err)
	}

	text := scrape(t, a)
	for _, re := range []string{
		`(?m)^trove_requests_total\{[^}]*code="ok"[^}]*endpoint="a.put"[^}]*\} 1$`,
		`(?m)^trove_requests_total\{[^}]*code="not_found"[^}]*endpoint="a.put"[^}]*\} 1$`,
		`(?m)^trove_request_duration_seconds_bucket\{[^}]*code="ok"`,
		`(?m)^trove_bytes_total\{[^}]*direction="in"[^}]*op="put"[^}]*\} 1024$`,
		`(?m)^trove_jobs_total\{[^}]*kind="backup"[^}]*state="completed"[^}]*\} 1$`,
		`(?m)^trove_job_duration_seconds_sum\{[^}]*kind="backup"[^}]*\} 90$`,
		`(?m)^target_info\{[^}]*service_name="trove-a"`,
		`(?m)^go_goroutines `,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("service a's /metrics lacks %s\n%s", re, text)
		}
	}
	if regexp.MustCompile(`(?m)^trove_requests_total\{`).MatchString(scrape(t, b)) {
		t.Errorf("service b's /metrics shows service a's requests")
	}
}

func TestNilMetricsAreNoOps(t *testing.T) {
	var m *telemetry.Metrics
	m.Request(context.Background(), "x", "", time.Second)
	m.Bytes(context.Background(), "x", "in", 1)
	m.Job(context.Background(), "x", "done", time.Second)
}

func TestSetupNeedsName(t *testing.T) {
	if _, err := telemetry.Setup(context.Background(), telemetry.Config{}); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("want bad_request, got %v", err)
	}
}

func TestOTLPEndpointDoesNotBlockSetup(t *testing.T) {
	// Nothing listens there: exporters connect lazily, so Setup must still succeed quickly and Shutdown must
	// give up within its context.
	ctx := context.Background()
	begin := time.Now()
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "trove-otlp", OTLPEndpoint: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.Tracer().Start(ctx, "x")
	span.End()
	sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_ = tel.Shutdown(sctx)
	if d := time.Since(begin); d > 2*time.Second {
		t.Fatalf("setup and shutdown with an unreachable collector took %s", d)
	}
}
