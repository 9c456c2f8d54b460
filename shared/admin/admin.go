// Package admin is a service's admin HTTP server (echo v5): liveness, readiness, Prometheus metrics, build
// info, and room for the service's own routes. Mutating routes are guarded by a bearer token.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v5"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/metric"

	"troveng.dev/shared/errs"
)

// Check reports whether one dependency is usable; nil means ready.
type Check func(ctx context.Context) error

// DefaultCheckTimeout bounds each readiness check unless Config.CheckTimeout says otherwise.
const DefaultCheckTimeout = 2 * time.Second

// Config configures a Server.
type Config struct {
	Addr    string // listen address; ":0" picks a free port
	Token   string // bearer token for mutating routes; empty refuses them (403)
	Service string
	Version string
	Info    func() any       // extra /v1/info fields (e.g. strategies); a JSON object is merged, anything else goes under "info"
	Ready   map[string]Check // readiness checks by name ("nats", "backend"), run concurrently
	// CheckTimeout bounds each readiness check (default DefaultCheckTimeout); probes should allow a bit more.
	CheckTimeout time.Duration
	Metrics      http.Handler // served on /metrics; nil answers 404
	// MeterProvider records the HTTP server metrics of otelhttp (nil: the global provider).
	MeterProvider metric.MeterProvider
}

// Server is the admin HTTP server.
type Server struct {
	cfg     Config
	e       *echo.Echo
	started time.Time
	log     *slog.Logger

	mu  sync.Mutex
	srv *http.Server
}

// New builds the server and its standard routes; add more with Echo() before Start.
func New(cfg Config) *Server {
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = DefaultCheckTimeout
	}
	s := &Server{cfg: cfg, started: time.Now().UTC(), log: slog.Default().With("service", cfg.Service, "component", "admin")}
	e := echo.New()
	e.Logger = s.log
	e.HTTPErrorHandler = s.handleError
	// otelhttp renames its span after the handler returns when the request carries a pattern.
	e.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c *echo.Context) error {
			c.Request().Pattern = c.RouteInfo().Path
			return next(c)
		}
	})
	e.GET("/healthz", s.live)
	e.GET("/livez", s.live)
	e.GET("/readyz", s.ready)
	e.GET("/metrics", s.metrics)
	e.GET("/v1/info", s.info)
	s.e = e
	return s
}

// Echo is the router, to add the service's own routes (before Start).
func (s *Server) Echo() *echo.Echo { return s.e }

// Handler is the full HTTP handler (tracing included), e.g. for httptest.
func (s *Server) Handler() http.Handler {
	opts := []otelhttp.Option{
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			if r.Pattern != "" {
				return r.Method + " " + r.Pattern
			}
			return r.Method
		}),
		// Probes and scrapes every few seconds would drown the traces that matter.
		otelhttp.WithFilter(func(r *http.Request) bool {
			switch r.URL.Path {
			case "/healthz", "/livez", "/readyz", "/metrics":
				return false
			}
			return true
		}),
	}
	if s.cfg.MeterProvider != nil {
		opts = append(opts, otelhttp.WithMeterProvider(s.cfg.MeterProvider))
	}
	return otelhttp.NewHandler(s.e, "admin", opts...)
}

// Start listens on cfg.Addr and serves in the background; it returns the actual address.
func (s *Server) Start(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return "", errs.Conflictf("admin server already started")
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return "", errs.Wrap(errs.Unavailable, err, "admin HTTP listen on %q", s.cfg.Addr)
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.srv = srv
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin HTTP server stopped", "error", err)
		}
	}()
	addr := ln.Addr().String()
	s.log.Info("admin HTTP listening", "addr", addr)
	return addr, nil
}

// Shutdown stops accepting connections and waits (until ctx ends) for requests in flight. Safe to call when
// not started.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	if err := srv.Shutdown(ctx); err != nil {
		_ = srv.Close()
		return errs.Wrap(errs.CodeOf(err), err, "admin HTTP shutdown")
	}
	return nil
}

