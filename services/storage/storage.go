// Package storage assembles the storage service: a backend chosen by strategy name, the trove.storage.v1
// micro endpoints, and the job runner for copy and verify. The standalone binary (cmd/storage) and the
// embedded default stack (trovectl up) both start it through Start.
package storage

import (
	"context"
	"errors"
	"sort"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/services/storage/internal/backend"
	"troveng.dev/services/storage/internal/server"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/telemetry"
)

// Family is the service family; subjects are trove.storage.v1.<operation>.
const Family = "storage"

// Version of the service (SemVer; shown in $SRV INFO).
const Version = "0.1.0"

// Config selects and tunes the backend and the service.
type Config struct {
	Strategy string            // "fs", "s3" or "nats"
	Options  map[string]string // strategy configuration (see docs/storage-strategies.md)
	Stream   stream.Options    // chunk size, credit window, idle timeout of put/get streams
	// MaxStreams bounds concurrent transfers per replica (default 16); past it requests get errs.Busy.
	MaxStreams int
	Jobs       jobs.Options // Family is set here; Concurrency, AckWait, ... may be tuned
}

// Strategies lists the strategy names compiled in.
func Strategies() []string {
	n := backend.Names()
	sort.Strings(n)
	return n
}

// Service is a running storage service replica.
type Service struct {
	be     backend.Backend
	srv    *server.Server
	runner *jobs.Runner
	svc    *service.Service
	cfg    Config
}

// Start opens the backend, registers the endpoints on nc and starts the job workers. tel may be nil.
func Start(ctx context.Context, nc *nats.Conn, tel *telemetry.Telemetry, cfg Config) (*Service, error) {
	be, err := openBackend(ctx, nc, cfg)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		_ = be.Close()
		return nil, errs.Wrap(errs.Unavailable, err, "JetStream")
	}
	jo := cfg.Jobs
	jo.Family = Family
	runner, err := jobs.New(ctx, js, jo)
	if err != nil {
		_ = be.Close()
		return nil, err
	}
	var m *telemetry.Metrics
	if tel != nil {
		if m, err = telemetry.NewMetrics(tel.Meter()); err != nil {
			_ = be.Close()
			return nil, errs.Wrap(errs.Internal, err, "metrics")
		}
	}
	srv := server.New(nc, be, runner, m, server.Options{Strategy: cfg.Strategy, Stream: cfg.Stream, MaxStreams: cfg.MaxStreams})
	svc, err := service.Start(nc, service.Spec{
		Family:      Family,
		Version:     Version,
		Description: "Stores and serves backup artifacts (streamed put/get, stat, list, delete, copy and verify jobs)",
		Endpoints:   srv.Endpoints(),
		Metadata:    map[string]string{"strategy": cfg.Strategy, "strategies": strings.Join(Strategies(), ",")},
	}, tel, m)
	if err != nil {
		srv.Close()
		_ = be.Close()
		return nil, err
	}
	if err := runner.Start(ctx); err != nil {
		_ = svc.Stop()
		srv.Close()
		_ = be.Close()
		return nil, err
	}
	return &Service{be: be, srv: srv, runner: runner, svc: svc, cfg: cfg}, nil
}

// openBackend opens the configured strategy. The nats strategy without its own URL stores objects through
// the service's own connection, which is what the embedded default and most deployments want.
func openBackend(ctx context.Context, nc *nats.Conn, cfg Config) (backend.Backend, error) {
	if cfg.Strategy == "" {
		return nil, errs.BadRequestf("no storage strategy chosen; use one of %s", strings.Join(Strategies(), ", "))
	}
	return backend.Open(ctx, cfg.Strategy, cfg.Options, backend.Env{NATS: nc})
}

// Ready reports whether the backend answers (the admin /readyz check).
func (s *Service) Ready(ctx context.Context) error { return s.be.Ping(ctx) }

// Info is what /v1/info shows beyond the service name and version.
func (s *Service) Info() any {
	return map[string]any{"strategy": s.cfg.Strategy, "strategies": Strategies()}
}

// Micro exposes the micro service (its ID, for tests and discovery).
func (s *Service) Micro() *service.Service { return s.svc }

// Stop stops taking requests and jobs (running jobs are handed back for another replica to take over), ends
// transfers in flight and closes the backend. The caller drains its NATS connection afterwards.
func (s *Service) Stop() error {
	var all []error
	if err := s.svc.Stop(); err != nil {
		all = append(all, err)
	}
	s.runner.Stop()
	s.srv.Close()
	if err := s.be.Close(); err != nil {
		all = append(all, err)
	}
	return errors.Join(all...)
}
