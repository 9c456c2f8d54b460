package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/stream"
)

// The guest demo of `up --demo`: two local redis guests, sample data loaded into the first, a redis-rdb
// backup of it restored into the second, and the two datasets compared key by key.

// guestDemo is what prepareGuestDemo found: the container CLI and image to run guests with, and the
// helper container that keeps the network's bridge (and so its gateway address) up while NATS listens there.
type guestDemo struct {
	g          *globals
	cli        containerCLI
	image      string
	gateway    string // "" when --nats-listen was given
	anchor     string // helper container name, "" when none was needed
	keepGuests bool
}

// demoGuestWait bounds how long a demo guest may take to register healthy.
const demoGuestWait = 2 * time.Minute

// prepareGuestDemo checks cheaply for a container CLI and the guest image; without them it prints how to
// get them and returns nil (the demo then stays a storage round trip). When listenSet is false it points
// *listen at the container network's gateway, which the host and its containers reach but other machines do not.
func (g *globals) prepareGuestDemo(ctx context.Context, listen *string, listenSet, keepGuests bool) *guestDemo {
	hint := "Guest demo skipped: %s; get them with `go tool task containers:setup image:guest`.\n"
	cli, err := findContainerCLI("")
	if err != nil {
		fmt.Fprintf(g.stdout, hint, "no container CLI (podman or docker) found")
		return nil
	}
	if _, _, err := runContainer(ctx, cli, "image", "inspect", "--format", "{{.Id}}", DefaultGuestImage); err != nil {
		fmt.Fprintf(g.stdout, hint, "the guest image "+DefaultGuestImage+" is not built")
		return nil
	}
	d := &guestDemo{g: g, cli: cli, image: DefaultGuestImage, keepGuests: keepGuests}
	if listenSet {
		host, _, err := net.SplitHostPort(*listen)
		if err != nil {
			return nil // up reports the bad flag
		}
		if ip := net.ParseIP(host); isLocalHost(host) && (ip == nil || !ip.IsUnspecified()) && host != "" {
			fmt.Fprintf(g.stdout, "Guest demo skipped: --nats-listen %s is loopback, which containers cannot reach (leave it out and the demo listens on the container network's gateway).\n", *listen)
			return nil
		}
		if !isLocalHost(host) {
			return d // an address containers reach as it is
		}
	}
	args := []string{"network", "inspect", cli.defaultNetwork()}
	out, stderr, err := runContainer(ctx, cli, args...)
	if err == nil {
		d.gateway, err = networkGateway(out)
	} else {
		err = cliError(cli, args, stderr, err)
	}
	if err != nil {
		fmt.Fprintf(g.stdout, "Guest demo skipped: cannot find the container network's gateway (%v); give --nats-listen.\n", err)
		return nil
	}
	if !listenSet && !hasLocalAddr(d.gateway) {
		// Podman makes its bridge (and the gateway address on it) only while a container is attached.
		if err := d.startAnchor(ctx); err != nil {
			fmt.Fprintf(g.stdout, "Guest demo skipped: %v\n", err)
			return nil
		}
	}
	if listenSet {
		return d // every address: containers reach it on the gateway
	}
	port := "4222"
	if l, err := net.Listen("tcp", net.JoinHostPort(d.gateway, port)); err == nil {
		_ = l.Close()
	} else {
		port = "0" // taken: any free port on the gateway
	}
	*listen = net.JoinHostPort(d.gateway, port)
	return d
}

// startAnchor runs a sleeping container on the default network and waits for the gateway address to appear.
func (d *guestDemo) startAnchor(ctx context.Context) error {
	name := "trove-demo-net-" + newInstanceID("x")[2:]
	args := []string{"run", "-d", "--rm", "--name", name, "--label", guestLabel + "-demo=network", "--entrypoint", "sleep", d.image, "infinity"}
	if _, stderr, err := runContainer(ctx, d.cli, args...); err != nil {
		return errs.Wrap(errs.Unavailable, cliError(d.cli, args, stderr, err), "starting a container to bring up the network's gateway %s", d.gateway)
	}
	d.anchor = name
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if hasLocalAddr(d.gateway) {
			return nil
		}
	}
	d.close()
	return errs.Unavailablef("the container network's gateway %s did not appear on this host", d.gateway)
}

