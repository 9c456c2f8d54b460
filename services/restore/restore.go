// Package restore assembles the restore service: the strategies (registered by backup strategy name in
// internal/strategy), the trove.restore.v1 endpoints and the job runner for restore jobs. The standalone
// binary (cmd/restore) and the embedded default stack (trovectl up) both start it through Start.
package restore

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/services/restore/internal/server"
	"troveng.dev/services/restore/internal/strategy"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/datakey"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/telemetry"
)

// Family is the service family; subjects are trove.restore.v1.<operation>.
const Family = backupv1.RestoreFamily

// Version of the service (SemVer; shown in $SRV INFO).
const Version = "0.1.0"

// Config tunes the service.
type Config struct {
	// Identities is the content of an age identity file (AGE-SECRET-KEY-1... lines) that opens the data
	// keys of the backups this service restores. Secret: load it from a file, never a flag value.
	Identities string
	Stream     stream.Options
	Jobs       jobs.Options
	Logger     *slog.Logger
}

// Strategies lists the strategy names compiled in.
func Strategies() []string { return strategy.Names() }

// Service is a running restore service replica.
type Service struct {
	runner *jobs.Runner
	svc    *service.Service
}

// Start registers the endpoints on nc and starts the job workers. tel may be nil.
func Start(ctx context.Context, nc *nats.Conn, tel *telemetry.Telemetry, cfg Config) (*Service, error) {
	var opts server.Options
	if strings.TrimSpace(cfg.Identities) != "" {
		ids, err := datakey.ParseIdentities(cfg.Identities)
		if err != nil {
			return nil, err
		}
		opts.Identities = ids
	}
	opts.Stream, opts.Logger = cfg.Stream, cfg.Logger
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "JetStream")
	}
	jo := cfg.Jobs
	jo.Family = Family
	runner, err := jobs.New(ctx, js, jo)
	if err != nil {
		return nil, err
	}
	var m *telemetry.Metrics
	if tel != nil {
		if m, err = telemetry.NewMetrics(tel.Meter()); err != nil {
			return nil, errs.Wrap(errs.Internal, err, "metrics")
		}
	}
	srv := server.New(nc, js, runner, m, opts)
	svc, err := service.Start(nc, service.Spec{
		Family:      Family,
		Version:     Version,
		Description: "Restores backups from the catalog into guests through their agents",
		Endpoints:   srv.Endpoints(),
		Metadata:    map[string]string{"strategies": strings.Join(Strategies(), ",")},
	}, tel, m)
	if err != nil {
		return nil, err
	}
	if err := runner.Start(ctx); err != nil {
		_ = svc.Stop()
		return nil, err
	}
	return &Service{runner: runner, svc: svc}, nil
}

// Info is what /v1/info shows beyond the service name and version.
func (s *Service) Info() any { return map[string]any{"strategies": Strategies()} }

// Micro exposes the micro service.
func (s *Service) Micro() *service.Service { return s.svc }

// Stop stops taking requests and jobs; running jobs are handed back for another replica to take over.
func (s *Service) Stop() error {
	var all []error
	if err := s.svc.Stop(); err != nil {
		all = append(all, err)
	}
	s.runner.Stop()
	return errors.Join(all...)
}
