package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/nats-io/nats.go"

	"troveng.dev/shared/embednats"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
)

// natsChildArg, as the first argument, makes this binary run only an embedded NATS server (see startNATSChild).
const natsChildArg = "-nats-child"

// versitygw's root credentials for this run: a throwaway server on loopback.
const (
	gwAccessKey = "storagebench"
	gwSecretKey = "storagebench-secret-0123456789"
	gwRegion    = "us-east-1"
	gwBucket    = "bench"
)

// benchEnv holds the servers shared by all phases.
type benchEnv struct {
	cfg     config
	nats    *child
	natsURL string
	nc      *nats.Conn

	gw         *child
	gwEndpoint string
	s3         *s3.Client
}

func (e *benchEnv) close() {
	if e.nc != nil {
		e.nc.Close()
	}
	e.gw.stop()
}

// runNATSChild serves NATS with JetStream (the service's job runner needs it) until SIGTERM.
func runNATSChild(args []string) error {
	fs := flag.NewFlagSet("nats-child", flag.ContinueOnError)
	port := fs.Int("port", 0, "listen port")
	store := fs.String("store", "", "JetStream store directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	srv, err := embednats.Start(embednats.Options{Port: *port, StoreDir: *store})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	<-ctx.Done()
	srv.Shutdown()
	srv.WaitForShutdown()
	return nil
}

// startNATSChild runs NATS as a child process (this binary with natsChildArg), so its CPU time and memory
// are its own and not mixed into the bench client's.
func startNATSChild(ctx context.Context, dir string) (*child, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	c, err := startChild("nats", dir, self, []string{natsChildArg, "-port", strconv.Itoa(port), "-store", filepath.Join(dir, "nats")}, nil)
	if err != nil {
		return nil, "", err
	}
	return c, "nats://127.0.0.1:" + strconv.Itoa(port), nil
}

func connectNATS(ctx context.Context, c *child, url string) (*nats.Conn, error) {
	var nc *nats.Conn
	err := waitFor(ctx, c, 15*time.Second, func(context.Context) error {
		var err error
		nc, err = nats.Connect(url, nats.Name("storagebench"))
		return err
	})
	return nc, err
}

// buildStorage builds the storage service binary into dir (the bench must run inside the workspace).
func buildStorage(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "storage")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "troveng.dev/services/storage/cmd/storage")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the storage service (or give -storage-bin): %v: %s", err, out)
	}
	return bin, nil
}

// startVersityGW starts versitygw serving dir/gw on a free loopback port and creates the bench bucket.
func (e *benchEnv) startVersityGW(ctx context.Context) error {
	bin := e.cfg.versitygw
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("versitygw"); err != nil {
			return fmt.Errorf("no versitygw: give -versitygw or set TROVE_VERSITYGW (task tools builds bin/versitygw)")
		}
	}
	root := filepath.Join(e.cfg.dir, "gw")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	e.gw, err = startChild("versitygw", e.cfg.dir, bin, []string{
		"--access", gwAccessKey, "--secret", gwSecretKey, "--region", gwRegion,
		"--port", "127.0.0.1:" + strconv.Itoa(port), "--quiet", "posix", root}, nil)
	if err != nil {
		return err
	}
	e.gwEndpoint = "http://127.0.0.1:" + strconv.Itoa(port)
	if e.s3, err = newS3Client(ctx, e.gwEndpoint, e.cfg.concurrency); err != nil {
		return err
	}
	if err := waitFor(ctx, e.gw, 15*time.Second, func(ctx context.Context) error {
		_, err := e.s3.ListBuckets(ctx, &s3.ListBucketsInput{})
		return err
	}); err != nil {
		return err
	}
	_, err = e.s3.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(gwBucket)})
	return err
}

// service is one storage service child and the client that talks to it.
type service struct {
	*child
	client *storageclient.Client
}

// startService starts the storage service binary with a strategy (and -service-env) and waits until it
// answers requests.
func (e *benchEnv) startService(ctx context.Context, strategy string, opts map[string]string, env []string) (*service, error) {
	args := []string{"-strategy", strategy, "-nats-url", e.natsURL, "-admin-addr", "", "-log-level", "warn"}
	for k, v := range opts {
		args = append(args, "-opt", k+"="+v)
	}
	c, err := startChild("storage-"+strategy, e.cfg.dir, e.cfg.storageBin, args, append(env, e.cfg.serviceEnv...))
	if err != nil {
		return nil, err
	}
	svc := &service{child: c, client: storageclient.New(e.nc, stream.Options{})}
	// A stat of a missing key answering not_found means the endpoints are registered and the backend works.
	err = waitFor(ctx, c, 20*time.Second, func(ctx context.Context) error {
		_, err := svc.client.Stat(ctx, "storagebench/ready-probe")
		if err == nil || errs.Is(err, errs.NotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		c.stop()
		return nil, err
	}
	return svc, nil
}

// party is a process whose CPU time a measurement reports.
type party struct {
	name string
	pid  int // 0: this process
}

// measurement is one timed transfer and the CPU time each party spent during it.
type measurement struct {
	dur time.Duration
	cpu []time.Duration // in the order of the parties given to measure
}

func (m measurement) rate(n int64) float64 { return mbps(n, m.dur) }

// measureOnce times fn and the CPU time each party spends during it.
func measureOnce(parties []party, fn func() error) (measurement, error) {
	before := make([]time.Duration, len(parties))
	for i, p := range parties {
		before[i] = cpuTime(p.pid)
	}
	start := time.Now()
	if err := fn(); err != nil {
		return measurement{}, err
	}
	m := measurement{dur: time.Since(start), cpu: make([]time.Duration, len(parties))}
	for i, p := range parties {
		m.cpu[i] = cpuTime(p.pid) - before[i]
	}
	return m, nil
}

// sizeResult is one size of a phase: the fastest run of each op, and the storage service's peak RSS.
type sizeResult struct {
	size    int64
	parties []party
	m       []measurement // in the order of the phase's ops
	peakRSS int64
}

// logPhase tells the person waiting what is running.
func logPhase(phase string, size int64) {
	fmt.Fprintf(os.Stderr, "%s phase, %s:\n", phase, formatSize(size))
}

// op is one kind of transfer of a phase.
type op struct {
	name string
	fn   func() error
}

// runOps runs every op once per run, interleaved (so a burst of noise hits all of them alike), and keeps
// each op's fastest run.
func runOps(ctx context.Context, runs int, parties []party, ops []op) ([]measurement, error) {
	best := make([]measurement, len(ops))
	for r := 0; r < runs; r++ {
		for i, o := range ops {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			m, err := measureOnce(parties, o.fn)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", o.name, err)
			}
			fmt.Fprintf(os.Stderr, "  run %d %-32s %7.2f s\n", r+1, o.name, m.dur.Seconds())
			if r == 0 || m.dur < best[i].dur {
				best[i] = m
			}
		}
	}
	return best, nil
}
