//go:build integration

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestIntegrationUpServesUntilInterrupted runs the built trovectl the way the README's first command does:
// the stack comes up, the demo passes, it serves until Ctrl-C (SIGINT), then exits 0.
func TestIntegrationUpServesUntilInterrupted(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "trovectl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "up", "--demo", "--demo-size", "4194304", "--data-dir", t.TempDir(), "--nats-listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var seen []string
	timeout := time.After(60 * time.Second)
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("trovectl up exited early:\n%s", strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if strings.Contains(l, "Serving until Ctrl-C") {
				break wait
			}
		case <-timeout:
			t.Fatalf("trovectl up not serving after 60s:\n%s", strings.Join(seen, "\n"))
		}
	}
	if !strings.Contains(strings.Join(seen, "\n"), "Demo passed") {
		t.Fatalf("demo did not pass:\n%s", strings.Join(seen, "\n"))
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for range lines {
		}
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after Ctrl-C: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("trovectl up did not stop within 30s of Ctrl-C")
	}
}

// TestIntegrationGuestRedis runs the README's guest path with the built trovectl and a real guest container:
// `up` listening where containers reach it, `guest start --engine redis`, `guest exec ... redis-cli ping`,
// `guest ls`, then `guest stop`. It needs Podman (or Docker) and the guest image with the agent
// (`go tool task image:guest`); without them it is skipped, saying why.
func TestIntegrationGuestRedis(t *testing.T) {
	image := "localhost/trove-guest:dev"
	cli := ""
	for _, c := range []string{"podman", "docker"} {
		if _, err := exec.LookPath(c); err == nil {
			cli = c
			break
		}
	}
	if cli == "" {
		t.Skip("no podman or docker on PATH (go tool task containers:setup)")
	}
	if out, err := exec.Command(cli, "run", "--rm", "--entrypoint", "ls", image, "/usr/local/bin/trove-agent").CombinedOutput(); err != nil {
		t.Skipf("%s has no /usr/local/bin/trove-agent yet (go tool task image:guest): %v %s", image, err, strings.TrimSpace(string(out)))
	}
	bin := filepath.Join(t.TempDir(), "trovectl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	work := t.TempDir()
	port := freeTCPPort(t)
	// Every address, so the container reaches it through the bridge's gateway; only up's NKeys get in.
	up := exec.Command(bin, "up", "--data-dir", filepath.Join(work, "data"), "--nats-listen", "0.0.0.0:"+port, "--admin-addr", "127.0.0.1:0")
	up.Dir = work
	stdout, err := up.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	upLog := &lockedBuffer{}
	up.Stderr = upLog
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = up.Process.Signal(syscall.SIGINT); _ = up.Wait() })
	serving, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			_, _ = upLog.Write([]byte(sc.Text() + "\n"))
			if strings.Contains(sc.Text(), "Serving until Ctrl-C") {
				close(serving)
			}
		}
	}()
	select {
	case <-serving:
	case <-ended:
		t.Fatalf("trovectl up ended before serving; its output:\n%s", upLog)
	case <-time.After(60 * time.Second):
		t.Fatalf("trovectl up not serving after 60s; its output:\n%s", upLog)
	}

	id := fmt.Sprintf("it-redis-%d", time.Now().UnixNano()%1_000_000)
	trovectl := func(args ...string) (string, string, error) {
		cmd := exec.Command(bin, append([]string{"--nats", "nats://127.0.0.1:" + port}, args...)...)
		cmd.Dir = work // ./data/nkeys/cli.nk and agent.nk are found from here
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		return out.String(), errOut.String(), err
	}
	t.Cleanup(func() { _ = exec.Command(cli, "rm", "-f", "trove-guest-"+id).Run() })
	out, stderr, err := trovectl("guest", "start", "--engine", "redis", "--name", id, "--wait", "3m")
	if err != nil {
		t.Fatalf("guest start: %v\n%s\n%s", err, out, stderr)
	}
	if !strings.Contains(out, id) || !strings.Contains(out, "running") {
		t.Fatalf("guest start output:\n%s", out)
	}
	out, stderr, err = trovectl("guest", "exec", id, "redis-cli", "ping")
	if err != nil || strings.TrimSpace(out) != "PONG" {
		t.Fatalf("guest exec redis-cli ping: %v %q %q", err, out, stderr)
	}
	out, _, err = trovectl("guest", "ls")
	if err != nil || !strings.Contains(out, id) {
		t.Fatalf("guest ls: %v\n%s", err, out)
	}
	if out, stderr, err = trovectl("guest", "stop", id); err != nil {
		t.Fatalf("guest stop: %v %q %q", err, out, stderr)
	}
	if err := exec.Command(cli, "inspect", "trove-guest-"+id).Run(); err == nil {
		t.Fatal("the container is still there after guest stop")
	}
}

// lockedBuffer collects a child's stdout and stderr, written from two goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func freeTCPPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}
