package cli

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/natsauth"
)

// Sample `network inspect` outputs, as the CLIs print them.
const (
	podmanNetworkInspect = `[
     {
          "name": "podman",
          "id": "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9",
          "driver": "bridge",
          "network_interface": "podman0",
          "subnets": [
               { "subnet": "fd00::/64", "gateway": "fd00::1" },
               { "subnet": "10.88.0.0/16", "gateway": "10.88.0.1" }
          ],
          "ipv6_enabled": true,
          "internal": false,
          "dns_enabled": false,
          "ipam_options": { "driver": "host-local" }
     }
]`
	dockerNetworkInspect = `[
    {
        "Name": "bridge",
        "Id": "a1b2",
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": false,
        "IPAM": { "Driver": "default", "Options": null, "Config": [ { "Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1" } ] },
        "Internal": false,
        "Options": { "com.docker.network.bridge.default_bridge": "true" }
    }
]`
	cniNetworkInspect = `[
  {
    "cniVersion": "0.4.0",
    "name": "podman",
    "plugins": [
      { "type": "bridge", "bridge": "cni-podman0", "isGateway": true, "ipMasq": true,
        "ipam": { "type": "host-local", "routes": [ { "dst": "0.0.0.0/0" } ], "ranges": [ [ { "subnet": "10.88.0.0/16", "gateway": "10.88.0.1" } ] ] } },
      { "type": "portmap", "capabilities": { "portMappings": true } }
    ]
  }
]`
)

func TestNetworkGateway(t *testing.T) {
	for name, c := range map[string]struct{ json, want string }{
		"podman 4 (netavark), IPv4 preferred": {podmanNetworkInspect, "10.88.0.1"},
		"docker":                              {dockerNetworkInspect, "172.17.0.1"},
		"podman 3 (CNI)":                      {cniNetworkInspect, "10.88.0.1"},
		"IPv6 only":                           {`[{"subnets":[{"subnet":"fd00::/64","gateway":"fd00::1"}]}]`, "fd00::1"},
	} {
		got, err := networkGateway([]byte(c.json))
		if err != nil || got != c.want {
			t.Errorf("%s: %q %v, want %q", name, got, err, c.want)
		}
	}
	for name, bad := range map[string]string{"no gateway": `[{"subnets":[{"subnet":"10.0.0.0/8"}]}]`, "empty": `[]`, "not JSON": `Error: network not found`, "garbage gateway": `[{"subnets":[{"gateway":"; rm -rf /"}]}]`} {
		if got, err := networkGateway([]byte(bad)); err == nil {
			t.Errorf("%s: got %q, want an error", name, got)
		}
	}
}

func TestContainerNATSURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":               "nats://10.88.0.1:4222",
		"nats://localhost:4333":               "nats://10.88.0.1:4333",
		"nats://0.0.0.0:4222":                 "nats://10.88.0.1:4222",
		"nats://[::1]:4222":                   "nats://10.88.0.1:4222",
		"127.0.0.1:4222":                      "nats://10.88.0.1:4222",
		"nats://127.0.0.1":                    "nats://10.88.0.1:4222",
		"nats://10.88.0.1:4222":               "nats://10.88.0.1:4222",
		"nats://nats.example:4222":            "nats://nats.example:4222",
		"tls://127.0.0.1:4222,nats://n2:4222": "tls://10.88.0.1:4222,nats://n2:4222",
	} {
		got, err := containerNATSURL(in, "10.88.0.1")
		if err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", in, got, err, want)
		}
	}
	if got, err := containerNATSURL("nats://127.0.0.1:4222", ""); err != nil || got != "nats://127.0.0.1:4222" {
		t.Errorf("without a gateway the URL stays: %q %v", got, err)
	}
	if !needsGateway("nats://127.0.0.1:4222") || !needsGateway("nats://a:1,nats://localhost:2") || needsGateway("nats://10.88.0.1:4222") {
		t.Error("needsGateway")
	}
	for _, bad := range []string{"", "nats://", "nats://[::1"} {
		if _, err := containerNATSURL(bad, "10.88.0.1"); !errs.Is(err, errs.BadRequest) {
			t.Errorf("%q: %v, want bad_request", bad, err)
		}
	}
}

