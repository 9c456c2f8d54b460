// Package backup assembles the backup service: the strategies (registered by name in internal/strategy),
// the trove.backup.v1 endpoints and the job runner for backup and verify jobs. The standalone binary
// (cmd/backup) and the embedded default stack (trovectl up) both start it through Start.
package backup

import (
	"context"
	"log/slog"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/services/backup/internal/server"
	"troveng.dev/services/backup/internal/strategy"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/datakey"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/jobs/jobsvc"
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
	// Direct has agents move artifacts straight between the guest and object storage (presigned parts of
	// the storage service's s3 strategy) instead of through the storage service over NATS; a strategy
	// without direct transfers falls back to NATS. Turn it on where guests can reach the object store.
	Direct bool
	Jobs   jobs.Options // Family is set here
	Logger *slog.Logger
}

// Strategies lists the strategy names compiled in.
func Strategies() []string { return strategy.Names() }

// Service is a running backup service replica.
type Service struct {
	svc *jobsvc.Service
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
	opts.Stream, opts.FrameSize, opts.Direct, opts.Logger = cfg.Stream, cfg.FrameSize, cfg.Direct, cfg.Logger
	svc, err := jobsvc.Start(ctx, nc, tel, jobsvc.Spec{
		Family: Family, Version: Version, Description: "Backs up guests through their agents into the storage service; the backup catalog",
		Metadata: map[string]string{"strategies": strings.Join(Strategies(), ",")},
		Jobs:     cfg.Jobs,
		Endpoints: func(js jetstream.JetStream, runner *jobs.Runner, m *telemetry.Metrics) []service.Endpoint {
			return server.New(nc, js, runner, m, opts).Endpoints()
		},
	})
	if err != nil {
		return nil, err
	}
	return &Service{svc: svc}, nil
}

// Info is what /v1/info shows beyond the service name and version.
func (s *Service) Info() any { return map[string]any{"strategies": Strategies()} }

// Micro exposes the micro service.
func (s *Service) Micro() *service.Service { return s.svc.Micro() }

// Stop stops taking requests and jobs; running jobs are handed back for another replica to take over.
func (s *Service) Stop() error { return s.svc.Stop() }
