// Package testkit starts what integration tests of every module need around guests: an embedded NATS
// server with JetStream (and optionally versitygw) on the host, and N guest containers of one engine on a
// network of their own, each waited for until its agent is registered and its engine healthy. It works the
// same against Podman (here) and Docker (elsewhere), through testcontainers-go.
//
// Servers run host-side, in the test process (NATS) or as a local binary (versitygw): no registry can be
// reached on these machines to pull server images, and an in-process server is as real as one in a
// container (the same nats-server code, real sockets), starts in milliseconds and can be stopped and
// restarted by the test. They listen on the network's gateway address, the host's own address on the
// containers' bridge, so guests reach them and nothing outside does. See docs/testkit.md.
package testkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/testcontainers/testcontainers-go"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/s3test"
)

// DefaultImage is the guest image scripts/build-guest-image.sh builds.
const DefaultImage = "localhost/trove-guest:dev"

// Environment variables the kit reads.
const (
	// EnvImage overrides the guest image.
	EnvImage = "TROVE_GUEST_IMAGE"
	// EnvListen overrides the host address servers listen on (default: the network's gateway address).
	EnvListen = "TROVE_TESTKIT_LISTEN"
	// EnvHostAddr overrides the address guests dial to reach the host's servers (default: the listen address).
	EnvHostAddr = "TROVE_TESTKIT_HOST_ADDR"
	// EnvPublish=1 publishes engine ports and makes Guest.Endpoint use the mapped host ports (Docker
	// Desktop, where container addresses are not reachable from the host). Default: on unless GOOS is linux.
	EnvPublish = "TROVE_TESTKIT_PUBLISH"
)

// Labels on everything the kit creates: a later kit removes what a killed test process left behind.
const (
	labelKit  = "trove.testkit"
	labelPID  = "trove.testkit.pid"
	labelHost = "trove.testkit.host"
)

// Options configure a kit.
type Options struct {
	// Engine of the guests started with the kit (guestv1.EngineMariaDB, ...); required when Guests > 0.
	Engine string
	// Guests is how many guests to start and wait for (0: none yet; see AddGuest).
	Guests int
	// Env is added to every guest's environment (e.g. a short heartbeat for fault tests).
	Env map[string]string
	// Image is the guest image; default $TROVE_GUEST_IMAGE, else DefaultImage.
	Image string
	// S3 also starts versitygw on the host address guests reach (only with Start, which has a testing.TB).
	S3 bool
	// MaxPayload of the NATS server; default 16 MiB (above guestv1.MaxRequestSize, so that the agent, not
	// the server, is the one that refuses an oversized request).
	MaxPayload int32
	// ReadyTimeout bounds the wait for one guest to be registered and healthy; default 2 minutes.
	ReadyTimeout time.Duration
	// Prefix starts every instance id (default "g"); ids are <prefix>-<engine>-<n>-<random>.
	Prefix string
}

// DefaultMaxPayload is the kit's NATS max payload.
const DefaultMaxPayload = 16 << 20

// Kit is one test's servers and guests.
type Kit struct {
	opts      Options
	image     string
	docker    *testcontainers.DockerClient
	network   *testcontainers.DockerNetwork
	anchor    *Container
	gateway   string
	listen    string
	hostAddr  string
	publish   bool
	dir       string
	nats      *NATS
	nc        *nats.Conn
	js        jetstream.JetStream
	s3        *s3test.Server
	runID     string
	mu        sync.Mutex
	guests    []*Guest
	seq       int
	closeOnce sync.Once
	closeErr  error
}

// Start is New for a test: it fails the test on error, closes the kit when the test ends, and logs the
// tail of every guest's log when the test failed.
func Start(t testing.TB, o Options) *Kit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startBudget(o))
	defer cancel()
	k, err := New(ctx, Options{Engine: o.Engine, Env: o.Env, Image: o.Image, MaxPayload: o.MaxPayload,
		ReadyTimeout: o.ReadyTimeout, Prefix: o.Prefix})
	if err != nil {
		t.Fatalf("testkit: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			k.logTails(t)
		}
		if err := k.Close(); err != nil {
			t.Logf("testkit: close: %v", err)
		}
	})
	if o.S3 {
		k.s3 = s3test.StartOn(t, k.listen)
	}
	if o.Guests > 0 {
		if _, err := k.AddGuests(ctx, o.Engine, o.Guests, nil); err != nil {
			t.Fatalf("testkit: %v", err)
		}
	}
	return k
}

func startBudget(o Options) time.Duration {
	d := o.ReadyTimeout
	if d <= 0 {
		d = 2 * time.Minute
	}
	return d + time.Minute
}

