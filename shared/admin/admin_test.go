package admin_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v5"

	"troveng.dev/shared/admin"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/natstest"
	"troveng.dev/shared/telemetry/telemetrytest"
)

type reply struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func do(t *testing.T, method, url, token string) reply {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := reply{status: resp.StatusCode, header: resp.Header, raw: string(b)}
	_ = json.Unmarshal(b, &r.body)
	return r
}

func start(t *testing.T, cfg admin.Config) (*admin.Server, string) {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	s := admin.New(cfg)
	s.Echo().POST("/v1/items/:id", func(c *echo.Context) error {
		return c.JSON(http.StatusOK, map[string]string{"deleted": c.Param("id")})
	}, s.RequireToken())
	s.Echo().GET("/v1/fail", func(c *echo.Context) error { return errs.Conflictf("item is in use") })
	addr, err := s.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s, "http://" + addr
}

func wantProblem(t *testing.T, r reply, status int, code errs.Code) {
	t.Helper()
	if r.status != status || r.body["code"] != string(code) || r.body["status"] != float64(status) ||
		!strings.HasPrefix(r.header.Get("Content-Type"), "application/problem+json") {
		t.Fatalf("want %d %s problem, got %d %s %s", status, code, r.status, r.header.Get("Content-Type"), r.raw)
	}
}

func TestHealthReadyInfo(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	tel, _ := telemetrytest.New(t)
	_, base := start(t, admin.Config{
		Service: "trove-storage", Version: "1.2.3",
		Info:         func() any { return map[string]any{"strategies": []string{"fs", "s3"}, "version": "overridden?"} },
		Ready:        map[string]admin.Check{"nats": admin.NATSCheck(nc), "backend": func(context.Context) error { return nil }},
		Metrics:      tel.MetricsHandler(),
		CheckTimeout: 500 * time.Millisecond,
	})

	for _, p := range []string{"/healthz", "/livez"} {
		if r := do(t, "GET", base+p, ""); r.status != 200 || r.body["status"] != "ok" {
			t.Fatalf("%s: %d %s", p, r.status, r.raw)
		}
	}
	r := do(t, "GET", base+"/readyz", "")
	if r.status != 200 || r.body["status"] != "ready" {
		t.Fatalf("/readyz: %d %s", r.status, r.raw)
	}

	r = do(t, "GET", base+"/v1/info", "")
	if r.status != 200 || r.body["service"] != "trove-storage" || r.body["version"] != "1.2.3" ||
		r.body["go_version"] != runtime.Version() || r.body["started_at"] == nil {
		t.Fatalf("/v1/info: %s", r.raw)
	}
	if s, _ := r.body["strategies"].([]any); len(s) != 2 || s[0] != "fs" {
		t.Fatalf("/v1/info lacks Info(): %s", r.raw)
	}

	r = do(t, "GET", base+"/metrics", "")
	if r.status != 200 || !strings.Contains(r.raw, "go_goroutines") {
		t.Fatalf("/metrics: %d %.200s", r.status, r.raw)
	}

	// NATS goes away: readiness fails and says which check failed; liveness does not.
	srv.Stop()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r = do(t, "GET", base+"/readyz", "")
		if r.status == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still %d after NATS stopped: %s", r.status, r.raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
	wantProblem(t, r, 503, errs.Unavailable)
	checks, _ := r.body["checks"].(map[string]any)
	if !strings.Contains(r.body["detail"].(string), "nats") || strings.Contains(r.body["detail"].(string), "backend") ||
		checks["backend"] != "ok" || !strings.HasPrefix(checks["nats"].(string), "unavailable") {
		t.Fatalf("/readyz body: %s", r.raw)
	}
	if r := do(t, "GET", base+"/healthz", ""); r.status != 200 {
		t.Fatalf("/healthz with NATS down: %d", r.status)
	}
}