// close removes the helper container, if any.
func (d *guestDemo) close() {
	if d == nil || d.anchor == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, _ = runContainer(ctx, d.cli, "rm", "-f", "-t", "0", d.anchor)
	d.anchor = ""
}

// hasLocalAddr tells whether ip is assigned to an interface of this host.
func hasLocalAddr(ip string) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.String() == ip {
			return true
		}
	}
	return false
}

// demoGuest is one running demo guest.
type demoGuest struct {
	id   string
	port int
	gc   *guestclient.Client
}

// run is the guest demo proper, against the stack at url, as the client nc; agentKey is the agents' seed file.
func (d *guestDemo) run(ctx context.Context, nc *nats.Conn, url, agentKey string) (err error) {
	out := d.g.stdout
	total := time.Now()
	if needsGateway(url) {
		if url, err = containerNATSURL(url, d.gateway); err != nil {
			return err
		}
	} else if d.gateway != "" {
		fmt.Fprintf(out, "Guest demo: NATS listens on %s, the container network's gateway: reachable from this host and its containers, not from other machines\n", strings.TrimPrefix(url, "nats://"))
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return errs.Wrap(errs.Internal, err, "JetStream client")
	}
	suffix := newInstanceID("x")[2:]
	ids := []string{"demo-src-" + suffix, "demo-dst-" + suffix}
	started := make([]string, 0, 2)
	defer func() {
		if d.keepGuests {
			fmt.Fprintf(out, "  guests kept (--keep-guests): %s; remove them with `trovectl guest stop ID`\n", strings.Join(started, " "))
			return
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		for _, id := range started {
			if serr := d.g.guestStop(sctx, d.cli, id, 10*time.Second); serr != nil && err == nil {
				err = serr
			}
		}
	}()
	fmt.Fprintf(out, "  starting redis guests %s and %s (%s %s) ...\n", ids[0], ids[1], d.cli.Name, d.image)
	t := time.Now()
	guests := make([]demoGuest, 2)
	results := make(chan error, 2)
	for i, id := range ids {
		run := guestRun{Instance: id, Engine: "redis", NATSURL: url, Image: d.image, NKeyFile: agentKey}
		args := run.runArgs()
		launched := time.Now()
		if _, stderr, rerr := runContainer(ctx, d.cli, args...); rerr != nil {
			return cliError(d.cli, args, stderr, rerr)
		}
		started = append(started, id)
		go func() {
			r, werr := d.g.waitHealthy(ctx, d.cli, js, id, launched, demoGuestWait)
			if werr == nil {
				guests[i].id, guests[i].port = id, r.Status.Port
				guests[i].gc, werr = guestclient.New(nc, id, stream.Options{})
			}
			results <- werr
		}()
	}
	for range ids {
		if werr := <-results; werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		return err
	}
	src, dst := guests[0], guests[1]
	fmt.Fprintf(out, "  guests healthy in %s\n", time.Since(t).Round(time.Millisecond))

	t = time.Now()
	script, n := demoRedisCommands(demoKeysPerType)
	loaded, err := redisCLI(ctx, src, script, "--no-raw")
	if err != nil {
		return err
	}
	if bad := redisErrors(loaded); len(bad) > 0 {
		return errs.Internalf("loading the sample data: %d commands failed, the first: %s", len(bad), bad[0])
	}
	srcDump, err := redisDataset(ctx, src)
	if err != nil {
		return err
	}
	if bad := unreadableDumps(srcDump); len(bad) > 0 {
		return errs.Internalf("the source's DUMP of %d keys is not a serialization, the first: %s", len(bad), bad[0])
	}
	if len(srcDump) != n {
		return errs.Internalf("the source holds %d keys after loading %d", len(srcDump), n)
	}
	fmt.Fprintf(out, "  loaded %d keys (strings, counters, hashes, lists, sets, sorted sets; %s serialized) into %s in %s\n",
		n, humanBytes(dumpBytes(srcDump)), src.id, time.Since(t).Round(time.Millisecond))

	fmt.Fprintf(out, "  backing up %s (redis-rdb) ...\n", src.id)
	var j jobs.Job
	if err := d.g.call(ctx, nc, backupv1.Subject(backupv1.BackupGroup, backupv1.OpCreate), backupv1.CreateRequest{Instance: src.id, Strategy: "redis-rdb"}, &j); err != nil {
		return err
	}
	final, err := d.g.followWithProgress(ctx, nc, backupv1.BackupFamily, j.ID)
	if err != nil {
		return err
	}
	if err := jobOutcome(final); err != nil {
		return err
	}
	var br backupv1.BackupResult
	if err := json.Unmarshal(final.Result, &br); err != nil {
		return errs.Wrap(errs.Internal, err, "reading the backup job's result")
	}
	printIndented(out, func(w io.Writer) { printBackupSummary(w, br.Backup) })

	fmt.Fprintf(out, "  restoring %s into %s ...\n", br.Backup.ID, dst.id)
	if err := d.g.call(ctx, nc, backupv1.Subject(backupv1.RestoreGroup, backupv1.OpRestore), backupv1.RestoreRequest{Backup: br.Backup.ID, Instance: dst.id}, &j); err != nil {
		return err
	}
	final, err = d.g.followWithProgress(ctx, nc, backupv1.RestoreFamily, j.ID)
	if err != nil {
		return err
	}
	if err := jobOutcome(final); err != nil {
		return err
	}
	var rr backupv1.RestoreResult
	if err := json.Unmarshal(final.Result, &rr); err != nil {
		return errs.Wrap(errs.Internal, err, "reading the restore job's result")
	}
	printIndented(out, func(w io.Writer) { printRestoreSummary(w, rr) })

	t = time.Now()
	dstDump, err := redisDataset(ctx, dst)
	if err != nil {
		return err
	}
	if diffs := compareDumps(srcDump, dstDump); len(diffs) > 0 {
		shown := diffs[:min(len(diffs), 5)]
		return errs.New(errs.Corrupt, "the restored guest %s differs from %s in %d keys: %s", dst.id, src.id, len(diffs), strings.Join(shown, "; "))
	}
	fmt.Fprintf(out, "  compared %d keys (the DUMP serialization of every key, source against restored) in %s\n", len(dstDump), time.Since(t).Round(time.Millisecond))
	fmt.Fprintf(out, "Guest demo passed: %s and %s are identical: %d keys, %s serialized, backup %s stored (%s raw); whole demo %s.\n",
		src.id, dst.id, len(dstDump), humanBytes(dumpBytes(dstDump)), humanBytes(br.Backup.StoredSize), humanBytes(br.Backup.RawSize),
		time.Since(total).Round(time.Millisecond))
	return nil
}

// printIndented prints what f writes, each line indented under the demo's steps.
func printIndented(out io.Writer, f func(io.Writer)) {
	var b strings.Builder
	f(&b)
	for _, l := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
		fmt.Fprintf(out, "    %s\n", l)
	}
}

