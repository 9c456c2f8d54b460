package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/natsauth"
	"troveng.dev/shared/natstest"
)

// runCLIStdin is runCLI with a standard input.
func runCLIStdin(t *testing.T, stdin io.Reader, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := runIO(ctx, args, stdin, &out, &errOut)
	return code, out.String(), errOut.String()
}

// putRegistration writes a record into the registry as an agent would.
func putRegistration(t *testing.T, nc *nats.Conn, r guestv1.Registration) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: guestv1.RegistryBucket})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(r)
	if _, err := kv.Put(ctx, r.Instance, b); err != nil {
		t.Fatal(err)
	}
}

// tableRow is the line of a text table that starts with instance.
func tableRow(out, instance string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, instance+" ") {
			return l
		}
	}
	return ""
}

// TestGuestLsShow: ls and show read the registry (records put here, one fresh, one stale) and say which
// records no longer prove their agent alive; show also asks the agent, and says when it does not answer.
func TestGuestLsShow(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect()
	nats := "--nats=" + ns.URL()

	// No agent ever registered: no bucket, an empty list.
	code, out, stderr := runCLI(t, nats, "guest", "ls")
	if code != 0 || !strings.Contains(out, "No guests registered") {
		t.Fatalf("ls without a registry: %d %q %q", code, out, stderr)
	}
	if code, out, _ := runCLI(t, nats, "guest", "ls", "--json"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("ls --json without a registry: %d %q", code, out)
	}

	fresh := sampleRegistration("redis-1", guestv1.EngineRedis)
	fresh.HeartbeatMs = 5000
	stale := sampleRegistration("pg-1", guestv1.EnginePostgreSQL)
	stale.EngineVersion, stale.Address = "15.18", "10.88.0.9"
	stale.Status = guestv1.EngineStatus{Engine: guestv1.EnginePostgreSQL, State: guestv1.EngineFailed, Message: "postgres exited: FATAL: data directory has wrong ownership"}
	stale.HeartbeatMs = 1000
	stale.Heartbeat = time.Now().Add(-90 * time.Second).UTC()
	putRegistration(t, nc, fresh)
	putRegistration(t, nc, stale)

	code, out, stderr = runCLI(t, nats, "guest", "ls")
	if code != 0 {
		t.Fatalf("ls: %d %s", code, stderr)
	}
	if !strings.Contains(out, "INSTANCE") || !strings.Contains(out, "HEARTBEAT") || !strings.Contains(out, "STALE") {
		t.Fatalf("ls header:\n%s", out)
	}
	freshRow, staleRow := tableRow(out, "redis-1"), tableRow(out, "pg-1")
	for _, want := range []string{"redis", "7.0.15", "running", "yes", guestv1.Version, "10.88.0.7"} {
		if !strings.Contains(freshRow, want) {
			t.Fatalf("fresh row lacks %q: %q", want, freshRow)
		}
	}
	if strings.Contains(freshRow, "STALE") {
		t.Fatalf("fresh guest marked stale: %q", freshRow)
	}
	for _, want := range []string{"postgresql", "15.18", "failed", "no", "STALE", "1m3", "10.88.0.9"} {
		if !strings.Contains(staleRow, want) {
			t.Fatalf("stale row lacks %q: %q", want, staleRow)
		}
	}
	if strings.Index(out, "pg-1") > strings.Index(out, "redis-1") {
		t.Fatalf("ls not sorted by instance:\n%s", out)
	}

	code, out, _ = runCLI(t, nats, "guest", "ls", "--json")
	var views []guestView
	if code != 0 || json.Unmarshal([]byte(out), &views) != nil || len(views) != 2 {
		t.Fatalf("ls --json: %d %q", code, out)
	}
	if views[0].Instance != "pg-1" || !views[0].Stale || views[0].HeartbeatAgeMs < 89_000 || views[0].Status.Message == "" {
		t.Fatalf("stale view: %+v", views[0])
	}
	if views[1].Instance != "redis-1" || views[1].Stale || views[1].HeartbeatAgeMs > 30_000 || len(views[1].Tools) == 0 {
		t.Fatalf("fresh view: %+v", views[1])
	}
	// -o json is the same thing.
	if code, out2, _ := runCLI(t, nats, "-o", "json", "guest", "ls"); code != 0 || !strings.Contains(out2, `"instance": "pg-1"`) {
		t.Fatalf("-o json guest ls: %d %q", code, out2)
	}

	// show: the record in full; no agent answers, and show says so.
	code, out, stderr = runCLI(t, nats, "guest", "show", "pg-1")
	if code != 0 {
		t.Fatalf("show pg-1: %d %s", code, stderr)
	}
	for _, want := range []string{"STALE", "UNREACHABLE", "15.18", "data directory has wrong ownership", "10.88.0.9", "cat redis-cli sha256sum", "data config"} {
		if !strings.Contains(out, want) {
			t.Fatalf("show of the stale guest lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runCLI(t, nats, "guest", "show", "redis-1")
	if code != 0 || !strings.Contains(out, "fresh: last heartbeat") || !strings.Contains(out, "UNREACHABLE") {
		t.Fatalf("show redis-1: %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, nats, "guest", "show", "redis-1", "--json")
	var s guestShow
	if code != 0 || json.Unmarshal([]byte(out), &s) != nil || s.Registration == nil || s.Registration.Stale || s.Live != nil ||
		s.LiveError == nil || s.LiveError.Code != "unavailable" {
		t.Fatalf("show --json: %d %q", code, out)
	}

	// Unknown and invalid ids.
	code, _, stderr = runCLI(t, nats, "guest", "show", "nope-1")
	if code != exitNotFound || !strings.Contains(stderr, "no guest") {
		t.Fatalf("show of an unknown guest: %d %q", code, stderr)
	}
	for _, bad := range []string{"a.b", "a*", "-x", "x>", "a b"} {
		if code, _, stderr := runCLI(t, nats, "guest", "show", "--", bad); code != exitBadRequest || !strings.Contains(stderr, "instance id") {
			t.Fatalf("show %q: %d %q", bad, code, stderr)
		}
	}
}

// blockedReader is a terminal nobody types into: Read blocks until the test ends.
type blockedReader struct{ done <-chan struct{} }

func (b blockedReader) Read([]byte) (int, error) { <-b.done; return 0, io.EOF }

// hostExitCode is what tool exits with here when run with args (the agent runs this host's tools).
func hostExitCode(t *testing.T, tool string, args ...string) int {
	t.Helper()
	err := exec.Command(tool, args...).Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("%s %v: want a non-zero exit, got %v", tool, args, err)
	}
	return ee.ExitCode()
}

// TestGuestExec drives the real agent, in this process, on real NATS: stdout streams back, stdin streams
// in, arguments stay inert, stderr tails and exit codes come through, a tool that ignores its stdin does
// not leave trovectl waiting for it, unknown tools and bad ids are refused with coded errors, a dead agent
// shows as stale and unreachable.
func TestGuestExec(t *testing.T) {
	ns := natstest.Start(t)
	a := startAgent(t, agentConn(t, ns.URL(), "g-1", nil), "g-1")
	nats := "--nats=" + ns.URL()

	code, out, stderr := runCLI(t, nats, "guest", "show", "g-1")
	if code != 0 || !strings.Contains(out, "the agent answered info") || !strings.Contains(out, "fresh") || !strings.Contains(out, "sha256sum") {
		t.Fatalf("show with a live agent: %d %q %q", code, out, stderr)
	}
	if code, out, _ := runCLI(t, nats, "guest", "ls"); code != 0 || !strings.Contains(tableRow(out, "g-1"), guestv1.Version) {
		t.Fatalf("ls with a live agent: %d\n%s", code, out)
	}

	// 6 MiB of random bytes through cat: stdin streamed in, stdout streamed out, byte for byte.
	payload := make([]byte, 6<<20)
	_, _ = rand.Read(payload)
	code, out, stderr = runCLIStdin(t, bytes.NewReader(payload), nats, "guest", "exec", "--stdin", "g-1", "cat")
	if code != 0 || out != string(payload) {
		t.Fatalf("exec cat: exit %d, %d bytes back of %d, stderr %q", code, len(out), len(payload), stderr)
	}
	sum := sha256.Sum256(payload)
	code, out, _ = runCLIStdin(t, bytes.NewReader(payload), nats, "guest", "exec", "--stdin", "g-1", "sha256sum")
	if code != 0 || out != hex.EncodeToString(sum[:])+"  -\n" {
		t.Fatalf("exec sha256sum: %d %q", code, out)
	}
	// Without --stdin the tool reads nothing.
	code, out, _ = runCLIStdin(t, strings.NewReader("ignored"), nats, "guest", "exec", "g-1", "cat")
	if code != 0 || out != "" {
		t.Fatalf("exec cat without --stdin: %d %q", code, out)
	}

	// Arguments are an argument vector: shell syntax reaches the tool as text (cat looks for files so named).
	code, out, stderr = runCLI(t, nats, "guest", "exec", "g-1", "cat", "--", "$(id)", "a;b", "`x`|y")
	if code != 1 || out != "" || strings.Count(stderr, "No such file") != 3 || !strings.Contains(stderr, "'$(id)'") ||
		!strings.Contains(stderr, "'a;b'") || !strings.Contains(stderr, "'`x`|y'") || !strings.Contains(stderr, "cat on guest g-1 exited with 1") {
		t.Fatalf("exec cat with shell syntax: %d %q %q", code, out, stderr)
	}
	// The tool's flags are not trovectl's, and its own exit code becomes trovectl's.
	want := hostExitCode(t, "tar", "--no-such-option")
	code, _, stderr = runCLI(t, nats, "guest", "exec", "g-1", "tar", "--no-such-option")
	if code != want || !strings.Contains(stderr, "no-such-option") {
		t.Fatalf("exec tar with a bad option: %d (want %d) %q", code, want, stderr)
	}

	// A tool that ends without reading its stdin: trovectl returns at once, not when the terminal sends EOF.
	done := make(chan struct{})
	defer close(done)
	start := time.Now()
	code, _, stderr = runCLIStdin(t, blockedReader{done}, nats, "guest", "exec", "--stdin", "g-1", "sha256sum", "--no-such-option")
	if code != 1 || time.Since(start) > 10*time.Second {
		t.Fatalf("exec of a tool that ignores stdin: %d %q after %s", code, stderr, time.Since(start))
	}
	// --timeout: the agent stops the tool (here cat waiting for input that never comes) and says why.
	start = time.Now()
	code, _, stderr = runCLIStdin(t, blockedReader{done}, nats, "guest", "exec", "--stdin", "--timeout", "500ms", "g-1", "cat")
	if code != exitTimeout || !strings.Contains(stderr, "timeout") || time.Since(start) > 20*time.Second {
		t.Fatalf("exec --timeout: %d %q after %s", code, stderr, time.Since(start))
	}

	// The allow-list is the agent's: an unknown tool is its coded error.
	code, _, stderr = runCLI(t, nats, "guest", "exec", "g-1", "sh", "-c", "rm -rf /")
	if code != exitBadRequest || !strings.Contains(stderr, "bad_request") || !strings.Contains(stderr, "allow-list") {
		t.Fatalf("exec of a tool not allowed: %d %q", code, stderr)
	}
	if code, _, stderr := runCLI(t, nats, "guest", "exec", "g-1", "/bin/sh"); code != exitBadRequest {
		t.Fatalf("exec of a path: %d %q", code, stderr)
	}
	// Bad ids never reach NATS; an unknown guest is unavailable.
	for _, bad := range []string{"g-1.exec", "g-1.>", "*", "_x"} {
		if code, _, stderr := runCLI(t, nats, "guest", "exec", bad, "cat"); code != exitBadRequest || !strings.Contains(stderr, "instance id") {
			t.Fatalf("exec on %q: %d %q", bad, code, stderr)
		}
	}
	code, _, stderr = runCLI(t, nats, "guest", "exec", "g-2", "cat")
	if code != exitUnavailable || !strings.Contains(stderr, "trove.guest.g-2.exec") {
		t.Fatalf("exec on a guest nobody serves: %d %q", code, stderr)
	}

	// engine: this agent runs without one, and says so.
	code, _, stderr = runCLI(t, nats, "guest", "engine", "g-1", "status")
	if code != exitUnavailable || !strings.Contains(stderr, "has no engine") {
		t.Fatalf("engine status without an engine: %d %q", code, stderr)
	}
	if code, _, _ := runCLI(t, nats, "guest", "engine", "g-1", "restart-everything"); code != exitBadRequest {
		t.Fatalf("engine with an unknown action: %d", code)
	}

	// The agent dies: its record goes stale within StaleBeats heartbeats, show says it is unreachable.
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(testHeartbeat*guestv1.StaleBeats + 300*time.Millisecond)
	code, out, _ = runCLI(t, nats, "guest", "show", "g-1")
	if code != 0 || !strings.Contains(out, "STALE") || !strings.Contains(out, "UNREACHABLE") {
		t.Fatalf("show after the agent died: %d\n%s", code, out)
	}
	if code, out, _ := runCLI(t, nats, "guest", "ls"); code != 0 || !strings.Contains(tableRow(out, "g-1"), "STALE") {
		t.Fatalf("ls after the agent died: %d\n%s", code, out)
	}
}

// TestGuestCommandsUnderUpIdentities: against `trovectl up`, the real agent with the stack's agent key
// registers and serves, and every guest command works with the cli key; each identity is refused what is
// not its own.
func TestGuestCommandsUnderUpIdentities(t *testing.T) {
	t.Setenv("TROVE_NATS_NKEY", "")
	t.Setenv("TROVE_NATS_CREDS", "")
	dataDir := filepath.Join(t.TempDir(), "data")
	url, out := startUp(t, dataDir)
	keys := filepath.Join(dataDir, "nkeys")
	cliKey, agentKey := filepath.Join(keys, "cli.nk"), filepath.Join(keys, "agent.nk")
	if !strings.Contains(out.String(), "agent.nk") || !strings.Contains(out.String(), "--nats-listen 0.0.0.0:") {
		t.Fatalf("banner does not mention the agent key and how guests reach NATS:\n%s", out.String())
	}
	seedOpt := func(seed string) nats.Option {
		id, err := natsauth.SeedOption(seed)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	agentErrs := make(chan error, 16)
	agentNC := agentConn(t, url, "redis-9", agentErrs, seedOpt(agentKey))
	startAgent(t, agentNC, "redis-9")

	base := []string{"--nats", url, "--nkey", cliKey}
	code, lsOut, stderr := runCLI(t, append(base, "guest", "ls")...)
	if code != 0 || !strings.Contains(tableRow(lsOut, "redis-9"), guestv1.Version) {
		t.Fatalf("ls with the cli key: %d %q %q", code, lsOut, stderr)
	}
	code, showOut, stderr := runCLI(t, append(base, "guest", "show", "redis-9")...)
	if code != 0 || !strings.Contains(showOut, "the agent answered info") {
		t.Fatalf("show with the cli key: %d %q %q", code, showOut, stderr)
	}
	payload := bytes.Repeat([]byte("0123456789abcdef"), 100_000)
	code, execOut, stderr := runCLIStdin(t, bytes.NewReader(payload), append(base, "guest", "exec", "--stdin", "redis-9", "cat")...)
	if code != 0 || execOut != string(payload) {
		t.Fatalf("exec cat with the cli key: %d, %d bytes, %q", code, len(execOut), stderr)
	}
	select {
	case err := <-agentErrs:
		t.Fatalf("the agent identity was refused something it needs: %v", err)
	default:
	}

	// The cli key may read the registry but not write it, and may not serve a guest's subjects.
	cliErrs := make(chan error, 16)
	cliNC, err := nats.Connect(url, seedOpt(cliKey), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case cliErrs <- err:
		default:
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer cliNC.Close()
	if err := cliNC.Publish("$KV."+guestv1.RegistryBucket+".redis-9", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	expectPermissionError(t, cliErrs, "the cli key writes a registry record")
	if _, err := cliNC.Subscribe(guestv1.Subject("redis-9", guestv1.OpExec), func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	expectPermissionError(t, cliErrs, "the cli key serves a guest's exec")
	// The agent key may not call guests' operations (a compromised guest cannot drive the others).
	if err := agentNC.Publish(guestv1.Subject("redis-9", guestv1.OpExec), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	expectPermissionError(t, agentErrs, "the agent key calls a guest's exec")
}

func expectPermissionError(t *testing.T, errCh chan error, what string) {
	t.Helper()
	select {
	case err := <-errCh:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("%s: not refused", what)
	}
}

// TestUpListensForGuests: with --nats-listen on every address, up serves on loopback too, and its banner
// shows how to start a guest; the old --listen still works.
func TestUpListensForGuests(t *testing.T) {
	dir := t.TempDir()
	code, out, stderr := runCLI(t, "up", "--once", "--demo", "--demo-size", "65536", "--data-dir", dir, "--nats-listen", "0.0.0.0:0", "--admin-addr", "127.0.0.1:0")
	if code != 0 || !strings.Contains(out, "Demo passed") || !strings.Contains(out, "listening on 0.0.0.0:") ||
		!strings.Contains(out, "guest start --engine redis") || !strings.Contains(out, "nats://127.0.0.1:") {
		t.Fatalf("up --nats-listen 0.0.0.0:0: %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runCLI(t, "up", "--once", "--data-dir", dir, "--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0")
	if code != 0 || !strings.Contains(out+stderr, "deprecated, use --nats-listen") || !strings.Contains(out, "containers cannot reach NATS on 127.0.0.1") {
		t.Fatalf("up --listen: %d\n%s\n%s", code, out, stderr)
	}
	if code, _, _ := runCLI(t, "up", "--once", "--data-dir", dir, "--nats-listen", "4222"); code != exitBadRequest {
		t.Fatalf("--nats-listen without a host: %d", code)
	}
}

// TestGuestGenRefusals: gen needs a size it can read and a MariaDB or PostgreSQL guest; the generation
// itself runs against real engines in services/backup's MariaDB integration test (benchdata through the
// agent, as gen calls it).
func TestGuestGenRefusals(t *testing.T) {
	ns := natstest.Start(t)
	startAgent(t, agentConn(t, ns.URL(), "g-1", nil), "g-1")
	nats := "--nats=" + ns.URL()
	if code, _, stderr := runCLI(t, nats, "guest", "gen", "--size", "lots", "g-1"); code != 2 || !strings.Contains(stderr, "byte count") {
		t.Fatalf("gen with a bad size: %d %q", code, stderr)
	}
	if code, _, stderr := runCLI(t, nats, "guest", "gen", "g-1"); code != 2 || !strings.Contains(stderr, "mariadb or postgresql") {
		t.Fatalf("gen on a guest without a SQL engine: %d %q", code, stderr)
	}
	if code, _, stderr := runCLI(t, nats, "guest", "gen", "g.1"); code != 2 {
		t.Fatalf("gen with a bad instance id: %d %q", code, stderr)
	}
}
