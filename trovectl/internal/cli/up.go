package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"troveng.dev/services/backup"
	"troveng.dev/services/restore"
	"troveng.dev/services/storage"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/embednats"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/natsauth"
	"troveng.dev/shared/service"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/telemetry"
)

// upOptions configure the embedded default stack.
type upOptions struct {
	dataDir   string
	listen    string
	adminAddr string
	strategy  string
	opts      []string
	demo      bool
	demoSize  int64
	once      bool
	// guest demo: --keep-guests, and whether --nats-listen was given (else the demo picks the gateway)
	keepGuests, listenSet bool
}

func upCmd(g *globals) *cobra.Command {
	o := upOptions{}
	c := &cobra.Command{
		Use:   "up",
		Short: "Run the embedded default stack: in-process NATS with JetStream, every service, fs storage",
		Long: `up starts, in this one process, a NATS server with JetStream (state under --data-dir/nats), the storage
service (fs strategy under --data-dir/storage by default) with its job workers and admin HTTP server, and
prints where everything is. NATS admits only the NKey identities kept in --data-dir/nkeys (made on the first
run, mode 0600): storage.nk for the storage service, cli.nk for trovectl and other clients, agent.nk for the
agents of local guests (` + "`trovectl guest start`" + `), each limited to its own subjects. Other trovectl commands reach
it with the printed --nats URL and TROVE_NATS_NKEY (run from the directory up ran in, with the default
--data-dir, they find the cli key by themselves). NATS listens on loopback unless --nats-listen says otherwise;
guest containers need an address they reach, e.g. --nats-listen 0.0.0.0:4222 (every interface: anyone who can
reach this host may try to connect, and only the three keys get in) or the container network's gateway
(10.88.0.1 for podman). With --demo it also stores a generated object, verifies it with a job and reads it
back, to show the whole path works; when podman (or docker) and the guest image are there, it then starts
two redis guests, loads sample data into one, backs it up (redis-rdb), restores that into the other and
shows the two are identical (--nats-listen defaults then to the container network's gateway).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.listenSet = cmd.Flags().Changed("nats-listen") || cmd.Flags().Changed("listen")
			return g.up(cmd.Context(), o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.dataDir, "data-dir", "data", "where NATS and fs storage keep their state")
	f.StringVar(&o.listen, "nats-listen", "127.0.0.1:4222", "NATS client address HOST:PORT (loopback by default; guest containers need one they reach, e.g. 0.0.0.0:4222 or the container network's gateway; every client needs an NKey up makes under --data-dir/nkeys)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:4222", "old name of --nats-listen")
	_ = f.MarkDeprecated("listen", "use --nats-listen")
	f.StringVar(&o.adminAddr, "admin-addr", "127.0.0.1:8080", "storage service admin HTTP address (/healthz, /readyz, /metrics, /v1/info)")
	f.StringVar(&o.strategy, "strategy", "fs", "storage strategy: "+strings.Join(storage.Strategies(), ", "))
	f.StringArrayVar(&o.opts, "opt", nil, "storage strategy option key=value (repeatable); fs defaults to root=<data-dir>/storage")
	f.BoolVar(&o.demo, "demo", false, "store, verify and read back a generated object once the stack is up")
	f.Int64Var(&o.demoSize, "demo-size", 64<<20, "size in bytes of the demo object")
	f.BoolVar(&o.once, "once", false, "stop after the demo instead of serving until Ctrl-C")
	f.BoolVar(&o.keepGuests, "keep-guests", false, "leave the demo's two redis guests running after the demo")
	return c
}

func (g *globals) up(ctx context.Context, o upOptions) error {
	var gd *guestDemo
	if o.demo {
		// With guests at hand the demo also backs one up and restores it into another (demo_guest.go).
		gd = g.prepareGuestDemo(ctx, &o.listen, o.listenSet, o.keepGuests)
		defer gd.close()
	}
	host, portStr, err := net.SplitHostPort(o.listen)
	if err != nil {
		return errs.BadRequestf("--nats-listen %q is not HOST:PORT", o.listen)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return errs.BadRequestf("--nats-listen port %q is not a number", portStr)
	}
	if host == "" {
		host = "0.0.0.0" // ":4222" means every address, as net.Listen reads it
	}
	dataDir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return errs.Wrap(errs.BadRequest, err, "--data-dir")
	}
	opts, err := parseMeta(o.opts)
	if err != nil {
		return err
	}
	if opts == nil {
		opts = map[string]string{}
	}
	if o.strategy == "fs" && opts["root"] == "" {
		opts["root"] = filepath.Join(dataDir, "storage")
	}
	if err := os.MkdirAll(filepath.Join(dataDir, "nats"), 0o750); err != nil {
		return errs.Wrap(errs.BadRequest, err, "creating the data directory")
	}
	cfg := storage.Config{Strategy: o.strategy, Options: opts}
	keys, err := upIdentities(dataDir, cfg)
	if err != nil {
		return err
	}

	srv, err := embednats.Start(embednats.Options{Host: host, Port: port, StoreDir: filepath.Join(dataDir, "nats"), Users: keys.users})
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "starting the embedded NATS server on %s", o.listen)
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	url := localClientURL(srv.ClientURL())
	nc, err := connectAs(url, "trove-storage", keys.storage)
	if err != nil {
		return err
	}
	defer nc.Close()

	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: service.ServiceName(storage.Family), ServiceVersion: storage.Version, OTLPEndpoint: os.Getenv(service.EnvOTLPEndpoint)})
	if err != nil {
		return err
	}
	defer func() { _ = tel.Shutdown(context.WithoutCancel(ctx)) }()
	svc, err := storage.Start(ctx, nc, tel, cfg)
	if err != nil {
		return err
	}
	defer func() { _ = svc.Stop() }()
	adm := svc.Admin(o.adminAddr, os.Getenv(service.EnvAdminToken), nc, tel)
	adminAddr, err := adm.Start(ctx)
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "starting admin HTTP on %s", o.adminAddr)
	}
	defer func() { _ = adm.Shutdown(context.WithoutCancel(ctx)) }()
	stopBR, ageFile, err := startBackupRestore(ctx, url, dataDir, keys, tel)
	if err != nil {
		return err
	}
	defer stopBR()

	out := g.stdout
	fmt.Fprintf(out, "Trove-NG embedded stack is up\n")
	listening := ""
	if url != srv.ClientURL() {
		listening = "   listening on " + net.JoinHostPort(host, strconv.Itoa(srvPort(srv.ClientURL(), port)))
	}
	fmt.Fprintf(out, "  NATS (JetStream)  %s%s   state in %s\n", url, listening, filepath.Join(dataDir, "nats"))
	fmt.Fprintf(out, "  storage service   trove.storage.v1.*   strategy %s %s\n", o.strategy, describeOpts(opts))
	fmt.Fprintf(out, "  backup, restore   trove.backup.v1.* trove.restore.v1.*   strategies %s; data keys wrapped for the age identity in %s\n", strings.Join(backup.Strategies(), " "), ageFile)
	fmt.Fprintf(out, "  admin HTTP        http://%s/healthz /readyz /metrics /v1/info\n", adminAddr)
	fmt.Fprintf(out, "  NATS identities   NKeys in %s (storage.nk: the storage service, cli.nk: clients, agent.nk: local guests' agents); no other connection is let in\n", filepath.Dir(keys.cli))
	if isLocalHost(host) && host != "0.0.0.0" && host != "::" {
		fmt.Fprintf(out, "  guests            containers cannot reach NATS on %s; for `trovectl guest start` run up with --nats-listen 0.0.0.0:%d (or the container network's gateway)\n", host, srvPort(srv.ClientURL(), port))
	} else {
		fmt.Fprintf(out, "  guests            go run ./trovectl --nats %s guest start --engine redis\n", url)
	}
	fmt.Fprintf(out, "  try               export TROVE_NATS_NKEY=%s\n", keys.cli)
	fmt.Fprintf(out, "                    go run ./trovectl --nats %s storage ls\n", url)
	if o.demo {
		// The demo is a client like any other: it runs as the cli identity, not as the service.
		cli, err := connectAs(url, "trovectl-demo", keys.cli)
		if err != nil {
			return err
		}
		defer cli.Close()
		if err := demo(ctx, cli, out, o.demoSize); err != nil {
			return err
		}
		if gd != nil {
			if err := gd.run(ctx, cli, url, keys.agent); err != nil {
				return err
			}
		}
	}
	if o.once {
		return nil
	}
	fmt.Fprintf(out, "Serving until Ctrl-C.\n")
	<-ctx.Done()
	slog.Info("stopping the embedded stack")
	return nil
}

// upKeys are the seed files of the embedded stack's identities and the users the server admits.
type upKeys struct {
	storage, backup, restore, cli, agent string // seed files
	users                                []natsauth.User
}

// upIdentities makes (on the first run) and reads the NKeys of the storage service, of clients and of
// local guests' agents, kept in <dataDir>/nkeys so clients configured with them keep working across restarts.
func upIdentities(dataDir string, cfg storage.Config) (upKeys, error) {
	dir := filepath.Join(dataDir, "nkeys")
	k := upKeys{storage: filepath.Join(dir, "storage.nk"), backup: filepath.Join(dir, "backup.nk"), restore: filepath.Join(dir, "restore.nk"),
		cli: filepath.Join(dir, "cli.nk"), agent: filepath.Join(dir, "agent.nk")}
	storagePub, err := natsauth.EnsureSeed(k.storage)
	if err != nil {
		return k, err
	}
	backupPub, err := natsauth.EnsureSeed(k.backup)
	if err != nil {
		return k, err
	}
	restorePub, err := natsauth.EnsureSeed(k.restore)
	if err != nil {
		return k, err
	}
	cliPub, err := natsauth.EnsureSeed(k.cli)
	if err != nil {
		return k, err
	}
	agentPub, err := natsauth.EnsureSeed(k.agent)
	if err != nil {
		return k, err
	}
	k.users = []natsauth.User{
		{Name: "storage", PublicKey: storagePub, Permissions: storage.Permissions(cfg.NATSBucket())},
		{Name: "backup", PublicKey: backupPub, Permissions: backup.Permissions()},
		{Name: "restore", PublicKey: restorePub, Permissions: restore.Permissions()},
		{Name: "cli", PublicKey: cliPub, Permissions: cliPermissions()},
		{Name: "agent", PublicKey: agentPub, Permissions: agentPermissions()},
	}
	return k, nil
}

// localClientURL is the URL this process connects to: a server listening on every address is reached
// on loopback.
func localClientURL(u string) string {
	for _, all := range []string{"0.0.0.0", "[::]"} {
		if strings.Contains(u, "://"+all+":") {
			return strings.Replace(u, "://"+all+":", "://127.0.0.1:", 1)
		}
	}
	return u
}

// srvPort is the port in a server's client URL (the one it picked when asked for 0), else def.
func srvPort(u string, def int) int {
	if i := strings.LastIndex(u, ":"); i >= 0 {
		if p, err := strconv.Atoi(u[i+1:]); err == nil {
			return p
		}
	}
	return def
}

// connectAs connects to the embedded server as the identity whose seed is in seedFile.
func connectAs(url, name, seedFile string) (*nats.Conn, error) {
	id, err := natsauth.SeedOption(seedFile)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(url, nats.Name(name), nats.MaxReconnects(-1), id)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "connecting to the embedded NATS server as %s", name)
	}
	return nc, nil
}

// describeOpts shows strategy options without values that look secret.
func describeOpts(opts map[string]string) string {
	var parts []string
	for k, v := range opts {
		if strings.Contains(k, "secret") || strings.Contains(k, "key") || strings.Contains(k, "password") || strings.Contains(k, "token") {
			v = "(set)"
		}
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, " ")
}

// demo proves the path end to end: put a generated object, verify it with a job, read it back and compare.
func demo(ctx context.Context, nc *nats.Conn, out io.Writer, size int64) error {
	sc := storageclient.New(nc, stream.Options{})
	key := "demo/sample-" + time.Now().UTC().Format("20060102T150405") + ".bin"
	fmt.Fprintf(out, "Demo: storing %s of generated data as %s\n", humanBytes(size), key)
	h := sha256.New()
	start := time.Now()
	obj, err := sc.Put(ctx, key, io.TeeReader(io.LimitReader(newDemoData(), size), h), map[string]string{"origin": "trovectl-demo"})
	if err != nil {
		return err
	}
	want := hex.EncodeToString(h.Sum(nil))
	fmt.Fprintf(out, "  put     %s  sha256 %s  %s\n", humanBytes(obj.Size), obj.SHA256[:16], rate(obj.Size, time.Since(start)))
	if obj.SHA256 != want {
		return errs.New(errs.Corrupt, "stored sha256 %s differs from the sent bytes' %s", obj.SHA256, want)
	}
	job, err := sc.Verify(ctx, storagev1.VerifyRequest{Key: key})
	if err != nil {
		return err
	}
	final, err := followJob(ctx, nc, storage.Family, job.ID, 500*time.Millisecond, func(jobs.Job) {})
	if err == nil {
		err = jobOutcome(final)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  verify  job %s %s: %s\n", final.ID, final.State, final.Result)
	h.Reset()
	start = time.Now()
	rep, err := sc.Get(ctx, key, 0, 0, h, nil)
	if err != nil {
		return err
	}
	got := hex.EncodeToString(h.Sum(nil))
	fmt.Fprintf(out, "  get     %s  sha256 %s  %s\n", humanBytes(rep.Length), got[:16], rate(rep.Length, time.Since(start)))
	if got != want {
		return errs.New(errs.Corrupt, "read back sha256 %s differs from the stored %s", got, want)
	}
	fmt.Fprintf(out, "Demo passed: the bytes read back are identical (sha256 %s).\n", got)
	return nil
}

func rate(n int64, d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return humanBytes(int64(float64(n)/d.Seconds())) + "/s"
}

// demoData is a deterministic, mildly compressible byte source (text-like lines), cheap to generate.
type demoData struct {
	n uint64
}

func newDemoData() *demoData { return &demoData{} }

func (d *demoData) Read(p []byte) (int, error) {
	for i := range p {
		d.n++
		x := d.n * 0x9E3779B97F4A7C15
		x ^= x >> 29
		if d.n%64 == 0 {
			p[i] = '\n'
		} else {
			p[i] = 'a' + byte(x%26)
		}
	}
	return len(p), nil
}
