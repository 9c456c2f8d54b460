package testkit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/stream"
)

// The guest agent's environment (agent/cmd/trove-agent).
const (
	EnvNATSURL  = "TROVE_NATS_URL"
	EnvInstance = "TROVE_INSTANCE"
	EnvEngine   = "TROVE_ENGINE"
)

// EnginePorts are the ports the guest image's engines listen on.
var EnginePorts = map[string]int{
	guestv1.EngineMariaDB:    3306,
	guestv1.EnginePostgreSQL: 5432,
	guestv1.EngineRedis:      6379,
}

// GuestOptions describe one guest.
type GuestOptions struct {
	Engine string
	// Instance id; default <prefix>-<engine>-<n>-<random>.
	Instance string
	// Env is added to the kit's Options.Env (and wins over it); TROVE_NATS_URL, TROVE_INSTANCE and
	// TROVE_ENGINE are set by the kit unless given here.
	Env map[string]string
	// NoWait returns as soon as the container runs, without waiting for the registration.
	NoWait bool
}

// Guest is one database host: its container, its agent's instance id and a client for the agent.
type Guest struct {
	*Container
	Instance string
	Engine   string
	Client   *guestclient.Client
}

// AddGuests starts n guests of one engine at the same time and waits for each to be ready (registered,
// fresh, engine healthy).
func (k *Kit) AddGuests(ctx context.Context, engine string, n int, env map[string]string) ([]*Guest, error) {
	out := make([]*Guest, n)
	errList := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errList[i] = k.AddGuest(ctx, GuestOptions{Engine: engine, Env: env})
		}()
	}
	wg.Wait()
	if err := errors.Join(errList...); err != nil {
		return nil, err
	}
	return out, nil
}

// AddGuest starts one guest and, unless o.NoWait, waits until it is ready.
func (k *Kit) AddGuest(ctx context.Context, o GuestOptions) (*Guest, error) {
	if o.Engine == "" {
		o.Engine = k.opts.Engine
	}
	k.mu.Lock()
	k.seq++
	seq := k.seq
	k.mu.Unlock()
	if o.Instance == "" {
		o.Instance = fmt.Sprintf("%s-%s-%d-%s", k.opts.Prefix, o.Engine, seq, k.runID)
	}
	env := map[string]string{EnvNATSURL: "nats://" + net.JoinHostPort(k.hostAddr, strconv.Itoa(k.natsPort())),
		EnvInstance: o.Instance, EnvEngine: o.Engine}
	for _, m := range []map[string]string{k.opts.Env, o.Env} {
		for key, v := range m {
			env[key] = v
		}
	}
	var ports []string
	if p, ok := EnginePorts[o.Engine]; ok {
		ports = []string{strconv.Itoa(p) + "/tcp"}
	}
	// The container is named after the instance when the id is a valid name: `podman ps` shows which is which.
	name := o.Instance
	if guestv1.ValidateInstance(name) != nil {
		name = ""
	}
	c, err := k.RunContainer(ctx, ContainerOptions{Name: name, Env: env, Ports: ports})
	if err != nil {
		return nil, err
	}
	g := &Guest{Container: c, Instance: o.Instance, Engine: o.Engine}
	k.mu.Lock()
	k.guests = append(k.guests, g)
	k.mu.Unlock()
	// The client validates the id; a guest started with an invalid one (a security test) has none.
	g.Client, _ = guestclient.New(k.nc, o.Instance, stream.Options{})
	if o.NoWait {
		return g, nil
	}
	wctx, cancel := context.WithTimeout(ctx, k.opts.ReadyTimeout)
	defer cancel()
	if _, err := g.WaitReady(wctx); err != nil {
		return g, err
	}
	return g, nil
}

func (k *Kit) natsPort() int {
	k.nats.mu.Lock()
	defer k.nats.mu.Unlock()
	return k.nats.port
}

// Registration reads the guest's record from the registry.
func (g *Guest) Registration(ctx context.Context) (guestv1.Registration, error) {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	kv, err := g.kit.Registry(cctx)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return guestv1.Registration{}, errs.NotFoundf("no guest registry yet (no agent has registered)")
	}
	if err != nil {
		return guestv1.Registration{}, errs.Wrap(errs.Unavailable, err, "open the guest registry")
	}
	return guestclient.Guest(cctx, kv, g.Instance)
}

// WaitFor polls the registration until ok accepts it (ok sees read errors too, e.g. errs.NotFound before
// the first registration) and returns the last one read. It fails early, with the guest's log tail, when
// the container stops running.
func (g *Guest) WaitFor(ctx context.Context, what string, ok func(guestv1.Registration, error) bool) (guestv1.Registration, error) {
	return g.waitFor(ctx, what, ok, true)
}

