package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"troveng.dev/services/storage"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/datagen"
	"troveng.dev/shared/embednats"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/telemetry"
)

// The test binary doubles as the agent binary for the datagen tool: the allow-list runs
// "<self> datagen -bytes N -seed S", and this init answers it before the tests start. (An init, not a
// TestMain: the integration tests of this directory have their own TestMain.)
func init() {
	if len(os.Args) > 1 && os.Args[1] == "datagen" {
		if err := Datagen(os.Args[2:], os.Stdout); err != nil {
			_, _ = os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(2)
		}
		os.Exit(0)
	}
}

// testStream keeps chunks small and idle timeouts short so failures show quickly.
var testStream = stream.Options{ChunkSize: 64 << 10, Window: 16, IdleTimeout: 5 * time.Second}

// harness is one agent on a real embedded NATS server (max payload 16 MiB, above the agent's 8 MiB request
// limit, so the agent is the one that refuses oversized requests) with the real storage service (fs
// strategy) in this process, and a guestclient on a separate connection.
type harness struct {
	t       *testing.T
	srv     *server.Server
	agentNC *nats.Conn
	cliNC   *nats.Conn
	store   *storageclient.Client
	agent   *Agent
	gc      *guestclient.Client
	cfg     Config
	data    string
	config  string
	storeFS string
}

// testTools are the default allow-list plus tools only tests have: echo (to see arguments arrive) and sh
// (to make process trees and exit codes).
func testTools() []Tool {
	return append(DefaultTools(SelfPath()),
		Tool{Name: "echo", Paths: []string{"/usr/bin/echo", "/bin/echo"}},
		Tool{Name: "sh", Paths: []string{"/bin/sh"}},
	)
}

// openDirs makes dirs traversable by the engines' users (t.TempDir is private to root).
func openDirs(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		for p := d; p != "/" && p != "." && strings.HasPrefix(p, os.TempDir()); p = filepath.Dir(p) {
			if err := os.Chmod(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func startNATS(t *testing.T) *server.Server {
	t.Helper()
	srv, err := embednats.Start(embednats.Options{StoreDir: t.TempDir(), MaxPayload: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv
}

func connect(t *testing.T, srv *server.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(srv.ClientURL(), append([]nats.Option{nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond), nats.Timeout(10 * time.Second)}, opts...)...) // a loaded shared machine
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	return newHarnessTel(t, nil, mod)
}

// newHarnessTel is newHarness with the agent's telemetry.
func newHarnessTel(t *testing.T, tel *telemetry.Telemetry, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, srv: startNATS(t)}
	h.data, h.config, h.storeFS = t.TempDir(), t.TempDir(), t.TempDir()
	openDirs(t, h.data, h.config)
	svcNC := connect(t, h.srv)
	svc, err := storage.Start(context.Background(), svcNC, nil, storage.Config{Strategy: "fs", Options: map[string]string{"root": h.storeFS}, Stream: testStream,
		Jobs: jobs.Options{AckWait: time.Second}}) // short job polls: the service stops in half a second
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	h.cfg = Config{Instance: "g1", DataRoot: h.data, ConfigRoot: h.config, Heartbeat: 100 * time.Millisecond, Tools: testTools(), Stream: testStream}
	if mod != nil {
		mod(&h.cfg)
	}
	h.agentNC = connect(t, h.srv, nats.CustomInboxPrefix(InboxPrefix(h.cfg.Instance)))
	h.agent, err = Start(context.Background(), h.agentNC, tel, h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.agent.Shutdown(context.Background()) })
	h.cliNC = connect(t, h.srv)
	h.store = storageclient.New(h.cliNC, testStream)
	if h.gc, err = guestclient.New(h.cliNC, h.cfg.Instance, testStream); err != nil {
		t.Fatal(err)
	}
	return h
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// run execs req and waits, failing the test on a transport error.
func (h *harness) run(req guestv1.ExecRequest, stdin io.Reader) guestv1.ExecResult {
	h.t.Helper()
	r, err := h.gc.Run(ctxFor(h.t, 60*time.Second), req, stdin)
	if err != nil {
		h.t.Fatalf("run %s: %v", req.Tool, err)
	}
	return r
}

// mustOK fails the test unless r ran and exited 0.
func mustOK(t *testing.T, what string, r guestv1.ExecResult) {
	t.Helper()
	if err := guestclient.Check(r); err != nil {
		t.Fatalf("%s: %v (result %+v)", what, err, r)
	}
}

// wantCode fails the test unless err carries code.
func wantErrCode(t *testing.T, what string, err error, code errs.Code) {
	t.Helper()
	if !errs.Is(err, code) {
		t.Fatalf("%s: want %s, got %v", what, code, err)
	}
}

// genSum is the SHA-256 of n bytes of datagen text with seed.
func genSum(n int64, seed int64) string {
	h := sha256.New()
	_, _ = io.CopyN(h, datagen.New(seed), n)
	return hex.EncodeToString(h.Sum(nil))
}

func genBytes(n int64, seed int64) []byte {
	var b bytes.Buffer
	_, _ = io.CopyN(&b, datagen.New(seed), n)
	return b.Bytes()
}

func sumOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func datagenArgs(n int64, seed int64) []string {
	return []string{"-bytes", strconv.FormatInt(n, 10), "-seed", strconv.FormatInt(seed, 10)}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