// redisCLI runs redis-cli on a guest through its agent, with stdin (nil: none) and its stdout captured.
func redisCLI(ctx context.Context, gst demoGuest, stdin []byte, args ...string) ([]byte, error) {
	port := gst.port
	if port == 0 {
		port = 6379
	}
	req := guestv1.ExecRequest{Tool: "redis-cli", Args: append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port)}, args...),
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}, TimeoutMs: (2 * time.Minute).Milliseconds()}
	if stdin != nil {
		req.Stdin = guestv1.StdinSpec{Mode: guestv1.StdinData, Data: stdin}
	}
	r, err := gst.gc.Run(ctx, req, nil)
	if err == nil {
		err = guestclient.Check(r)
	}
	if err != nil {
		return nil, errs.Wrap(errs.CodeOf(err), err, "redis-cli %s on guest %s", strings.Join(args, " "), gst.id)
	}
	return r.Stdout, nil
}

// redisDataset reads every key of a guest's redis with its DUMP serialization.
func redisDataset(ctx context.Context, gst demoGuest) (map[string]string, error) {
	scan, err := redisCLI(ctx, gst, nil, "--scan")
	if err != nil {
		return nil, err
	}
	keys := parseScan(scan)
	if len(keys) == 0 {
		return map[string]string{}, nil
	}
	dumps, err := redisCLI(ctx, gst, dumpScript(keys), "--no-raw")
	if err != nil {
		return nil, err
	}
	return parseDumps(keys, dumps)
}
