package service

import (
	"context"
	"flag"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/admin"
	"troveng.dev/shared/telemetry"
)

// Running is a started service as Main drives it.
type Running interface {
	Stop() error
	Info() any
}

// Daemon describes a standalone service binary for Main.
type Daemon struct {
	Family  string
	Version string
	// Flags binds the binary's own flags (the common ones of Config are bound by Main).
	Flags func(fs *flag.FlagSet)
	// Start starts the service once flags are parsed, NATS is connected and telemetry is set up.
	Start func(ctx context.Context, nc *nats.Conn, tel *telemetry.Telemetry) (Running, error)
	// Admin, if set, adds the service's own routes to its admin HTTP server.
	Admin func(adm *admin.Server)
}

// Main runs a standalone service binary: flags and environment, logging, telemetry, the NATS connection,
// the service, its admin HTTP server (probes, /metrics, /v1/info), and a graceful stop on SIGTERM.
func Main(d Daemon) error {
	var cfg Config
	fs := flag.NewFlagSet(ServiceName(d.Family), flag.ExitOnError)
	cfg.Bind(fs)
	if d.Flags != nil {
		d.Flags(fs)
	}
	_ = fs.Parse(os.Args[1:])
	if err := cfg.Load(); err != nil {
		return err
	}
	level, _ := cfg.Level()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))

	ctx := context.Background()
	name := ServiceName(d.Family)
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: name, ServiceVersion: d.Version, OTLPEndpoint: cfg.OTLPEndpoint})
	if err != nil {
		return err
	}
	nc, err := Connect(ctx, cfg, name)
	if err != nil {
		return err
	}
	svc, err := d.Start(ctx, nc, tel)
	if err != nil {
		return err
	}
	var adm *admin.Server
	if cfg.AdminAddr != "" {
		adm = admin.New(admin.Config{
			Addr: cfg.AdminAddr, Token: cfg.AdminToken, Service: name, Version: d.Version, Info: svc.Info,
			Ready:   map[string]admin.Check{"nats": admin.NATSCheck(nc)},
			Metrics: tel.MetricsHandler(), MeterProvider: tel.MeterProvider(),
		})
		if d.Admin != nil {
			d.Admin(adm)
		}
		addr, err := adm.Start(ctx)
		if err != nil {
			return err
		}
		slog.Info("admin HTTP", "addr", addr)
	}
	slog.Info(name+" running", "config", cfg)
	return RunUntilSignal(ctx, func(ctx context.Context) error {
		if adm != nil {
			_ = adm.Shutdown(ctx)
		}
		_ = svc.Stop()
		return Stopper(nil, nil, nc, tel)(ctx)
	})
}
