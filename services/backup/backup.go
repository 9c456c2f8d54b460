// Package backup assembles the backup service: the strategies (registered by name in internal/strategy),
// the trove.backup.v1 endpoints and the job runner for backup and verify jobs. The standalone binary
// (cmd/backup) and the embedded default stack (trovectl up) both start it through Start.
package backup

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/services/backup/internal/server"
	"troveng.dev/services/backup/internal/strategy"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/datakey"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/telemetry"
)

// Family is the service family; subjects are trove.backup.v1.<operation>.
const Family = backupv1.BackupFamily

// Version of the service (SemVer; shown in $SRV INFO).
const Version = "0.1.0"

// Config tunes the service.
type Config struct {
	// Recipients are age X25519 public keys (one per line or comma separated) every backup's data key is
	// wrapped for. Backing up needs only these; restoring needs a matching identity.
	Recipients string
	Stream     stream.Options
	FrameSize  int
	Jobs       jobs.Options // Family is set here
	Logger     *slog.Logger
}

// Strategies lists the strategy names compiled in.
func Strategies() []string { return strategy.Names() }

// Service is a running backup service replica.
type Service struct {
	runner *jobs.Runner
	svc    *service.Service
}

// Start registers the endpoints on nc and starts the job workers. tel may be nil.
func Start(ctx context.Context, nc *nats.Conn, tel *telemetry.Telemetry, cfg Config) (*Service, error) {
	var opts server.Options
	if strings.TrimSpace(cfg.Recipients) != "" {
		rs, err := datakey.ParseRecipients(cfg.Recipients)
		if err != nil {
			return nil, err
		}
		opts.Recipients = rs
	}
	opts.Stream, opts.FrameSize, opts.Logger = cfg.Stream, cfg.FrameSize, cfg.Logger
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
		Description: "Backs up guests through their agents into the storage service; the backup catalog",
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