// New creates the kit's network, starts NATS on the host address guests reach, and starts and waits for
// o.Guests guests. Close releases everything. o.S3 needs Start.
func New(ctx context.Context, o Options) (k *Kit, err error) {
	if o.S3 {
		return nil, errors.New("testkit: Options.S3 needs Start (versitygw is tied to a testing.TB)")
	}
	if o.Guests > 0 && o.Engine == "" {
		return nil, errors.New("testkit: Options.Engine is required with Guests")
	}
	if err := LoadContainersEnv(); err != nil {
		return nil, err
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 2 * time.Minute
	}
	if o.Prefix == "" {
		o.Prefix = "g"
	}
	k = &Kit{opts: o, image: o.Image, runID: randomHex(3)}
	if k.image == "" {
		k.image = os.Getenv(EnvImage)
	}
	if k.image == "" {
		k.image = DefaultImage
	}
	k.publish = runtime.GOOS != "linux"
	if v := os.Getenv(EnvPublish); v != "" {
		k.publish = v == "1" || v == "true"
	}
	defer func() {
		if err != nil {
			_ = k.Close()
			k = nil
		}
	}()

	if k.docker, err = testcontainers.NewDockerClientWithOpts(ctx); err != nil {
		return nil, fmt.Errorf("testkit: container engine (DOCKER_HOST=%q; run scripts/setup-containers.sh): %w", os.Getenv("DOCKER_HOST"), err)
	}
	k.reapOrphans(ctx)
	if k.network, err = tcnetwork.New(ctx, tcnetwork.WithLabels(k.labels())); err != nil {
		return nil, fmt.Errorf("testkit: create network: %w", err)
	}
	if k.gateway, err = k.networkGateway(ctx); err != nil {
		return nil, err
	}
	k.listen = os.Getenv(EnvListen)
	if k.listen == "" {
		k.listen = k.gateway
	}
	k.hostAddr = os.Getenv(EnvHostAddr)
	if k.hostAddr == "" {
		k.hostAddr = k.listen
	}
	// Podman (netavark) gives the host its gateway address only while a container is attached to the
	// network; Docker at once. A small container holds the address for the kit's lifetime, so that servers
	// can bind it before any guest runs, and rebind it after every guest was stopped.
	if k.listen == k.gateway && !isLocalAddr(k.gateway) {
		if k.anchor, err = k.RunContainer(ctx, ContainerOptions{Name: k.network.Name + "-anchor", Entrypoint: []string{"sleep", "infinity"}}); err != nil {
			return nil, fmt.Errorf("testkit: anchor container: %w", err)
		}
		if err := waitLocalAddr(ctx, k.gateway, 10*time.Second); err != nil {
			return nil, err
		}
	}
	if isLocalAddr(k.gateway) {
		pinBridgeMAC(k.gateway)
	}
	if k.dir, err = os.MkdirTemp("", "testkit-nats-"); err != nil {
		return nil, fmt.Errorf("testkit: %w", err)
	}
	if k.nats, err = startNATS(k.listen, k.dir, o.MaxPayload); err != nil {
		return nil, err
	}
	if k.nc, err = nats.Connect(k.nats.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond)); err != nil {
		return nil, fmt.Errorf("testkit: connect to NATS: %w", err)
	}
	if k.js, err = jetstream.New(k.nc); err != nil {
		return nil, fmt.Errorf("testkit: JetStream: %w", err)
	}
	if o.Guests > 0 {
		if _, err := k.AddGuests(ctx, o.Engine, o.Guests, nil); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// Close terminates every container, removes the network and stops the servers (idempotent).
func (k *Kit) Close() error {
	k.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var errList []error
		k.mu.Lock()
		guests := k.guests
		k.mu.Unlock()
		var wg sync.WaitGroup
		var emu sync.Mutex
		for _, g := range guests {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := g.terminate(ctx); err != nil {
					emu.Lock()
					errList = append(errList, err)
					emu.Unlock()
				}
			}()
		}
		wg.Wait()
		if k.nc != nil {
			k.nc.Close()
		}
		if k.nats != nil {
			k.nats.Stop()
		}
		if k.anchor != nil {
			if err := k.anchor.terminate(ctx); err != nil {
				errList = append(errList, err)
			}
		}
		if k.network != nil {
			if err := k.network.Remove(ctx); err != nil {
				errList = append(errList, fmt.Errorf("remove network %s: %w", k.network.Name, err))
			}
		}
		if k.docker != nil {
			_ = k.docker.Close()
		}
		if k.dir != "" {
			_ = os.RemoveAll(k.dir)
		}
		k.closeErr = errors.Join(errList...)
	})
	return k.closeErr
}

// NATS is the kit's server (stop and restart it to test NATS outages).
func (k *Kit) NATS() *NATS { return k.nats }

// NATSURL is the server's client URL; the same URL works from the host and from guests.
func (k *Kit) NATSURL() string { return k.nats.URL() }

// Conn is the kit's own client connection (reconnects forever; closed by Close).
func (k *Kit) Conn() *nats.Conn { return k.nc }

