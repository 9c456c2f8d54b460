package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
)

// Local guest containers: `trovectl guest start|stop` run the guest image with the container CLI found
// here (podman first, then docker), always through an argument vector, never a shell string.

// DefaultGuestImage is the image scripts/build-guest-image.sh (`go tool task image:guest`) builds.
const DefaultGuestImage = "localhost/trove-guest:dev"

// guestLabel marks the containers trovectl started, with the instance id as the value.
const guestLabel = "troveng.guest"

// agentNKeyInContainer is where the agent's seed file is mounted (read-only) inside a guest container.
const agentNKeyInContainer = "/run/trove/agent.nk"

// containerNamePrefix + instance id is a guest container's name.
const containerNamePrefix = "trove-guest-"

// guestContainerName is the container of a guest; id must have passed guestv1.ValidateInstance.
func guestContainerName(id string) string { return containerNamePrefix + id }

// containerCLI is the container command-line tool found on this machine.
type containerCLI struct {
	Name string // "podman" or "docker"
	Path string
}

// containerTools is the order the container CLIs are looked for in.
var containerTools = []string{"podman", "docker"}

// Seams for tests: how a program is found on PATH and how the container CLI is run.
var (
	lookPath = exec.LookPath
	// runContainer runs the container CLI with args and returns its stdout and stderr.
	runContainer = func(ctx context.Context, cli containerCLI, args ...string) (stdout, stderr []byte, err error) {
		var out, errOut bytes.Buffer
		cmd := exec.CommandContext(ctx, cli.Path, args...)
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err = cmd.Run()
		return out.Bytes(), errOut.Bytes(), err
	}
)

// findContainerCLI picks the container CLI: the one named by want ("podman" or "docker"), else podman,
// else docker.
func findContainerCLI(want string) (containerCLI, error) {
	names := containerTools
	if want != "" {
		if !slices.Contains(containerTools, want) {
			return containerCLI{}, errs.BadRequestf("--runtime %q is not one of %s", want, strings.Join(containerTools, ", "))
		}
		names = []string{want}
	}
	for _, n := range names {
		if p, err := lookPath(n); err == nil {
			return containerCLI{Name: n, Path: p}, nil
		}
	}
	return containerCLI{}, errs.Unavailablef("no container CLI found (looked for %s on PATH): install Podman (`go tool task containers:setup` sets it up on Debian, with the base image the guest image needs) or Docker", strings.Join(names, ", "))
}

// defaultNetwork is the network a container CLI puts containers on when none is named.
func (c containerCLI) defaultNetwork() string {
	if c.Name == "docker" {
		return "bridge"
	}
	return "podman"
}

// guestRun is one local guest container to start.
type guestRun struct {
	Instance string
	Engine   string
	NATSURL  string // as the container reaches it
	Image    string
	Network  string // "" : the CLI's default network
	NKeyFile string // the agent's seed file on this host, mounted read-only; "" : none
}

// runArgs is the container CLI's argument vector that starts the guest.
func (r guestRun) runArgs() []string {
	name := guestContainerName(r.Instance)
	args := []string{"run", "-d", "--name", name, "--label", guestLabel + "=" + r.Instance}
	if r.Network != "" {
		args = append(args, "--network", r.Network)
	}
	args = append(args,
		"-e", "TROVE_INSTANCE="+r.Instance,
		"-e", "TROVE_ENGINE="+r.Engine,
		"-e", "TROVE_NATS_URL="+r.NATSURL)
	if r.NKeyFile != "" {
		args = append(args, "-v", r.NKeyFile+":"+agentNKeyInContainer+":ro", "-e", "TROVE_NATS_NKEY="+agentNKeyInContainer)
	}
	return append(args, r.Image)
}

