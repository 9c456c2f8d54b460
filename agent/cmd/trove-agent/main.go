// Command trove-agent is the guest agent: the thin relay on every database host (see docs/guest-agent.md).
//
//	trove-agent serve      serve trove.guest.<instance>.<op> and register the guest (config: flags and TROVE_* env)
//	trove-agent datagen    -bytes N -seed S: deterministic dump-like text to stdout (the benchmark's tool)
//	trove-agent version    print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/agent"
	"troveng.dev/shared/admin"
	"troveng.dev/shared/bytesize"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/telemetry"
)

// Environment of the serve command (besides the shared service settings: TROVE_NATS_URL, TROVE_NATS_CREDS,
// TROVE_NATS_NKEY, TROVE_NATS_TLS_*, TROVE_ADMIN_ADDR, TROVE_OTLP_ENDPOINT, TROVE_LOG_LEVEL).
const (
	envInstance    = "TROVE_INSTANCE"
	envEngine      = "TROVE_ENGINE"
	envAutostart   = "TROVE_ENGINE_AUTOSTART"
	envDataRoot    = "TROVE_DATA_ROOT"
	envConfigRoot  = "TROVE_CONFIG_ROOT"
	envHeartbeat   = "TROVE_HEARTBEAT"
	envMaxExecs    = "TROVE_MAX_EXECS"
	envAddress     = "TROVE_ADDRESS"
	envMemoryLimit = "TROVE_MEMORY_LIMIT"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "datagen":
		err = agent.Datagen(os.Args[2:], os.Stdout)
	case "version", "-version", "--version":
		fmt.Printf("trove-agent %s (guest contract %s, %s)\n", agent.Version, agent.Version, runtime.Version())
	case "help", "-h", "-help", "--help":
		usage()
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		slog.Error("trove-agent failed", "error", err)
		if errs.Is(err, errs.BadRequest) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: trove-agent serve [flags]          serve the guest (trove-agent serve -h for flags and env)
       trove-agent datagen -bytes N -seed S  deterministic dump-like text to stdout
       trove-agent version`)
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

func serve(args []string) error {
	var sc service.Config
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	sc.Bind(fs)
	var cfg agent.Config
	fs.StringVar(&cfg.Instance, "instance", os.Getenv(envInstance), "the guest's instance id (env "+envInstance+")")
	fs.StringVar(&cfg.Engine, "engine", os.Getenv(envEngine), "the guest's engine: mariadb, postgresql, redis, or empty (env "+envEngine+")")
	autostart := fs.String("engine-autostart", envOr(envAutostart, "true"), "start the engine when the agent starts (env "+envAutostart+")")
	fs.StringVar(&cfg.DataRoot, "data-root", envOr(envDataRoot, agent.DefaultDataRoot), "the data root (env "+envDataRoot+")")
	fs.StringVar(&cfg.ConfigRoot, "config-root", envOr(envConfigRoot, agent.DefaultConfigRoot), "the config root (env "+envConfigRoot+")")
	heartbeat := fs.String("heartbeat", envOr(envHeartbeat, agent.DefaultHeartbeat.String()), "registration heartbeat interval (env "+envHeartbeat+")")
	maxExecs := fs.String("max-execs", envOr(envMaxExecs, strconv.Itoa(agent.DefaultMaxExecs)), "concurrent execs and extracts (env "+envMaxExecs+")")
	fs.StringVar(&cfg.Address, "address", os.Getenv(envAddress), "the guest's address in its registration; empty finds it (env "+envAddress+")")
	memLimit := fs.String("memory-limit", envOr(envMemoryLimit, "96MiB"), "soft memory limit of the Go runtime; GOMEMLIMIT wins, 0 turns it off (env "+envMemoryLimit+")")
	_ = fs.Parse(args)
	if fs.NArg() > 0 {
		return errs.BadRequestf("serve: unexpected argument %q", fs.Arg(0))
	}
	if err := sc.Load(); err != nil {
		return err
	}
	level, _ := sc.Level()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	var err error
	if cfg.Autostart, err = strconv.ParseBool(*autostart); err != nil {
		return errs.BadRequestf("engine autostart %q is not true or false", *autostart)
	}
	if cfg.Heartbeat, err = time.ParseDuration(*heartbeat); err != nil {
		return errs.BadRequestf("heartbeat %q is not a duration (e.g. 5s)", *heartbeat)
	}
	if cfg.MaxExecs, err = strconv.Atoi(*maxExecs); err != nil {
		return errs.BadRequestf("max execs %q is not a number", *maxExecs)
	}
	if err := applyMemoryLimit(*memLimit); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil { // before connecting: a bad instance id never reaches NATS
		return err
	}
	if os.Getpid() == 1 {
		slog.Warn("trove-agent runs as PID 1: run it under an init (tini) so orphaned processes are reaped")
	}

	ctx, stopSignals := signalContext()
	defer stopSignals()
	name := "trove-guest-" + cfg.Instance
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "trove-guest", ServiceVersion: agent.Version, OTLPEndpoint: sc.OTLPEndpoint})
	if err != nil {
		return err
	}
	// Retries while no NATS server answers, until SIGTERM: a guest may start before NATS.
	nc, err := service.Connect(ctx, sc, name, nats.CustomInboxPrefix(agent.InboxPrefix(cfg.Instance)))
	if err != nil {
		_ = tel.Shutdown(context.Background())
		return err
	}
	a, err := agent.Start(ctx, nc, tel, cfg)
	if err != nil {
		nc.Close()
		_ = tel.Shutdown(context.Background())
		return err
	}
	var adm *admin.Server
	if sc.AdminAddr != "" {
		adm = admin.New(admin.Config{Addr: sc.AdminAddr, Token: sc.AdminToken, Service: "trove-guest", Version: agent.Version,
			Ready: map[string]admin.Check{"nats": admin.NATSCheck(nc)}, Metrics: tel.MetricsHandler(), MeterProvider: tel.MeterProvider(),
			Info: func() any { return map[string]any{"instance": cfg.Instance, "engine": cfg.Engine} }})
		addr, err := adm.Start(ctx)
		if err != nil {
			_ = a.Stop()
			nc.Close()
			return err
		}
		slog.Info("admin HTTP", "addr", addr)
	}
	slog.Info("trove-agent serving", "instance", cfg.Instance, "engine", cfg.Engine, "config", sc)
	<-ctx.Done()
	stopSignals() // a second signal now kills the process the default way, for an operator who won't wait
	slog.Info("stopping", "reason", context.Cause(ctx))
	stopCtx, cancel := context.WithTimeout(context.Background(), service.StopTimeout)
	defer cancel()
	var all []error
	if adm != nil {
		all = append(all, adm.Shutdown(stopCtx))
	}
	// Execs are cancelled (process groups killed), then the engine stops cleanly, then NATS drains.
	all = append(all, a.Shutdown(stopCtx), service.Stopper(nil, nil, nc, tel)(stopCtx))
	return errors.Join(all...)
}

// applyMemoryLimit sets the Go runtime's soft memory limit: transfers keep a bounded working set (frames in
// flight, stream windows) but churn through garbage; the limit keeps the footprint near the working set.
func applyMemoryLimit(v string) error {
	if os.Getenv("GOMEMLIMIT") != "" || v == "0" {
		return nil
	}
	n, err := bytesize.Parse(v)
	if err != nil || n == 0 {
		return errs.BadRequestf("memory limit %q is not a positive size (e.g. 96MiB)", v)
	}
	debug.SetMemoryLimit(n)
	return nil
}
