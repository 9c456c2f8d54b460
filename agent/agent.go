// Package agent is the guest agent: the thin relay on every database host. It serves
// trove.guest.<instance>.<operation> (shared/contract/guestv1): allow-listed tools with their bytes
// streamed in and out (optionally framed into and out of the storage service), files and tar extracts
// under the data and config roots, and the lifecycle of the guest's one engine. It registers the guest in
// the trove_guests KV bucket with a heartbeat. It carries no strategy logic. See docs/guest-agent.md.
package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/agent/internal/engine"
	"troveng.dev/agent/internal/execs"
	"troveng.dev/agent/internal/files"
	"troveng.dev/agent/internal/registry"
	"troveng.dev/agent/internal/toolexec"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/telemetry"
)

// Version is the agent's version (the contract's).
const Version = guestv1.Version

// Defaults of Config.
const (
	DefaultDataRoot   = "/var/lib/trove"
	DefaultConfigRoot = "/etc/trove"
	DefaultHeartbeat  = 5 * time.Second
	DefaultMaxExecs   = 4
)

// Tool declares one allow-listed tool (see DefaultTools).
type Tool = toolexec.Def

// DefaultTools is the guest image's allow-list; self is the agent's own binary (the datagen tool runs
// "self datagen ..."); "" leaves datagen out.
func DefaultTools(self string) []Tool { return toolexec.Defaults(self) }

// SelfPath is this process's binary, for the datagen tool.
func SelfPath() string {
	if p, err := os.Executable(); err == nil {
		return p
	}
	return "/proc/self/exe"
}

