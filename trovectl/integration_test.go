//go:build integration

package main

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"strings"
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