func TestGuestRunArgs(t *testing.T) {
	r := guestRun{Instance: "redis-1", Engine: "redis", NATSURL: "nats://10.88.0.1:4222", Image: DefaultGuestImage}
	want := []string{"run", "-d", "--name", "trove-guest-redis-1", "--label", "troveng.guest=redis-1",
		"-e", "TROVE_INSTANCE=redis-1", "-e", "TROVE_ENGINE=redis", "-e", "TROVE_NATS_URL=nats://10.88.0.1:4222", "localhost/trove-guest:dev"}
	if got := r.runArgs(); !slices.Equal(got, want) {
		t.Fatalf("argv\n got %q\nwant %q", got, want)
	}
	r.NKeyFile, r.Network = "/srv/data/nkeys/agent.nk", "trove"
	want = []string{"run", "-d", "--name", "trove-guest-redis-1", "--label", "troveng.guest=redis-1", "--network", "trove",
		"-e", "TROVE_INSTANCE=redis-1", "-e", "TROVE_ENGINE=redis", "-e", "TROVE_NATS_URL=nats://10.88.0.1:4222",
		"-v", "/srv/data/nkeys/agent.nk:/run/trove/agent.nk:ro", "-e", "TROVE_NATS_NKEY=/run/trove/agent.nk", "localhost/trove-guest:dev"}
	if got := r.runArgs(); !slices.Equal(got, want) {
		t.Fatalf("argv with a key and a network\n got %q\nwant %q", got, want)
	}
}

func TestFindContainerCLI(t *testing.T) {
	have := map[string]bool{}
	old := lookPath
	t.Cleanup(func() { lookPath = old })
	lookPath = func(name string) (string, error) {
		if have[name] {
			return "/usr/bin/" + name, nil
		}
		return "", exec.ErrNotFound
	}
	_, err := findContainerCLI("")
	if !errs.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "containers:setup") || !strings.Contains(err.Error(), "podman") {
		t.Fatalf("none found: %v", err)
	}
	have["docker"] = true
	if c, err := findContainerCLI(""); err != nil || c.Name != "docker" || c.defaultNetwork() != "bridge" {
		t.Fatalf("docker only: %+v %v", c, err)
	}
	have["podman"] = true
	if c, err := findContainerCLI(""); err != nil || c.Name != "podman" || c.Path != "/usr/bin/podman" || c.defaultNetwork() != "podman" {
		t.Fatalf("both: %+v %v", c, err)
	}
	if c, err := findContainerCLI("docker"); err != nil || c.Name != "docker" {
		t.Fatalf("--runtime docker: %+v %v", c, err)
	}
	if _, err := findContainerCLI("sh"); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("--runtime sh: %v", err)
	}
}

// fakeContainers stands in for the podman CLI: it records every argument vector, and `run` starts a
// registrar (a healthy guest's heartbeat) in-process with the instance, engine and key the argv gives it
// (unless noAgent).
type fakeContainers struct {
	t       *testing.T
	natsURL string // where the in-process agent really connects (the argv's URL is the container's view)

	mu       sync.Mutex
	calls    [][]string
	agents   map[string]*registrar // by container name
	labels   map[string]string
	running  map[string]bool
	noAgent  bool
	runStops bool // the container exits at once (inspect says not running)
}

func installFakeContainers(t *testing.T, natsURL string) *fakeContainers {
	f := &fakeContainers{t: t, natsURL: natsURL, agents: map[string]*registrar{}, labels: map[string]string{}, running: map[string]bool{}}
	oldLook, oldRun := lookPath, runContainer
	t.Cleanup(func() { lookPath, runContainer = oldLook, oldRun })
	lookPath = func(name string) (string, error) {
		if name == "podman" {
			return "/usr/bin/podman", nil
		}
		return "", exec.ErrNotFound
	}
	runContainer = f.run
	return f
}