// Connect opens another client connection, closed when the test ends.
func (k *Kit) Connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(k.nats.URL(), opts...)
	if err != nil {
		t.Fatalf("testkit: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream is a JetStream context on Conn.
func (k *Kit) JetStream() jetstream.JetStream { return k.js }

// Registry opens the guest registry bucket (it exists once an agent has registered).
func (k *Kit) Registry(ctx context.Context) (jetstream.KeyValue, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return k.js.KeyValue(cctx, guestv1.RegistryBucket)
}

// S3 is the versitygw server (nil unless Options.S3). Its Endpoint is on HostAddr, reachable by guests.
func (k *Kit) S3() *s3test.Server { return k.s3 }

// Network is the name of the kit's container network.
func (k *Kit) Network() string { return k.network.Name }

// Gateway is the network's gateway address (the host's address on the containers' bridge).
func (k *Kit) Gateway() string { return k.gateway }

// HostAddr is the address guests dial to reach servers on the host.
func (k *Kit) HostAddr() string { return k.hostAddr }

// Listen opens a TCP listener for another host-side server that guests must reach (on the kit's listen
// address, a free port); dial it from guests at HostAddr and the listener's port.
func (k *Kit) Listen() (net.Listener, error) {
	return net.Listen("tcp", net.JoinHostPort(k.listen, "0"))
}

// Guests lists the kit's guests in the order they were added.
func (k *Kit) Guests() []*Guest {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]*Guest(nil), k.guests...)
}

func (k *Kit) labels() map[string]string {
	host, _ := os.Hostname()
	return map[string]string{labelKit: k.runID, labelPID: strconv.Itoa(os.Getpid()), labelHost: host}
}

func (k *Kit) networkGateway(ctx context.Context) (string, error) {
	res, err := k.docker.NetworkInspect(ctx, k.network.ID, client.NetworkInspectOptions{})
	if err != nil {
		return "", fmt.Errorf("testkit: inspect network %s: %w", k.network.Name, err)
	}
	for _, c := range res.Network.IPAM.Config {
		if c.Gateway.Is4() {
			return c.Gateway.String(), nil
		}
		if c.Subnet.Addr().Is4() { // no gateway recorded: the bridge takes the subnet's first address
			return c.Subnet.Masked().Addr().Next().String(), nil
		}
	}
	return "", fmt.Errorf("testkit: network %s has no IPv4 subnet in its IPAM config", k.network.Name)
}

// reapOrphans removes containers and networks made by a kit whose test process is gone (killed by a
// timeout, say: its cleanups never ran). Best effort.
func (k *Kit) reapOrphans(ctx context.Context) {
	host, _ := os.Hostname()
	orphan := func(labels map[string]string) bool {
		if labels[labelHost] != host {
			return false
		}
		pid, err := strconv.Atoi(labels[labelPID])
		return err == nil && pid > 0 && pid != os.Getpid() && !processAlive(pid)
	}
	filter := client.Filters{}.Add("label", labelPID)
	cs, err := k.docker.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: filter})
	if err == nil {
		for _, c := range cs.Items {
			if orphan(c.Labels) {
				_, _ = k.docker.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
			}
		}
	}
	ns, err := k.docker.NetworkList(ctx, client.NetworkListOptions{Filters: filter})
	if err == nil {
		for _, n := range ns.Items {
			if orphan(n.Labels) {
				_, _ = k.docker.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{})
			}
		}
	}
}

func isLocalAddr(ip string) bool {
	want, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if p, ok := a.(*net.IPNet); ok {
			if got, ok := netip.AddrFromSlice(p.IP); ok && got.Unmap() == want {
				return true
			}
		}
	}
	return false
}

// pinBridgeMAC fixes the MAC address of the host bridge that holds gateway. A Linux bridge whose address
// was never set takes the lowest MAC of its ports, so removing a container (a guest killed by a test) can
// change it; the other guests' ARP entries for the gateway then point nowhere, and their connections to the
// kit's servers (NATS) hang until the entries expire, tens of seconds. Setting the address to the one it
// has makes it stick. Best effort: without the right (not root) the kit runs as before.
func pinBridgeMAC(gateway string) {
	ifs, err := net.Interfaces()
	if err != nil {
		return
	}
	want, err := netip.ParseAddr(gateway)
	if err != nil {
		return
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			p, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if got, ok := netip.AddrFromSlice(p.IP); !ok || got.Unmap() != want || len(ifc.HardwareAddr) == 0 {
				continue
			}
			if out, err := exec.Command("ip", "link", "set", "dev", ifc.Name, "address", ifc.HardwareAddr.String()).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "testkit: could not pin the MAC of bridge %s (guests may lose the gateway when one is removed): %v %s\n", ifc.Name, err, out)
			}
			return
		}
	}
}

func waitLocalAddr(ctx context.Context, ip string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for !isLocalAddr(ip) {
		if time.Now().After(deadline) {
			return fmt.Errorf("testkit: the gateway address %s did not appear on the host within %s (set %s to an address guests can reach)", ip, d, EnvListen)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