// networkGateway reads the gateway address out of `podman network inspect` or `docker network inspect`
// output: netavark's subnets[].gateway (Podman 4+), Docker's IPAM.Config[].Gateway, or CNI's
// plugins[].ipam.ranges[][].gateway (Podman 3). The first IPv4 gateway wins.
func networkGateway(inspect []byte) (string, error) {
	type subnet struct {
		Gateway string `json:"gateway"`
	}
	var nets []struct {
		Subnets []subnet `json:"subnets"`
		IPAM    struct {
			Config []struct {
				Gateway string `json:"Gateway"`
			} `json:"Config"`
		} `json:"IPAM"`
		Plugins []struct {
			IPAM struct {
				Ranges [][]subnet `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(inspect, &nets); err != nil {
		return "", errs.Wrap(errs.Internal, err, "reading the network inspect output")
	}
	var found []string
	for _, n := range nets {
		for _, s := range n.Subnets {
			found = append(found, s.Gateway)
		}
		for _, c := range n.IPAM.Config {
			found = append(found, c.Gateway)
		}
		for _, p := range n.Plugins {
			for _, rs := range p.IPAM.Ranges {
				for _, s := range rs {
					found = append(found, s.Gateway)
				}
			}
		}
	}
	for _, gw := range found {
		if ip := net.ParseIP(gw); ip != nil && ip.To4() != nil {
			return ip.String(), nil
		}
	}
	for _, gw := range found {
		if ip := net.ParseIP(gw); ip != nil {
			return ip.String(), nil
		}
	}
	return "", errs.Unavailablef("the network has no gateway address")
}

// isLocalHost tells whether host means "this machine only": loopback, unspecified or localhost. Such an
// address reaches the container itself, not the host, from inside a container.
func isLocalHost(host string) bool {
	if host == "" || strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

// containerNATSURL rewrites the stack's NATS URL(s) (comma separated) for a container: with a gateway, a
// loopback, unspecified or localhost host becomes the gateway; anything else stays. Each URL is checked.
func containerNATSURL(stackURL, gateway string) (string, error) {
	var out []string
	for _, raw := range strings.Split(stackURL, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw
		}
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return "", errs.BadRequestf("NATS URL %q is not a URL like nats://host:4222", raw)
		}
		if gateway != "" && isLocalHost(u.Hostname()) {
			port := u.Port()
			if port == "" {
				port = "4222"
			}
			u.Host = net.JoinHostPort(gateway, port)
		}
		out = append(out, u.String())
	}
	if len(out) == 0 {
		return "", errs.BadRequestf("no NATS URL given")
	}
	return strings.Join(out, ","), nil
}

// needsGateway tells whether any of the URLs names this machine only.
func needsGateway(stackURL string) bool {
	for _, raw := range strings.Split(stackURL, ",") {
		raw = strings.TrimSpace(raw)
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw
		}
		if u, err := url.Parse(raw); err == nil && isLocalHost(u.Hostname()) {
			return true
		}
	}
	return false
}

// cliError turns a failed container CLI run into a coded error that shows what the CLI said.
func cliError(cli containerCLI, args []string, stderr []byte, err error) error {
	msg := strings.TrimSpace(string(stderr))
	if msg == "" {
		msg = err.Error()
	}
	what := cli.Name + " " + args[0]
	low := strings.ToLower(msg)
	switch {
	case strings.Contains(low, "no such container") || strings.Contains(low, "no container with name"):
		return errs.Wrap(errs.NotFound, err, "%s: %s", what, msg)
	case strings.Contains(low, "already in use"):
		return errs.Wrap(errs.Conflict, err, "%s: %s", what, msg)
	case strings.Contains(low, "image not known") || strings.Contains(low, "unable to find image") ||
		strings.Contains(low, "no such image") || strings.Contains(low, "pull access denied"):
		return errs.Wrap(errs.NotFound, err, "%s: %s (build the guest image with `go tool task image:guest`)", what, msg)
	}
	return errs.Wrap(errs.Unavailable, err, "%s: %s", what, msg)
}

// newInstanceID makes a guest id: the engine and a random suffix.
func newInstanceID(engine string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return engine + "-" + hex.EncodeToString(b)
}

type guestStartOptions struct {
	engine, name, image, natsURL, network, agentNKey, runtime string
	wait                                                      time.Duration
	asJSON                                                    bool
}

func guestStartCmd(g *globals) *cobra.Command {
	var o guestStartOptions
	c := &cobra.Command{
		Use:   "start --engine E [--name ID]",
		Short: "Run a local guest container from the guest image against the running stack, and wait until it is healthy",
		Long: `start runs the guest image (podman, else docker) as container trove-guest-<ID> with the agent configured by
TROVE_INSTANCE, TROVE_ENGINE, TROVE_NATS_URL and, when the stack's agent key exists, TROVE_NATS_NKEY (the
key file is mounted read-only). The agent connects to NATS, registers in ` + guestv1.RegistryBucket + ` and starts its
engine; start waits (--wait) until the registration is fresh and healthy and prints it.

The container must reach NATS: a loopback --nats URL is rewritten to the container network's gateway
(podman: 10.88.0.1 by default), so the stack must listen there, e.g. ` + "`trovectl up --nats-listen 0.0.0.0:4222`" + `
(see docs/operations.md, Guests). --nats-url gives the URL as the container sees it instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.asJSON {
				g.output = "json"
			}
			return g.guestStart(cmd.Context(), o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.engine, "engine", "", "engine of the guest: "+strings.Join(guestv1.Engines, ", ")+" (required)")
	f.StringVar(&o.name, "name", "", "instance id of the guest (default <engine>-<random>)")
	f.StringVar(&o.image, "image", DefaultGuestImage, "guest image")
	f.StringVar(&o.natsURL, "nats-url", "", "NATS URL as the container reaches it (default: --nats with a loopback host replaced by the network's gateway)")
	f.StringVar(&o.network, "network", "", "container network (default podman's \"podman\", docker's \"bridge\")")
	f.StringVar(&o.agentNKey, "agent-nkey", "", "the agent's NKey seed file, mounted read-only (default agent.nk beside --nkey, else "+defaultAgentNKey+" when it exists)")
	f.StringVar(&o.runtime, "runtime", "", "container CLI to use: podman or docker (default: podman if found, else docker)")
	f.DurationVar(&o.wait, "wait", 2*time.Minute, "how long to wait for the guest to register healthy (0: do not wait)")
	f.BoolVar(&o.asJSON, "json", false, "print JSON (same as -o json)")
	return c
}

// defaultAgentNKey is the agent identity `trovectl up` writes under its default --data-dir.
const defaultAgentNKey = "data/nkeys/agent.nk"

// agentKeyFile is the agent seed file to mount: the flag, else agent.nk beside the client's key, else the
// default data dir's; "" when none exists (a NATS server without authentication).
func (g *globals) agentKeyFile(flag string) (string, error) {
	if flag != "" {
		if _, err := os.Stat(flag); err != nil {
			return "", errs.Wrap(errs.BadRequest, err, "--agent-nkey")
		}
		return filepath.Abs(flag)
	}
	candidates := []string{}
	if g.nkey != "" {
		candidates = append(candidates, filepath.Join(filepath.Dir(g.nkey), "agent.nk"))
	}
	candidates = append(candidates, defaultAgentNKey)
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			return filepath.Abs(c)
		}
	}
	return "", nil
}