func (f *fakeContainers) argvs(verb string) [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out [][]string
	for _, c := range f.calls {
		if c[0] == verb {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeContainers) run(_ context.Context, cli containerCLI, args ...string) ([]byte, []byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cli.Name != "podman" {
		f.t.Errorf("container CLI %q, want podman", cli.Name)
	}
	f.calls = append(f.calls, slices.Clone(args))
	failed := errors.New("exit status 125")
	name := args[len(args)-1]
	switch args[0] {
	case "network":
		if slices.Equal(args, []string{"network", "inspect", "podman"}) {
			return []byte(podmanNetworkInspect), nil, nil
		}
		return nil, []byte("Error: unable to find network with name or ID " + name + ": network not found"), failed
	case "run":
		var instance, engine, key string
		for i, a := range args {
			switch {
			case a == "--name":
				name = args[i+1]
			case strings.HasPrefix(a, "TROVE_INSTANCE="):
				instance = strings.TrimPrefix(a, "TROVE_INSTANCE=")
			case strings.HasPrefix(a, "TROVE_ENGINE="):
				engine = strings.TrimPrefix(a, "TROVE_ENGINE=")
			case a == "-v":
				key, _, _ = strings.Cut(args[i+1], ":")
			}
		}
		if _, ok := f.labels[name]; ok {
			return nil, []byte(`Error: creating container storage: the container name "` + name + `" is already in use by 0123. You have to remove that container to be able to reuse that name: that name is already in use`), failed
		}
		f.labels[name] = instance
		f.running[name] = !f.runStops
		if !f.noAgent && !f.runStops {
			opts := []nats.Option{}
			if key != "" {
				id, err := natsauth.SeedOption(key)
				if err != nil {
					f.t.Errorf("the mounted agent key: %v", err)
				}
				opts = append(opts, id)
			}
			nc, err := nats.Connect(f.natsURL, opts...)
			if err != nil {
				f.t.Errorf("the agent's connect: %v", err)
				return nil, nil, err
			}
			f.t.Cleanup(nc.Close)
			f.agents[name] = startRegistrar(f.t, nc, instance, engine)
		}
		return []byte("4f871c9e90150123456789abcdef\n"), nil, nil
	case "inspect":
		label, ok := f.labels[name]
		if !ok {
			return nil, []byte("Error: no such container " + name), failed
		}
		if slices.Contains(args, "{{.State.Running}}") {
			if f.running[name] {
				return []byte("true\n"), nil, nil
			}
			return []byte("false\n"), nil, nil
		}
		return []byte(label + "\n"), nil, nil
	case "logs":
		return []byte("trove-agent: connecting to NATS\n"), []byte("trove-agent: NATS not reachable yet; retrying\n"), nil
	case "stop":
		if a := f.agents[name]; a != nil {
			a.Stop()
		}
		f.running[name] = false
		return []byte(name + "\n"), nil, nil
	case "rm":
		delete(f.labels, name)
		delete(f.running, name)
		return []byte(name + "\n"), nil, nil
	}
	return nil, []byte("unknown command " + args[0]), failed
}

// TestGuestStartStop: start builds the container's argv (gateway URL, the stack's agent key mounted), waits
// until the guest registers healthy and prints it; stop stops and removes only containers it started.
func TestGuestStartStop(t *testing.T) {
	t.Setenv("TROVE_NATS_NKEY", "")
	t.Setenv("TROVE_NATS_CREDS", "")
	work := t.TempDir()
	t.Chdir(work)
	url, _ := startUp(t, filepath.Join(work, "data")) // the default data dir: keys found by themselves
	port := url[strings.LastIndex(url, ":")+1:]
	fc := installFakeContainers(t, url)
	nats := "--nats=" + url

	code, out, stderr := runCLI(t, nats, "guest", "start", "--engine", "redis", "--name", "redis-1")
	if code != 0 {
		t.Fatalf("guest start: %d %q %q", code, out, stderr)
	}
	runs := fc.argvs("run")
	if len(runs) != 1 {
		t.Fatalf("run calls: %q", runs)
	}
	key, _ := filepath.Abs(filepath.Join("data", "nkeys", "agent.nk"))
	want := []string{"run", "-d", "--name", "trove-guest-redis-1", "--label", "troveng.guest=redis-1",
		"-e", "TROVE_INSTANCE=redis-1", "-e", "TROVE_ENGINE=redis", "-e", "TROVE_NATS_URL=nats://10.88.0.1:" + port,
		"-v", key + ":" + agentNKeyInContainer + ":ro", "-e", "TROVE_NATS_NKEY=" + agentNKeyInContainer, DefaultGuestImage}
	if !slices.Equal(runs[0], want) {
		t.Fatalf("run argv\n got %q\nwant %q", runs[0], want)
	}
	if !strings.Contains(tableRow(out, "redis-1"), "running") || !strings.Contains(stderr, "nats://10.88.0.1:"+port) {
		t.Fatalf("start output: %q %q", out, stderr)
	}
	if seed, _ := os.ReadFile(key); strings.Contains(out+stderr, strings.TrimSpace(string(seed))) {
		t.Fatal("start printed the agent's seed")
	}
	// The guest is there for the other commands.
	if code, out, _ := runCLI(t, nats, "guest", "ls"); code != 0 || !strings.Contains(tableRow(out, "redis-1"), "running") {
		t.Fatalf("ls after start: %d %q", code, out)
	}
	// Starting it again while it lives is a conflict, and runs nothing.
	code, _, stderr = runCLI(t, nats, "guest", "start", "--engine", "redis", "--name", "redis-1")
	if code != exitConflict || !strings.Contains(stderr, "already registered") || len(fc.argvs("run")) != 1 {
		t.Fatalf("second start: %d %q", code, stderr)
	}

	// A generated id, --nats-url as given, JSON output.
	code, out, stderr = runCLI(t, nats, "guest", "start", "--engine", "postgresql", "--nats-url", "nats://nats.example:4222", "--json")
	if code != 0 || !strings.Contains(out, `"engine": "postgresql"`) || !strings.Contains(out, `"stale": false`) {
		t.Fatalf("start with a generated id: %d %q %q", code, out, stderr)
	}
	last := fc.argvs("run")[1]
	if !slices.Contains(last, "TROVE_NATS_URL=nats://nats.example:4222") || !strings.HasPrefix(last[3], "trove-guest-postgresql-") {
		t.Fatalf("argv with --nats-url: %q", last)
	}
	if err := guestv1.ValidateInstance(strings.TrimPrefix(last[3], containerNamePrefix)); err != nil {
		t.Fatalf("generated id: %v", err)
	}

	// stop: only our containers (our label with this id), stopped then removed.
	code, out, stderr = runCLI(t, "guest", "stop", "redis-1")
	if code != 0 || !strings.Contains(out, "stopped and removed") {
		t.Fatalf("stop: %d %q %q", code, out, stderr)
	}
	if s := fc.argvs("stop"); len(s) != 1 || !slices.Equal(s[0], []string{"stop", "-t", "10", "trove-guest-redis-1"}) {
		t.Fatalf("stop argv: %q", s)
	}
	if r := fc.argvs("rm"); len(r) != 1 || !slices.Equal(r[0], []string{"rm", "trove-guest-redis-1"}) {
		t.Fatalf("rm argv: %q", r)
	}
	if code, _, stderr := runCLI(t, "guest", "stop", "redis-1"); code != exitNotFound || !strings.Contains(stderr, "no guest container") {
		t.Fatalf("stop of a removed guest: %d %q", code, stderr)
	}
	fc.mu.Lock()
	fc.labels["trove-guest-web"] = "" // someone else's container with a name like ours
	fc.mu.Unlock()
	if code, _, stderr := runCLI(t, "guest", "stop", "web"); code != exitConflict || !strings.Contains(stderr, "not touching it") || len(fc.argvs("stop")) != 1 {
		t.Fatalf("stop of a foreign container: %d %q", code, stderr)
	}

	// Bad input never reaches the container CLI.
	calls := len(fc.calls)
	for _, args := range [][]string{
		{"guest", "start", "--engine", "redis", "--name", "a.b"},
		{"guest", "start", "--engine", "redis", "--name", "x;rm -rf /"},
		{"guest", "start", "--engine", "oracle"},
		{"guest", "start"},
		{"guest", "stop", "a.*"},
		{"guest", "start", "--engine", "redis", "--runtime", "sh"},
	} {
		if code, _, stderr := runCLI(t, append([]string{nats}, args...)...); code != exitBadRequest {
			t.Fatalf("%q: %d %q", args, code, stderr)
		}
	}
	if len(fc.calls) != calls {
		t.Fatalf("bad input ran the container CLI: %q", fc.calls[calls:])
	}
	// The name is taken by a container that never registered: the CLI's refusal comes back as a conflict.
	fc.mu.Lock()
	fc.labels["trove-guest-taken"] = "taken"
	fc.mu.Unlock()
	if code, _, stderr := runCLI(t, nats, "guest", "start", "--engine", "redis", "--name", "taken"); code != exitConflict || !strings.Contains(stderr, "already in use") {
		t.Fatalf("start on a taken name: %d %q", code, stderr)
	}
	// An unknown network: its gateway cannot be found, and the error says what to give instead.
	if code, _, stderr := runCLI(t, nats, "guest", "start", "--engine", "redis", "--network", "nope"); code != exitUnavailable || !strings.Contains(stderr, "--nats-url") {
		t.Fatalf("start on an unknown network: %d %q", code, stderr)
	}
}

// TestGuestStartFailures: an agent that never registers ends the wait with a timeout that says why and
// shows the container's log; a container that exits ends it at once.
func TestGuestStartFailures(t *testing.T) {
	t.Setenv("TROVE_NATS_NKEY", "")
	t.Setenv("TROVE_NATS_CREDS", "")
	work := t.TempDir()
	t.Chdir(work)
	url, _ := startUp(t, filepath.Join(work, "data"))
	fc := installFakeContainers(t, url)
	nats := "--nats=" + url

	fc.noAgent = true
	code, _, stderr := runCLI(t, nats, "guest", "start", "--engine", "redis", "--name", "lost", "--wait", "1s")
	for _, want := range []string{"timeout", "did not become healthy within 1s", "--nats-listen 0.0.0.0:4222", "NATS not reachable yet", "trovectl guest stop lost"} {
		if code != exitTimeout || !strings.Contains(stderr, want) {
			t.Fatalf("start with no agent: %d, want %d and %q in\n%s", code, exitTimeout, want, stderr)
		}
	}
	fc.noAgent, fc.runStops = false, true
	code, _, stderr = runCLI(t, nats, "guest", "start", "--engine", "redis", "--name", "dies", "--wait", "1m")
	if code != exitUnavailable || !strings.Contains(stderr, "stopped before the guest became healthy") {
		t.Fatalf("start of a container that exits: %d %q", code, stderr)
	}
	// No container CLI at all.
	lookPath = func(string) (string, error) { return "", exec.ErrNotFound }
	code, _, stderr = runCLI(t, nats, "guest", "start", "--engine", "redis")
	if code != exitUnavailable || !strings.Contains(stderr, "no container CLI found") {
		t.Fatalf("start without a container CLI: %d %q", code, stderr)
	}
}
