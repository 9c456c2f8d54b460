package cli

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/natsauth"
)

// lockedBuffer is an output the test reads while `up` still writes to it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// startUp runs `trovectl up` until the test ends and returns its NATS URL once the storage service answers.
func startUp(t *testing.T, dataDir string) (url string, out *lockedBuffer) {
	t.Helper()
	port := freePort(t)
	url = "nats://127.0.0.1:" + strconv.Itoa(port)
	ctx, cancel := context.WithCancel(context.Background())
	out = &lockedBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"up", "--data-dir", dataDir, "--nats-listen", "127.0.0.1:" + strconv.Itoa(port), "--admin-addr", "127.0.0.1:0"}, out, out)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("trovectl up did not stop")
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "Serving until Ctrl-C") {
		select {
		case code := <-done:
			t.Fatalf("trovectl up exited with %d:\n%s", code, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("trovectl up not serving:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return url, out
}

// TestUpIdentities: `up` makes one NKey per identity once (0600 files in a 0700 directory), admits only
// those, runs the storage service as its own identity, and trovectl commands work with the cli key
// (--nkey, TROVE_NATS_NKEY, or ./data/nkeys/cli.nk found by itself).
func TestUpIdentities(t *testing.T) {
	t.Setenv("TROVE_NATS_NKEY", "")
	t.Setenv("TROVE_NATS_CREDS", "")
	work := t.TempDir()
	dataDir := filepath.Join(work, "data")
	url, out := startUp(t, dataDir)
	keysDir := filepath.Join(dataDir, "nkeys")
	cliKey, storageKey := filepath.Join(keysDir, "cli.nk"), filepath.Join(keysDir, "storage.nk")

	if !strings.Contains(out.String(), "export TROVE_NATS_NKEY="+cliKey) {
		t.Fatalf("banner lacks the cli key export:\n%s", out.String())
	}
	if fi, err := os.Stat(keysDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("nkeys dir: %v %v", fi.Mode(), err)
	}
	for _, k := range []string{cliKey, storageKey} {
		if fi, err := os.Stat(k); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", k, fi.Mode(), err)
		}
	}
	// The seeds never show in the output.
	for _, k := range []string{cliKey, storageKey} {
		seed, _ := os.ReadFile(k)
		if strings.Contains(out.String(), strings.TrimSpace(string(seed))) {
			t.Fatalf("up printed the seed of %s", filepath.Base(k))
		}
	}

	// The server admits only the two keys, and the cli key cannot subscribe to the endpoints: a storage
	// service that answers is running as the storage identity.
	code, svcOut, stderr := runCLI(t, "--nats", url, "--nkey", cliKey, "-o", "json", "service", "ls")
	if code != 0 || !strings.Contains(svcOut, "trove-storage") {
		t.Fatalf("service ls with the cli key: %d %q %q", code, svcOut, stderr)
	}

	src := filepath.Join(work, "in.txt")
	if err := os.WriteFile(src, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCLI(t, "--nats", url, "--nkey", cliKey, "storage", "put", "a/b.txt", src); code != 0 {
		t.Fatalf("put with --nkey: %d %s", code, stderr)
	}
	t.Setenv("TROVE_NATS_NKEY", cliKey)
	if code, lsOut, stderr := runCLI(t, "--nats", url, "storage", "ls", "a/"); code != 0 || !strings.Contains(lsOut, "a/b.txt") {
		t.Fatalf("ls with TROVE_NATS_NKEY: %d %q %s", code, lsOut, stderr)
	}
	t.Setenv("TROVE_NATS_NKEY", "")

	// No identity (and no ./data/nkeys/cli.nk here): refused, with a hint, as a bad request.
	t.Chdir(t.TempDir())
	code, _, stderr = runCLI(t, "--nats", url, "storage", "ls")
	if code != exitBadRequest || !strings.Contains(stderr, "refused") || !strings.Contains(stderr, "--nkey") {
		t.Fatalf("no identity: exit %d %q", code, stderr)
	}
	// The storage identity may not call the storage endpoints as a client would.
	code, _, stderr = runCLI(t, "--nats", url, "--nkey", storageKey, "--timeout", "1s", "storage", "ls")
	if code == 0 {
		t.Fatalf("the storage identity could list as a client: %q", stderr)
	}
	if code, _, _ := runCLI(t, "--nats", url, "--nkey", cliKey, "--creds", cliKey, "storage", "ls"); code != exitBadRequest {
		t.Fatalf("--nkey with --creds: exit %d", code)
	}
	// Run from the directory up ran in, the cli key is found by itself.
	t.Chdir(work)
	if code, lsOut, stderr := runCLI(t, "--nats", url, "storage", "ls", "a/"); code != 0 || !strings.Contains(lsOut, "a/b.txt") {
		t.Fatalf("ls with ./data/nkeys/cli.nk: %d %q %s", code, lsOut, stderr)
	}

	// An unauthenticated connection is refused by the server itself.
	if _, err := nats.Connect(url, nats.MaxReconnects(0)); !natsauth.IsAuthError(err) {
		t.Fatalf("unauthenticated connect: %v", err)
	}
}

// TestUpKeepsKeys: a second `up` on the same data dir reuses the keys, so clients keep working.
func TestUpKeepsKeys(t *testing.T) {
	dir := t.TempDir()
	args := []string{"up", "--once", "--data-dir", dir, "--nats-listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}
	if code, out, stderr := runCLI(t, args...); code != 0 {
		t.Fatalf("first up: %d\n%s\n%s", code, out, stderr)
	}
	first, err := os.ReadFile(filepath.Join(dir, "nkeys", "cli.nk"))
	if err != nil {
		t.Fatal(err)
	}
	if code, out, stderr := runCLI(t, append(args, "--demo", "--demo-size", "1048576")...); code != 0 || !strings.Contains(out, "Demo passed") {
		t.Fatalf("second up with the demo: %d\n%s\n%s", code, out, stderr)
	}
	second, err := os.ReadFile(filepath.Join(dir, "nkeys", "cli.nk"))
	if err != nil || !bytes.Equal(first, second) {
		t.Fatalf("the cli key changed between runs (%v)", err)
	}
}