func (g *globals) guestStart(ctx context.Context, o guestStartOptions) error {
	if !slices.Contains(guestv1.Engines, o.engine) {
		if o.engine == "" {
			return errs.BadRequestf("--engine is required: one of %s", strings.Join(guestv1.Engines, ", "))
		}
		return errs.BadRequestf("--engine %q is not one of %s", o.engine, strings.Join(guestv1.Engines, ", "))
	}
	id := o.name
	if id == "" {
		id = newInstanceID(o.engine)
	}
	if err := guestv1.ValidateInstance(id); err != nil {
		return err
	}
	if o.image == "" {
		return errs.BadRequestf("--image is empty")
	}
	if o.wait < 0 {
		return errs.BadRequestf("--wait %s is negative", o.wait)
	}
	cli, err := findContainerCLI(o.runtime)
	if err != nil {
		return err
	}
	network := o.network
	if network == "" {
		network = cli.defaultNetwork()
	}
	natsURL, gateway := o.natsURL, ""
	if natsURL == "" {
		natsURL = g.natsURL
		// A loopback address inside a container is the container itself; the host is the network's
		// gateway (except on the host's own network).
		if needsGateway(natsURL) && network != "host" {
			args := []string{"network", "inspect", network}
			out, stderr, err := runContainer(ctx, cli, args...)
			if err != nil {
				return errs.Wrap(errs.Unavailable, cliError(cli, args, stderr, err),
					"cannot find the gateway of container network %s, where containers reach this host; give --nats-url", network)
			}
			if gateway, err = networkGateway(out); err != nil {
				return errs.Wrap(errs.Unavailable, err, "container network %s; give --nats-url", network)
			}
		}
	}
	natsURL, err = containerNATSURL(natsURL, gateway)
	if err != nil {
		return err
	}
	key, err := g.agentKeyFile(o.agentNKey)
	if err != nil {
		return err
	}

	nc, err := g.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return errs.Wrap(errs.Internal, err, "JetStream client")
	}
	if r, err := currentRegistration(ctx, g, js, id); err == nil && !r.Stale(time.Now()) {
		return errs.Conflictf("guest %s is already registered and alive (last heartbeat %s); stop it with `trovectl guest stop %s` or choose another --name",
			id, ageText(r.Age(time.Now())), id)
	} else if err != nil && !errs.Is(err, errs.NotFound) {
		return err
	}

	run := guestRun{Instance: id, Engine: o.engine, NATSURL: natsURL, Image: o.image, NKeyFile: key}
	if o.network != "" {
		run.Network = o.network
	}
	args := run.runArgs()
	launched := time.Now()
	out, stderr, err := runContainer(ctx, cli, args...)
	if err != nil {
		return cliError(cli, args, stderr, err)
	}
	name := guestContainerName(id)
	cid := strings.TrimSpace(string(out))
	if len(cid) > 12 {
		cid = cid[:12]
	}
	fmt.Fprintf(g.stderr, "started container %s (%s %s) from %s; the agent reaches NATS at %s\n", name, cli.Name, cid, o.image, natsURL)
	if key == "" {
		fmt.Fprintf(g.stderr, "note: no agent NKey found (--agent-nkey); the agent connects without an identity, which `trovectl up` refuses\n")
	}
	if o.wait == 0 {
		return g.print(map[string]string{"instance": id, "container": name, "nats_url": natsURL}, func(w io.Writer) {
			fmt.Fprintf(w, "%s: container %s started; follow it with `trovectl guest show %s`\n", id, name, id)
		})
	}
	fmt.Fprintf(g.stderr, "waiting up to %s for guest %s to register healthy ...\n", o.wait, id)
	r, err := g.waitHealthy(ctx, cli, js, id, launched, o.wait)
	if err != nil {
		return err
	}
	v := viewOf(r, time.Now())
	return g.print(v, func(w io.Writer) { printGuestTable(w, []guestView{v}) })
}

