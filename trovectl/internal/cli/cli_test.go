package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"troveng.dev/services/storage"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/natstest"
	"troveng.dev/shared/s3test"
)

// runCLI runs trovectl in-process and returns its exit code and outputs.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := run(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func startStorage(t *testing.T) string {
	t.Helper()
	ns := natstest.Start(t)
	svc, err := storage.Start(context.Background(), ns.Connect(), nil, storage.Config{
		Strategy: "fs", Options: map[string]string{"root": t.TempDir()},
		Jobs: jobs.Options{AckWait: 2 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	return ns.URL()
}

func TestStorageCommands(t *testing.T) {
	url := startStorage(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "in.bin")
	payload := bytes.Repeat([]byte("trove-ng "), 300_000)
	if err := os.WriteFile(src, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	nats := "--nats=" + url

	code, out, stderr := runCLI(t, nats, "-o", "json", "storage", "put", "b/one.bin", src, "--meta", "engine=redis")
	if code != 0 {
		t.Fatalf("put: %d %s", code, stderr)
	}
	var obj storagev1.Object
	if err := json.Unmarshal([]byte(out), &obj); err != nil || obj.Size != int64(len(payload)) || obj.Metadata["engine"] != "redis" {
		t.Fatalf("put output %q: %v", out, err)
	}

	dst := filepath.Join(dir, "out.bin")
	if code, _, stderr := runCLI(t, nats, "storage", "get", "b/one.bin", dst); code != 0 {
		t.Fatalf("get: %d %s", code, stderr)
	}
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, payload) {
		t.Fatal("downloaded bytes differ")
	}
	code, out, _ = runCLI(t, nats, "storage", "get", "b/one.bin", "-", "--offset", "9", "--length", "9")
	if code != 0 || out != "trove-ng " {
		t.Fatalf("range get to stdout: %d %q", code, out)
	}

	code, out, _ = runCLI(t, nats, "storage", "ls", "b/")
	if code != 0 || !strings.Contains(out, "b/one.bin") {
		t.Fatalf("ls: %d %q", code, out)
	}
	code, out, _ = runCLI(t, nats, "storage", "stat", "b/one.bin")
	if code != 0 || !strings.Contains(out, obj.SHA256) {
		t.Fatalf("stat: %d %q", code, out)
	}
	code, out, stderr = runCLI(t, nats, "storage", "verify", "b/one.bin")
	if code != 0 || !strings.Contains(out, "succeeded") {
		t.Fatalf("verify: %d %q %q", code, out, stderr)
	}
	code, out, stderr = runCLI(t, nats, "storage", "cp", "b/one.bin", "b/two.bin")
	if code != 0 || !strings.Contains(out, "succeeded") {
		t.Fatalf("cp: %d %q %q", code, out, stderr)
	}
	code, out, _ = runCLI(t, nats, "-o", "json", "job", "ls")
	var list []jobs.Job
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 {
		t.Fatalf("job ls: %d %q", code, out)
	}
	code, out, _ = runCLI(t, nats, "job", "show", list[0].ID)
	if code != 0 || !strings.Contains(out, list[0].ID) {
		t.Fatalf("job show: %d %q", code, out)
	}
	code, _, _ = runCLI(t, nats, "job", "cancel", list[0].ID)
	if code != exitConflict {
		t.Fatalf("cancelling a finished job: exit %d, want %d", code, exitConflict)
	}
	code, out, _ = runCLI(t, nats, "service", "ls")
	if code != 0 || !strings.Contains(out, "trove-storage") || !strings.Contains(out, "trove.storage.v1.put") {
		t.Fatalf("service ls: %d %q", code, out)
	}
	if code, _, _ := runCLI(t, nats, "storage", "rm", "b/one.bin"); code != 0 {
		t.Fatal("rm failed")
	}

	// Errors come back coded, each with its own exit code, and a failed download leaves no file.
	missing := filepath.Join(dir, "missing.bin")
	code, _, stderr = runCLI(t, nats, "storage", "get", "b/one.bin", missing)
	if code != exitNotFound || !strings.Contains(stderr, "not_found") {
		t.Fatalf("get of a deleted object: exit %d %q", code, stderr)
	}
	if entries, _ := filepath.Glob(filepath.Join(dir, "*missing*")); len(entries) != 0 {
		t.Fatalf("failed download left files: %v", entries)
	}
	if code, _, _ := runCLI(t, nats, "storage", "stat", "../etc/passwd"); code != exitBadRequest {
		t.Fatalf("bad key: exit %d", code)
	}
	if code, _, _ := runCLI(t, nats, "job", "show", "a.b"); code != exitBadRequest {
		t.Fatalf("bad job id: exit %d", code)
	}
	if code, _, _ := runCLI(t, "--nats=nats://127.0.0.1:1", "storage", "ls"); code != exitUnavailable {
		t.Fatalf("no NATS: exit %d", code)
	}
}

// TestUpDemo runs the README's main job the way a newcomer does, on free ports.
func TestUpDemo(t *testing.T) {
	dir := t.TempDir()
	code, out, stderr := runCLI(t, "up", "--demo", "--once", "--demo-size", "8388608",
		"--data-dir", dir, "--nats-listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0")
	if code != 0 {
		t.Fatalf("up --demo: exit %d\n%s\n%s", code, out, stderr)
	}
	for _, want := range []string{"embedded stack is up", "verify  job", "Demo passed"} {
		if !strings.Contains(out, want) {
			t.Fatalf("up output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "storage", "objects")); err != nil {
		t.Fatalf("fs storage not under the data dir: %v", err)
	}
}

// TestStorageCommandsS3Direct: with the s3 strategy, put and get go straight to the S3 server through
// presigned URLs, and --via-service streams through the service instead; both give the same bytes.
func TestStorageCommandsS3Direct(t *testing.T) {
	s3 := s3test.Start(t)
	ns := natstest.Start(t)
	svc, err := storage.Start(context.Background(), ns.Connect(), nil, storage.Config{Strategy: "s3", Options: map[string]string{
		"endpoint": s3.Endpoint(), "region": s3.Region(), "bucket": s3.Bucket(), "access_key": s3.AccessKey(),
		"secret_key": s3.SecretKey(), "path_style": "true", "part_size": "5MiB"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	dir := t.TempDir()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 800_000) // 12.8 MB: three parts
	src := filepath.Join(dir, "in.bin")
	if err := os.WriteFile(src, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	nats := "--nats=" + ns.URL()
	for _, mode := range [][]string{nil, {"--via-service"}} {
		args := append([]string{nats, "storage", "put", "s3/obj", src}, mode...)
		if code, _, stderr := runCLI(t, args...); code != 0 {
			t.Fatalf("put %v: %d %s", mode, code, stderr)
		}
		dst := filepath.Join(dir, "out.bin")
		args = append([]string{nats, "storage", "get", "s3/obj", dst}, mode...)
		if code, _, stderr := runCLI(t, args...); code != 0 {
			t.Fatalf("get %v: %d %s", mode, code, stderr)
		}
		if got, _ := os.ReadFile(dst); !bytes.Equal(got, payload) {
			t.Fatalf("get %v: bytes differ", mode)
		}
	}
}