func (g *Guest) waitFor(ctx context.Context, what string, ok func(guestv1.Registration, error) bool, needRunning bool) (guestv1.Registration, error) {
	var last guestv1.Registration
	var lastErr error
	for {
		last, lastErr = g.Registration(ctx)
		if ok(last, lastErr) {
			return last, nil
		}
		if needRunning {
			if running, err := g.Running(ctx); err == nil && !running {
				return last, fmt.Errorf("testkit: guest %s stopped while waiting until %s (last registration %s, %v)%s",
					g.Instance, what, describe(last), lastErr, g.logTail(ctx, 30))
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("testkit: guest %s: not %s in time (last registration %s, %v)%s",
				g.Instance, what, describe(last), lastErr, g.logTail(context.WithoutCancel(ctx), 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitReady waits until the agent started since the container's last start has registered, its record
// is fresh and its engine healthy.
func (g *Guest) WaitReady(ctx context.Context) (guestv1.Registration, error) {
	since := g.StartedAt()
	return g.WaitFor(ctx, "registered with a healthy engine", func(r guestv1.Registration, err error) bool {
		return err == nil && !r.Started.Before(since) && !r.Stale(time.Now()) && r.Status.Healthy
	})
}

// WaitStale waits until the registration is stale (the agent missed guestv1.StaleBeats heartbeats), the
// container running or not.
func (g *Guest) WaitStale(ctx context.Context) (guestv1.Registration, error) {
	return g.waitFor(ctx, "stale", func(r guestv1.Registration, err error) bool {
		return err == nil && r.Stale(time.Now())
	}, false)
}

// Restart starts a stopped or killed guest again and waits until it is ready.
func (g *Guest) Restart(ctx context.Context) (guestv1.Registration, error) {
	if err := g.Start(ctx); err != nil {
		return guestv1.Registration{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, g.kit.opts.ReadyTimeout)
	defer cancel()
	return g.WaitReady(wctx)
}

// Port is the engine's port inside the guest.
func (g *Guest) Port() int { return EnginePorts[g.Engine] }

// Endpoint is host:port at which the test process reaches the guest's engine: the container's address on
// Linux, the published host port where the kit publishes (Docker Desktop).
func (g *Guest) Endpoint(ctx context.Context) (string, error) {
	port := g.Port()
	if port == 0 {
		return "", fmt.Errorf("testkit: no known port for engine %q", g.Engine)
	}
	if !g.kit.publish {
		return net.JoinHostPort(g.IP(), strconv.Itoa(port)), nil
	}
	host, err := g.c.Host(ctx)
	if err != nil {
		return "", fmt.Errorf("testkit: %w", err)
	}
	mp, err := g.c.MappedPort(ctx, strconv.Itoa(port)+"/tcp")
	if err != nil {
		return "", fmt.Errorf("testkit: mapped port of %s: %w", g.Name, err)
	}
	return net.JoinHostPort(host, mp.Port()), nil
}

// AgentPID is the agent's process id inside the guest.
func (g *Guest) AgentPID(ctx context.Context) (int, error) {
	out, err := g.Output(ctx, "pgrep", "-o", "-x", "trove-agent")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(out)
}

// KillAgent sends SIGKILL to the agent process inside the guest (tini, PID 1, then exits: the container
// stops, as a host whose agent crashed would need a supervisor to come back).
func (g *Guest) KillAgent(ctx context.Context) error {
	pid, err := g.AgentPID(ctx)
	if err != nil {
		return err
	}
	if _, err := g.Output(ctx, "kill", "-KILL", strconv.Itoa(pid)); err != nil {
		return err
	}
	return nil
}

// ProcStatus returns a field of /proc/<pid>/status inside the guest (e.g. "VmHWM", "VmRSS"), in bytes
// for the kB fields.
func (g *Guest) ProcStatus(ctx context.Context, pid int, field string) (int64, error) {
	out, err := g.Output(ctx, "cat", "/proc/"+strconv.Itoa(pid)+"/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		f := strings.Fields(value)
		if len(f) == 0 {
			break
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("testkit: %s in /proc/%d/status: %q", field, pid, value)
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		return n, nil
	}
	return 0, fmt.Errorf("testkit: no %s in /proc/%d/status", field, pid)
}

func (g *Guest) logTail(ctx context.Context, lines int) string {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	logs, err := g.Logs(cctx)
	if err != nil {
		return fmt.Sprintf("\n(no log: %v)", err)
	}
	return "\n--- last lines of " + g.Name + "'s log:\n" + tailLines(logs, lines)
}

func tailLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	parts := strings.Split(s, "\n")
	if len(parts) > n {
		parts = parts[len(parts)-n:]
	}
	return strings.Join(parts, "\n")
}

func describe(r guestv1.Registration) string {
	if r.Instance == "" {
		return "none"
	}
	return fmt.Sprintf("{engine %s %s, state %s, healthy %v, age %s, started %s}", r.Engine, r.EngineVersion,
		r.Status.State, r.Status.Healthy, r.Age(time.Now()).Round(time.Millisecond), r.Started.Format(time.RFC3339Nano))
}

// logTails logs the end of every guest's log (Start does this when the test failed).
func (k *Kit) logTails(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, g := range k.Guests() {
		t.Logf("testkit: guest %s (%s, %s)%s", g.Instance, g.Engine, g.IP(), g.logTail(ctx, 60))
	}
}