// currentRegistration reads a guest's record; NotFound when there is none (or no registry yet).
func currentRegistration(ctx context.Context, g *globals, js jetstream.JetStream, id string) (guestv1.Registration, error) {
	rctx, cancel := g.requestCtx(ctx)
	defer cancel()
	kv, err := registryKV(rctx, js)
	if err != nil {
		return guestv1.Registration{}, err
	}
	return guestclient.Guest(rctx, kv, id)
}

// healthyPoll is how often start looks at the registry, containerPoll how often at the container.
const (
	healthyPoll   = 250 * time.Millisecond
	containerPoll = 2 * time.Second
)

// waitHealthy waits until the guest's registration is newer than launched, fresh and its engine healthy;
// it fails early, with the container's log tail, when the container stops.
func (g *globals) waitHealthy(ctx context.Context, cli containerCLI, js jetstream.JetStream, id string, launched time.Time, wait time.Duration) (guestv1.Registration, error) {
	name := guestContainerName(id)
	deadline := time.Now().Add(wait)
	lastContainerCheck := time.Now()
	// Clocks of the host and its containers are the same clock; a second of slack covers rounding.
	since := launched.Add(-time.Second)
	var last guestv1.Registration
	var seen bool
	for {
		r, err := currentRegistration(ctx, g, js, id)
		switch {
		case err == nil && r.Started.After(since):
			last, seen = r, true
			if !r.Stale(time.Now()) && r.Status.Healthy {
				return r, nil
			}
		case err != nil && !errs.Is(err, errs.NotFound) && !errs.Is(err, errs.Timeout):
			return r, err
		}
		if time.Since(lastContainerCheck) >= containerPoll {
			lastContainerCheck = time.Now()
			if running, err := containerRunning(ctx, cli, name); err == nil && !running {
				return last, errs.Unavailablef("guest container %s stopped before the guest became healthy%s\n%s",
					name, stateNote(last, seen), containerLogs(ctx, cli, name))
			}
		}
		if time.Now().After(deadline) {
			hint := ""
			if !seen {
				hint = "; the agent never registered: can the container reach NATS? `trovectl up` must listen where containers reach it (--nats-listen 0.0.0.0:4222 or the network's gateway address), or give --nats-url"
			}
			return last, errs.New(errs.Timeout, "guest %s did not become healthy within %s%s%s; the container is left running for inspection (`%s logs %s`; remove it with `trovectl guest stop %s`)\n%s",
				id, wait, stateNote(last, seen), hint, cli.Name, name, id, containerLogs(ctx, cli, name))
		}
		select {
		case <-ctx.Done():
			return last, errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "waiting for guest %s (container %s is left running)", id, name)
		case <-time.After(healthyPoll):
		}
	}
}