func TestReadyCheckThatHangs(t *testing.T) {
	_, base := start(t, admin.Config{CheckTimeout: 100 * time.Millisecond, Ready: map[string]admin.Check{
		"stuck": func(context.Context) error { select {} },
	}})
	begin := time.Now()
	r := do(t, "GET", base+"/readyz", "")
	wantProblem(t, r, 503, errs.Unavailable)
	if time.Since(begin) > 2*time.Second || !strings.Contains(r.raw, "timeout") {
		t.Fatalf("hanging check: %s after %s", r.raw, time.Since(begin))
	}
}

func TestToken(t *testing.T) {
	_, base := start(t, admin.Config{Token: "right-token"})
	wantProblem(t, do(t, "POST", base+"/v1/items/a1", ""), 401, errs.Unauthorized)
	r := do(t, "POST", base+"/v1/items/a1", "Bearer wrong-token")
	wantProblem(t, r, 401, errs.Unauthorized)
	if r.header.Get("WWW-Authenticate") == "" {
		t.Fatal("401 without WWW-Authenticate")
	}
	wantProblem(t, do(t, "POST", base+"/v1/items/a1", "Basic right-token"), 401, errs.Unauthorized)
	wantProblem(t, do(t, "POST", base+"/v1/items/a1", "Bearer right-token-and-more"), 401, errs.Unauthorized)
	if r := do(t, "POST", base+"/v1/items/a1", "Bearer right-token"); r.status != 200 || r.body["deleted"] != "a1" {
		t.Fatalf("right token: %d %s", r.status, r.raw)
	}
	if r := do(t, "POST", base+"/v1/items/a1", "bearer right-token"); r.status != 200 {
		t.Fatalf("scheme is case-insensitive: %d %s", r.status, r.raw)
	}

	// No token configured: mutating routes are closed, not open.
	_, open := start(t, admin.Config{})
	wantProblem(t, do(t, "POST", open+"/v1/items/a1", "Bearer anything"), 403, errs.Unauthorized)
	wantProblem(t, do(t, "POST", open+"/v1/items/a1", ""), 403, errs.Unauthorized)
}

func TestErrorsAreProblems(t *testing.T) {
	_, base := start(t, admin.Config{})
	r := do(t, "GET", base+"/v1/fail", "")
	wantProblem(t, r, 409, errs.Conflict)
	if r.body["detail"] != "item is in use" {
		t.Fatalf("detail: %s", r.raw)
	}
	wantProblem(t, do(t, "GET", base+"/nope", ""), 404, errs.NotFound)
	wantProblem(t, do(t, "GET", base+"/metrics", ""), 404, errs.NotFound) // no Metrics handler configured
	wantProblem(t, do(t, "DELETE", base+"/healthz", ""), 405, errs.BadRequest)
}

func TestSpanNamedAfterRoute(t *testing.T) {
	_, exp := telemetrytest.New(t)
	_, base := start(t, admin.Config{Token: "tok"})
	do(t, "POST", base+"/v1/items/xyz", "Bearer tok")
	do(t, "GET", base+"/healthz", "")
	deadline := time.Now().Add(3 * time.Second)
	for {
		var names []string
		for _, s := range exp.GetSpans() {
			names = append(names, s.Name)
		}
		joined := strings.Join(names, ",")
		if strings.Contains(joined, "POST /v1/items/:id") {
			if strings.Contains(joined, "/healthz") {
				t.Fatalf("probe was traced: %v", names)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no span named after the route: %v", names)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStartErrors(t *testing.T) {
	s := admin.New(admin.Config{Addr: "127.0.0.1:0"})
	addr, err := s.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	if _, err := s.Start(context.Background()); !errs.Is(err, errs.Conflict) {
		t.Fatalf("second start: %v", err)
	}
	if _, err := admin.New(admin.Config{Addr: addr}).Start(context.Background()); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("port in use: %v", err)
	}
	if err := admin.New(admin.Config{}).Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown before start: %v", err)
	}
}