// Config configures an agent.
type Config struct {
	Instance string // the guest's id: one subject token (ids.Validate)
	// Engine is the guest's engine (mariadb, postgresql, redis), or "" for a guest without one (engine
	// operations then answer unavailable).
	Engine     string
	DataRoot   string        // default /var/lib/trove (the "data" root; the engine's data dir is DataRoot/<engine>)
	ConfigRoot string        // default /etc/trove (the "config" root)
	Heartbeat  time.Duration // default 5 s
	MaxExecs   int           // concurrent execs and extracts (default 4); past it requests get errs.Busy
	// Tools replaces the allow-list (nil: DefaultTools(SelfPath())). Tests add their own tools here.
	Tools []Tool
	// Autostart starts the engine when the agent starts (a failure is logged, not fatal).
	Autostart bool
	// Address is the guest's address in its registration ("" finds the first non-loopback IP).
	Address string
	// EnginePort and EngineRunDir override the engine's port and socket directory (tests; default the
	// engine's own: 3306 /run/mysqld, 5432 /run/postgresql, 6379).
	EnginePort   int
	EngineRunDir string
	// EngineLog receives the engine's own output (default os.Stderr).
	EngineLog io.Writer
	// Stream tunes the byte streams the agent opens (stdin receivers, stdout senders, storage transfers).
	Stream stream.Options
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Validate checks the configuration and fills the defaults.
func (c *Config) Validate() error {
	if err := guestv1.ValidateInstance(c.Instance); err != nil {
		return err
	}
	if c.Engine != "" && !slices.Contains(guestv1.Engines, c.Engine) {
		return errs.BadRequestf("engine %q is not one of %s (or empty for a guest without an engine)", c.Engine, strings.Join(guestv1.Engines, ", "))
	}
	if c.DataRoot == "" {
		c.DataRoot = DefaultDataRoot
	}
	if c.ConfigRoot == "" {
		c.ConfigRoot = DefaultConfigRoot
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.Heartbeat < 10*time.Millisecond {
		return errs.BadRequestf("heartbeat %s is too short (at least 10ms)", c.Heartbeat)
	}
	if c.MaxExecs == 0 {
		c.MaxExecs = DefaultMaxExecs
	}
	if c.MaxExecs < 1 || c.MaxExecs > 256 {
		return errs.BadRequestf("max execs %d must be 1..256", c.MaxExecs)
	}
	if c.Tools == nil {
		c.Tools = DefaultTools(SelfPath())
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.EngineLog == nil {
		c.EngineLog = os.Stderr
	}
	return nil
}

// InboxPrefix is the inbox prefix of an agent's NATS connection: its permissions let it subscribe only to
// inboxes under it (not to every party's _INBOX traffic). Connect with nats.CustomInboxPrefix(InboxPrefix(id)).
func InboxPrefix(instance string) string { return "_INBOX.trove-guest-" + instance }

// Agent is a running guest agent.
type Agent struct {
	cfg     Config
	nc      *nats.Conn
	log     *slog.Logger
	tracer  trace.Tracer
	metrics *metrics
	tools   *toolexec.AllowList
	roots   *files.Roots
	table   *execs.Table
	engine  *engine.Manager // nil without an engine
	storage *storageclient.Client
	reg     *registry.Registry
	svc     *service.Service
	started time.Time
	address string

	ctx    context.Context
	cancel context.CancelCauseFunc
	bg     sync.WaitGroup
	once   sync.Once
}

// Start starts serving the guest's operations on nc and registering it.
func Start(ctx context.Context, nc *nats.Conn, tel *telemetry.Telemetry, cfg Config) (*Agent, error) {
	if nc == nil {
		return nil, errs.Unavailablef("agent: no NATS connection")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("instance", cfg.Instance)
	tools, err := toolexec.Resolve(cfg.Tools)
	if err != nil {
		return nil, err
	}
	roots, err := files.Open(map[string]string{guestv1.RootData: cfg.DataRoot, guestv1.RootConfig: cfg.ConfigRoot})
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(tel)
	if err != nil {
		roots.Close()
		return nil, err
	}
	a := &Agent{cfg: cfg, nc: nc, log: log, metrics: m, tools: tools, roots: roots, table: execs.New(cfg.MaxExecs),
		storage: storageclient.New(nc, cfg.Stream), started: time.Now().UTC(), address: cfg.Address}
	if tel != nil {
		a.tracer = tel.Tracer()
	} else {
		a.tracer = otel.GetTracerProvider().Tracer(telemetry.InstrumentationName)
	}
	if a.address == "" {
		a.address = localAddress()
	}
	a.ctx, a.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	if cfg.Engine != "" {
		def, err := engine.Define(engine.Params{Engine: cfg.Engine, DataRoot: cfg.DataRoot, ConfigRoot: cfg.ConfigRoot,
			RunDir: cfg.EngineRunDir, Port: cfg.EnginePort})
		if err != nil {
			roots.Close()
			return nil, err
		}
		a.engine = engine.NewManager(def, cfg.EngineLog, log)
	}
	if !strings.HasPrefix(nc.NewInbox(), InboxPrefix(cfg.Instance)+".") {
		log.Warn("the NATS connection does not use the agent's inbox prefix; with least-privilege permissions replies will not reach it",
			"want", InboxPrefix(cfg.Instance))
	}

	a.svc, err = service.Start(nc, service.Spec{
		Family:          guestv1.Family,
		Version:         Version,
		Description:     "Guest agent of one database host: allow-listed tools, files, extracts, engine lifecycle",
		Group:           guestv1.Group(cfg.Instance),
		QueueGroup:      "trove-guest-" + cfg.Instance,
		MaxRequestBytes: guestv1.MaxRequestSize,
		Metadata:        map[string]string{"instance": cfg.Instance, "engine": cfg.Engine},
		Endpoints:       a.endpoints(),
	}, tel, m.common)
	if err != nil {
		a.cancel(err)
		roots.Close()
		return nil, err
	}
	if a.reg, err = registry.Start(nc, cfg.Instance, cfg.Heartbeat, a.registration, log); err != nil {
		_ = a.svc.Stop()
		a.cancel(err)
		roots.Close()
		return nil, err
	}
	a.bg.Add(1)
	go a.janitor()
	log.Info("agent started", "engine", cfg.Engine, "tools", len(tools.Names()), "data_root", cfg.DataRoot,
		"config_root", cfg.ConfigRoot, "max_execs", cfg.MaxExecs)
	if !canSwitchUsers() {
		log.Warn("the agent is not root: tools and the engine run as the agent's own user")
	}
	if cfg.Autostart && a.engine != nil {
		a.bg.Add(1)
		go func() {
			defer a.bg.Done()
			if _, err := a.engine.Start(a.ctx, guestv1.EngineRequest{}); err != nil {
				log.Error("engine autostart failed", "error", err)
			}
		}()
	}
	return a, nil
}

func (a *Agent) endpoints() []service.Endpoint {
	return []service.Endpoint{
		{Name: guestv1.OpInfo, Handler: service.JSON(a.handleInfo), Concurrency: 4},
		{Name: guestv1.OpExec, Handler: service.JSON(a.handleExec), Mutating: true},
		{Name: guestv1.OpExecWait, Handler: service.JSON(a.handleWait), Concurrency: 64},
		{Name: guestv1.OpExecCancel, Handler: service.JSON(a.handleCancel), Mutating: true, Concurrency: 8},
		{Name: guestv1.OpFileRead, Handler: service.JSON(a.handleFileRead), Concurrency: 4},
		{Name: guestv1.OpFileWrite, Handler: service.JSON(a.handleFileWrite), Mutating: true, Concurrency: 4},
		{Name: guestv1.OpFileStat, Handler: service.JSON(a.handleFileStat), Concurrency: 4},
		{Name: guestv1.OpFileList, Handler: service.JSON(a.handleFileList), Concurrency: 4},
		{Name: guestv1.OpFileRemove, Handler: service.JSON(a.handleFileRemove), Mutating: true, Concurrency: 4},
		{Name: guestv1.OpFileExtract, Handler: service.JSON(a.handleExtract), Mutating: true},
		{Name: guestv1.OpEngineStart, Handler: service.JSON(a.handleEngineStart), Mutating: true, Concurrency: 4},
		{Name: guestv1.OpEngineStop, Handler: service.JSON(a.handleEngineStop), Mutating: true, Concurrency: 4},
		{Name: guestv1.OpEngineStatus, Handler: service.JSON(a.handleEngineStatus), Concurrency: 4},
		{Name: guestv1.OpEngineReset, Handler: service.JSON(a.handleEngineReset), Mutating: true, Concurrency: 4},
	}
}

// janitor drops old exec results.
func (a *Agent) janitor() {
	defer a.bg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
			a.table.Prune()
		}
	}
}

// Capabilities are the operations and the transforms this agent offers.
func Capabilities() []string {
	return append(slices.Clone(guestv1.Ops), "frames", "zstd", "gzip", "aes-256-gcm")
}

// registration is the record as the agent sees it now.
func (a *Agent) registration(ctx context.Context) guestv1.Registration {
	r := guestv1.Registration{
		Instance: a.cfg.Instance, Engine: a.cfg.Engine, AgentVersion: Version, Address: a.address,
		Capabilities: Capabilities(), Tools: a.tools.Names(), Roots: []string{guestv1.RootData, guestv1.RootConfig},
		Started: a.started, Heartbeat: time.Now().UTC(), HeartbeatMs: a.cfg.Heartbeat.Milliseconds(),
	}
	if a.engine != nil {
		r.Status = a.engine.Status(ctx)
		r.EngineVersion = r.Status.Version
	} else {
		r.Status = guestv1.EngineStatus{State: guestv1.EngineStopped, Message: "this guest has no engine"}
	}
	return r
}

func (a *Agent) handleInfo(ctx context.Context, _ struct{}) (guestv1.Registration, error) {
	return a.registration(ctx), nil
}

// Instance is the agent's instance id.
func (a *Agent) Instance() string { return a.cfg.Instance }

// Heartbeats counts the registrations written so far.
func (a *Agent) Heartbeats() int64 { return a.reg.Beats() }

// Running counts the execs and extracts holding a slot.
func (a *Agent) Running() int { return a.table.Running() }

// Stop stops serving: no new requests, running execs and extracts are cancelled (their process groups
// SIGTERMed, SIGKILLed 5 s later) and waited for, and the heartbeat ends, so the registration goes
// stale. The engine is left running: it is a child of this process and stops with it (the binary stops it
// cleanly on SIGTERM, see Shutdown). Safe to call twice.
func (a *Agent) Stop() error {
	var all []error
	a.once.Do(func() {
		a.log.Info("agent stopping")
		if err := a.svc.Stop(); err != nil {
			all = append(all, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), toolexec.KillGrace+10*time.Second)
		defer cancel()
		if err := a.table.Close(ctx, errs.Unavailablef("the guest agent is stopping")); err != nil {
			all = append(all, err)
		}
		a.reg.Stop()
		a.cancel(errs.Unavailablef("the guest agent stopped"))
		a.bg.Wait()
		a.roots.Close()
	})
	return errors.Join(all...)
}

// Shutdown is Stop followed by a clean stop of the engine (the agent binary's SIGTERM path); ctx bounds
// the engine's shutdown.
func (a *Agent) Shutdown(ctx context.Context) error {
	err := a.Stop()
	if a.engine != nil {
		if eerr := a.engine.Shutdown(ctx); eerr != nil {
			err = errors.Join(err, eerr)
		}
	}
	return err
}

// localAddress is the first non-loopback IPv4 address (else IPv6) of this host, "" if none.
func localAddress() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	var v6 string
	for _, ad := range addrs {
		ipn, ok := ad.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		if ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
		if v6 == "" {
			v6 = ipn.IP.String()
		}
	}
	return v6
}

func canSwitchUsers() bool { return os.Geteuid() == 0 }
