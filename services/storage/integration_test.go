//go:build integration

package storage_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/natstest"
	"troveng.dev/shared/storageclient"
)

// buildBinary builds ./cmd/storage once per test binary.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "storage")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/storage")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// TestIntegrationBinarySIGTERM runs the storage binary as its own process: it becomes ready, serves, and on
// SIGTERM drains and exits 0; a transfer cut by the stop fails for its client and leaves nothing visible.
func TestIntegrationBinarySIGTERM(t *testing.T) {
	bin := buildBinary(t)
	ns := natstest.Start(t)
	root := t.TempDir()
	adminAddr := freeAddr(t)
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-nats-url", ns.URL(), "-strategy", "fs", "-opt", "root="+root, "-admin-addr", adminAddr)
	cmd.Env = append(os.Environ(), "TROVE_ADMIN_TOKEN=secret-admin-token")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("storage binary never became ready:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if bytes.Contains(logs.Bytes(), []byte("secret-admin-token")) {
		t.Fatal("the admin token appears in the log")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := storageclient.New(ns.Connect(), testStream)
	data := randomBytes(2<<20, 9)
	if _, err := c.Put(ctx, "proc/one", bytes.NewReader(data), nil); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := c.Get(ctx, "proc/one", 0, 0, &got, nil); err != nil || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("get from the binary: %v", err)
	}

	// A put in flight when SIGTERM arrives.
	pr, pw := io.Pipe()
	putDone := make(chan error, 1)
	go func() {
		_, err := c.Put(ctx, "proc/cut", pr, nil)
		putDone <- err
	}()
	_, _ = pw.Write(randomBytes(256<<10, 10))
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("binary did not stop within 30s of SIGTERM:\n%s", logs.String())
	}
	_ = pw.CloseWithError(fmt.Errorf("test over"))
	select {
	case err := <-putDone:
		if err == nil {
			t.Fatal("a put cut by the service's stop reported success")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the client's put hung after the service stopped")
	}

	// A new replica on the same store sees the first object and not the cut one.
	cmd2 := exec.Command(bin, "-nats-url", ns.URL(), "-strategy", "fs", "-opt", "root="+root, "-admin-addr", "")
	cmd2.Stdout, cmd2.Stderr = &logs, &logs
	if err := cmd2.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd2.Process.Kill(); _, _ = cmd2.Process.Wait() })
	var err error
	for i := 0; i < 100; i++ {
		if _, err = c.Stat(ctx, "proc/one"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("second replica: %v", err)
	}
	if _, err := c.Stat(ctx, "proc/cut"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("cut put visible after restart: %v", err)
	}
}