// stateNote says how far a guest got.
func stateNote(r guestv1.Registration, seen bool) string {
	if !seen {
		return ""
	}
	s := fmt.Sprintf(" (registered; engine %s, healthy %s", dash(r.Status.State), yesNo(r.Status.Healthy))
	if r.Status.Message != "" {
		s += ": " + r.Status.Message
	}
	return s + ")"
}

// containerRunning asks the container CLI whether the container runs.
func containerRunning(ctx context.Context, cli containerCLI, name string) (bool, error) {
	out, stderr, err := runContainer(ctx, cli, "inspect", "--format", "{{.State.Running}}", name)
	if err != nil {
		return false, cliError(cli, []string{"inspect"}, stderr, err)
	}
	return strings.TrimSpace(string(out)) == "true", nil
}

// containerLogs is the tail of a container's log, for an error message (agents never log secrets).
func containerLogs(ctx context.Context, cli containerCLI, name string) string {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	out, stderr, err := runContainer(lctx, cli, "logs", "--tail", "20", name)
	if err != nil {
		return "(no container log: " + strings.TrimSpace(string(stderr)) + ")"
	}
	logs := strings.TrimSpace(string(out) + string(stderr))
	if logs == "" {
		return "(the container log is empty)"
	}
	return "last lines of the container log:\n" + logs
}

func guestStopCmd(g *globals) *cobra.Command {
	var runtime string
	var grace time.Duration
	c := &cobra.Command{
		Use:   "stop ID",
		Short: "Stop and remove a local guest container that `guest start` ran",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := guestv1.ValidateInstance(id); err != nil {
				return err
			}
			cli, err := findContainerCLI(runtime)
			if err != nil {
				return err
			}
			return g.guestStop(cmd.Context(), cli, id, grace)
		},
	}
	c.Flags().StringVar(&runtime, "runtime", "", "container CLI to use: podman or docker (default: podman if found, else docker)")
	c.Flags().DurationVar(&grace, "grace", 10*time.Second, "how long the agent has to stop its engine before it is killed")
	return c
}

func (g *globals) guestStop(ctx context.Context, cli containerCLI, id string, grace time.Duration) error {
	name := guestContainerName(id)
	// Only containers that carry our label with this id are touched: a name clash with a foreign
	// container is refused rather than removed.
	args := []string{"inspect", "--format", "{{index .Config.Labels \"" + guestLabel + "\"}}", name}
	out, stderr, err := runContainer(ctx, cli, args...)
	if err != nil {
		e := cliError(cli, args, stderr, err)
		if errs.Is(e, errs.NotFound) {
			return errs.NotFoundf("no guest container %s (%s found none; `%s ps -a --filter label=%s` lists the guest containers)", name, cli.Name, cli.Name, guestLabel)
		}
		return e
	}
	if got := strings.TrimSpace(string(out)); got != id {
		return errs.Conflictf("container %s was not started by `trovectl guest start` (label %s is %q, want %q); not touching it", name, guestLabel, got, id)
	}
	secs := fmt.Sprintf("%d", int(grace.Round(time.Second).Seconds()))
	for _, args := range [][]string{{"stop", "-t", secs, name}, {"rm", name}} {
		if _, stderr, err := runContainer(ctx, cli, args...); err != nil {
			return cliError(cli, args, stderr, err)
		}
	}
	fmt.Fprintf(g.stdout, "%s: container %s stopped and removed\n", id, name)
	return nil
}
