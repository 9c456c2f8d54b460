// Command storage runs one replica of the storage service.
//
//	storage -strategy s3 -opt endpoint=http://s3:7070 -opt bucket=backups -opt region=us-east-1
//
// Strategy options come from -opt key=value flags and from TROVE_STORAGE_OPT_<KEY> environment variables
// (secrets such as secret_key belong in the environment or a file, not on the command line).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"

	"troveng.dev/services/storage"
	"troveng.dev/shared/admin"
	"troveng.dev/shared/bytesize"
	"troveng.dev/shared/service"
	"troveng.dev/shared/telemetry"
)

type optFlags map[string]string

func (o optFlags) String() string { return fmt.Sprint(len(o), " options") }
func (o optFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value", v)
	}
	o[strings.ToLower(k)] = val
	return nil
}

func main() {
	if err := run(); err != nil {
		slog.Error("storage service failed", "error", err)
		os.Exit(1)
	}
}

func run() error {
	var cfg service.Config
	fs := flag.NewFlagSet("storage", flag.ExitOnError)
	cfg.Bind(fs)
	strategy := fs.String("strategy", envOr("TROVE_STORAGE_STRATEGY", "fs"), "storage strategy: "+strings.Join(storage.Strategies(), ", ")+" (env TROVE_STORAGE_STRATEGY)")
	opts := optFlags{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "TROVE_STORAGE_OPT_") {
			opts[strings.ToLower(strings.TrimPrefix(k, "TROVE_STORAGE_OPT_"))] = v
		}
	}
	fs.Var(opts, "opt", "strategy option key=value (repeatable; env TROVE_STORAGE_OPT_<KEY>)")
	memLimit := fs.String("memory-limit", envOr("TROVE_MEMORY_LIMIT", "100MiB"), "soft memory limit of the Go runtime (GOMEMLIMIT wins when set; 0 turns it off) (env TROVE_MEMORY_LIMIT)")
	_ = fs.Parse(os.Args[1:])
	if err := applyMemoryLimit(*memLimit); err != nil {
		return err
	}
	if err := cfg.Load(); err != nil {
		return err
	}
	level, _ := cfg.Level()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))

	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: service.ServiceName(storage.Family), ServiceVersion: storage.Version, OTLPEndpoint: cfg.OTLPEndpoint})
	if err != nil {
		return err
	}
	nc, err := service.Connect(ctx, cfg, service.ServiceName(storage.Family))
	if err != nil {
		return err
	}
	svc, err := storage.Start(ctx, nc, tel, storage.Config{Strategy: *strategy, Options: opts})
	if err != nil {
		return err
	}
	var adm *admin.Server
	if cfg.AdminAddr != "" {
		adm = svc.Admin(cfg.AdminAddr, cfg.AdminToken, nc, tel)
		addr, err := adm.Start(ctx)
		if err != nil {
			return err
		}
		slog.Info("admin HTTP", "addr", addr)
	}
	slog.Info("storage service running", "strategy", *strategy, "config", cfg)
	return service.RunUntilSignal(ctx, func(ctx context.Context) error {
		if adm != nil {
			_ = adm.Shutdown(ctx)
		}
		_ = svc.Stop()
		return service.Stopper(nil, nil, nc, tel)(ctx)
	})
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// applyMemoryLimit sets the runtime's soft memory limit. Transfers keep a bounded working set (part buffers and
// stream windows) but churn through message-sized garbage; without a limit the heap grows to twice the live
// set before the GC runs, with one it collects earlier and the footprint stays near the working set.
func applyMemoryLimit(v string) error {
	if os.Getenv("GOMEMLIMIT") != "" || v == "0" {
		return nil
	}
	n, err := bytesize.Parse(v)
	if err != nil || n == 0 {
		return fmt.Errorf("-memory-limit %q is not a positive size (use e.g. 100MiB)", v)
	}
	debug.SetMemoryLimit(n)
	return nil
}