func (s *Server) live(c *echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) ready(c *echo.Context) error {
	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(s.cfg.Ready))
	for name, check := range s.cfg.Ready {
		go func() {
			ctx, cancel := context.WithTimeout(c.Request().Context(), s.cfg.CheckTimeout)
			defer cancel()
			results <- result{name, runCheck(ctx, check, s.cfg.CheckTimeout)}
		}()
	}
	checks := map[string]string{}
	var failed []string
	for range s.cfg.Ready {
		r := <-results
		if r.err != nil {
			checks[r.name] = errs.From(r.err).Error()
			failed = append(failed, r.name)
		} else {
			checks[r.name] = "ok"
		}
	}
	if len(failed) > 0 {
		sort.Strings(failed)
		p := newProblem(http.StatusServiceUnavailable, errs.Unavailable, "not ready: "+strings.Join(failed, ", ")+" failed")
		p.Checks = checks
		return p
	}
	return c.JSON(http.StatusOK, map[string]any{"status": "ready", "checks": checks})
}

// runCheck runs one check, giving up when ctx ends even if the check ignores its context.
func runCheck(ctx context.Context, check Check, limit time.Duration) error {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- errs.Internalf("check panicked: %v", p)
			}
		}()
		done <- check(ctx)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return errs.New(errs.Timeout, "check did not answer within %s", limit)
	}
}

func (s *Server) metrics(c *echo.Context) error {
	if s.cfg.Metrics == nil {
		return newProblem(http.StatusNotFound, errs.NotFound, "this service exports no metrics")
	}
	s.cfg.Metrics.ServeHTTP(c.Response(), c.Request())
	return nil
}

func (s *Server) info(c *echo.Context) error {
	out := map[string]any{}
	if s.cfg.Info != nil {
		extra := s.cfg.Info()
		b, err := json.Marshal(extra)
		if err != nil {
			return errs.Wrap(errs.Internal, err, "encode service info")
		}
		var fields map[string]json.RawMessage
		if json.Unmarshal(b, &fields) == nil && fields != nil {
			for k, v := range fields {
				out[k] = v
			}
		} else {
			out["info"] = json.RawMessage(b)
		}
	}
	// The standard fields win over Info's.
	out["service"] = s.cfg.Service
	out["version"] = s.cfg.Version
	out["go_version"] = runtime.Version()
	out["started_at"] = s.started
	out["uptime_seconds"] = int64(time.Since(s.started).Seconds())
	return c.JSON(http.StatusOK, out)
}

// RequireToken guards mutating routes with "Authorization: Bearer <token>". Without a configured token the
// routes are refused (403) rather than left open.
func (s *Server) RequireToken() echo.MiddlewareFunc {
	want := sha256.Sum256([]byte(s.cfg.Token))
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c *echo.Context) error {
			if s.cfg.Token == "" {
				return newProblem(http.StatusForbidden, errs.Unauthorized,
					"mutating admin routes are disabled: no admin token is configured (set TROVE_ADMIN_TOKEN or TROVE_ADMIN_TOKEN_FILE)")
			}
			h := c.Request().Header.Get("Authorization")
			scheme, token, ok := strings.Cut(h, " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
				c.Response().Header().Set("WWW-Authenticate", `Bearer realm="trove-admin"`)
				return newProblem(http.StatusUnauthorized, errs.Unauthorized, "this route needs an admin bearer token (Authorization: Bearer <token>)")
			}
			// Comparing hashes keeps the comparison constant-time whatever the lengths.
			got := sha256.Sum256([]byte(strings.TrimSpace(token)))
			if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
				c.Response().Header().Set("WWW-Authenticate", `Bearer realm="trove-admin", error="invalid_token"`)
				return newProblem(http.StatusUnauthorized, errs.Unauthorized, "the admin bearer token is wrong")
			}
			return next(c)
		}
	}
}

// NATSCheck is ready while nc is connected and a round trip to the server succeeds.
func NATSCheck(nc *nats.Conn) Check {
	return func(ctx context.Context) error {
		if nc == nil {
			return errs.Unavailablef("no NATS connection")
		}
		if st := nc.Status(); st != nats.CONNECTED {
			return errs.Unavailablef("NATS connection is %s", strings.ToLower(st.String()))
		}
		if err := nc.FlushWithContext(ctx); err != nil {
			return errs.Wrap(errs.Unavailable, err, "NATS round trip")
		}
		return nil
	}
}
