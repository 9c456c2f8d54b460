//go:build integration

// Integration tests of the guest agent in real guests: the guest image (scripts/build-guest-image.sh),
// started by shared/testkit on Podman here (Docker elsewhere), against a real NATS and the real storage
// service (fs strategy) running in this process. Guests are shared between tests where isolation allows:
// one per engine, and a guest of its own for the fault test.
package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/services/storage"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/datagen"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/testkit"
)

// heartbeatEnv sets the agent's heartbeat interval (a Go duration).
const heartbeatEnv = "TROVE_HEARTBEAT"

// suite is what the tests share: one kit (NATS on the gateway, the guests' network), the storage service
// on fs, and one guest per engine, each made on first use.
type suite struct {
	kit      *testkit.Kit
	storage  *storage.Service
	store    *storageclient.Client
	fsRoot   string
	mu       sync.Mutex
	guests   map[string]*guestSlot
	closeDir func()
}

type guestSlot struct {
	once sync.Once
	g    *testkit.Guest
	err  error
}

var (
	suiteOnce sync.Once
	shared    *suite
	sharedErr error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.close()
	}
	os.Exit(code)
}

func getSuite(t testing.TB) *suite {
	t.Helper()
	suiteOnce.Do(func() { shared, sharedErr = newSuite() })
	if sharedErr != nil {
		t.Fatalf("suite: %v", sharedErr)
	}
	return shared
}

func newSuite() (*suite, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A 1 s heartbeat: a guest's record turns healthy within a second of its engine (the default beat is
	// slower), which is what the kit waits for.
	k, err := testkit.New(ctx, testkit.Options{Prefix: "it", Env: map[string]string{heartbeatEnv: "1s"}})
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "agent-it-storage-")
	if err != nil {
		_ = k.Close()
		return nil, err
	}
	svc, err := storage.Start(ctx, k.Conn(), nil, storage.Config{Strategy: "fs", Options: map[string]string{"root": dir}})
	if err != nil {
		_ = k.Close()
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return &suite{kit: k, storage: svc, store: storageclient.New(k.Conn(), stream.Options{}), fsRoot: dir,
		guests: map[string]*guestSlot{}, closeDir: func() { _ = os.RemoveAll(dir) }}, nil
}

func (s *suite) close() {
	_ = s.storage.Stop()
	_ = s.kit.Close()
	s.closeDir()
}

// guest is the shared guest of an engine, started (and waited for) on first use.
func (s *suite) guest(t testing.TB, engine string) *testkit.Guest {
	t.Helper()
	s.mu.Lock()
	slot := s.guests[engine]
	if slot == nil {
		slot = &guestSlot{}
		s.guests[engine] = slot
	}
	s.mu.Unlock()
	slot.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		slot.g, slot.err = s.kit.AddGuest(ctx, testkit.GuestOptions{Engine: engine})
	})
	if slot.err != nil {
		t.Fatalf("guest %s: %v", engine, slot.err)
	}
	logOnFailure(t, slot.g)
	return slot.g
}

// logOnFailure logs the end of the guest's log if the test fails.
func logOnFailure(t testing.TB, g *testkit.Guest) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		logs, err := g.Logs(ctx)
		if err != nil {
			t.Logf("logs of %s: %v", g.Name, err)
			return
		}
		lines := strings.Split(strings.TrimRight(logs, "\n"), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		t.Logf("last lines of %s's log:\n%s", g.Name, strings.Join(lines, "\n"))
	})
}

func timeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// wantCode fails unless err carries the code.
func wantCode(t testing.TB, what string, err error, code errs.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %s", what, code)
	}
	if got := errs.CodeOf(err); got != code {
		t.Fatalf("%s: got %s (%v), want %s", what, got, err, code)
	}
}

// absent fails if path exists inside the guest.
func absent(t testing.TB, ctx context.Context, g *testkit.Guest, paths ...string) {
	t.Helper()
	for _, p := range paths {
		r, err := g.Exec(ctx, "test", "-e", p, "-o", "-L", p)
		if err != nil {
			t.Fatal(err)
		}
		if r.Code == 0 {
			t.Errorf("%s exists in %s", p, g.Name)
		}
	}
}

func newKey(t testing.TB) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// One guest of each engine boots, registers and reports its engine healthy, with versions and its
// allow-list; the engine answers its own client tool through the agent and is reachable from the host.
func TestIntegrationGuestsBoot(t *testing.T) {
	s := getSuite(t)
	checks := map[string][]string{
		guestv1.EngineMariaDB:    {"mariadb", "-N", "-e", "select version()"},
		guestv1.EnginePostgreSQL: {"psql", "-X", "-A", "-t", "-c", "select version()"},
		guestv1.EngineRedis:      {"redis-cli", "info", "server"},
	}
	for _, engine := range guestv1.Engines {
		t.Run(engine, func(t *testing.T) {
			t.Parallel()
			t0 := time.Now()
			g := s.guest(t, engine)
			t.Logf("%s guest %s at %s ready after %s", engine, g.Instance, g.IP(), time.Since(t0).Round(time.Millisecond))
			ctx := timeout(t, time.Minute)
			r, err := g.Registration(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if r.Instance != g.Instance || r.Engine != engine || r.EngineVersion == "" || r.AgentVersion != guestv1.Version {
				t.Fatalf("registration %+v", r)
			}
			if !r.Status.Healthy || r.Status.State != guestv1.EngineRunning || r.Stale(time.Now()) || r.HeartbeatMs <= 0 {
				t.Fatalf("status %+v, heartbeat %s (every %dms)", r.Status, r.Heartbeat, r.HeartbeatMs)
			}
			for _, tool := range []string{"datagen", "tar", "sha256sum"} {
				if !slices.Contains(r.Tools, tool) {
					t.Errorf("tool %s missing from %v", tool, r.Tools)
				}
			}
			if !slices.Contains(r.Roots, guestv1.RootData) || !slices.Contains(r.Roots, guestv1.RootConfig) {
				t.Errorf("roots %v", r.Roots)
			}
			if r.Address != "" && r.Address != g.IP() {
				t.Errorf("the agent says its address is %s; the container's is %s", r.Address, g.IP())
			}
			info, err := g.Client.Info(ctx)
			if err != nil || info.Instance != g.Instance || !info.Status.Healthy {
				t.Fatalf("info: %+v %v", info, err)
			}

			cmd := checks[engine]
			res, err := g.Client.Run(ctx, guestv1.ExecRequest{Tool: cmd[0], Args: cmd[1:], Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
			if err != nil || guestclient.Check(res) != nil {
				t.Fatalf("%v: %v %v %+v", cmd, err, guestclient.Check(res), res)
			}
			if !strings.Contains(string(res.Stdout), versionCore(r.EngineVersion)) {
				t.Errorf("%v says %q; the registration says version %q", cmd, res.Stdout, r.EngineVersion)
			}

			ep, err := g.Endpoint(ctx)
			if err != nil {
				t.Fatal(err)
			}
			conn, err := net.DialTimeout("tcp", ep, 5*time.Second)
			if err != nil {
				t.Fatalf("engine endpoint %s from the host: %v", ep, err)
			}
			_ = conn.Close()
		})
	}
}

// versionCore is the leading dotted number of a version ("10.11.18" of "10.11.18-MariaDB-0+deb12u1").
func versionCore(v string) string {
	end := 0
	for end < len(v) && (v[end] == '.' || v[end] >= '0' && v[end] <= '9') {
		end++
	}
	return v[:end]
}

// datagenSHA256 computes, in the background, the SHA-256 of size bytes of `trove-agent datagen -seed seed`.
func datagenSHA256(size, seed int64) <-chan string {
	want := make(chan string, 1)
	go func() {
		h := sha256.New()
		_, _ = io.Copy(h, io.LimitReader(datagen.New(seed), size))
		want <- hex.EncodeToString(h.Sum(nil))
	}()
	return want
}

// An allowed tool's 1 GiB stdout goes through the agent's framed transform (zstd, AES-256-GCM) into the
// storage service, and back: the stored frames decoded by the agent into sha256sum's stdin give the
// SHA-256 of the tool's output, computed here from the same generator.
func TestIntegrationExecStdoutToStorageAndBack(t *testing.T) {
	s := getSuite(t)
	g := s.guest(t, guestv1.EngineRedis)
	ctx := timeout(t, 5*time.Minute)
	const size = 1 << 30
	const seed = 42

	want := datagenSHA256(size, seed)

	key := newKey(t)
	objKey := "it/exec/" + g.Instance + "/dump.frames"
	frames := &guestv1.FrameSpec{Codec: "zstd", Level: 1, ArtifactID: "exec-it-1", Key: key}
	t0 := time.Now()
	res, err := g.Client.Run(ctx, guestv1.ExecRequest{
		Tool:   "datagen",
		Args:   []string{"-bytes", "1GiB", "-seed", fmt.Sprint(seed)},
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: objKey, Frames: frames, Meta: map[string]string{"test": "exec"}}},
	}, nil)
	up := time.Since(t0)
	if err != nil || guestclient.Check(res) != nil {
		t.Fatalf("datagen to storage: %v %v %+v", err, guestclient.Check(res), res)
	}
	a := res.Artifact
	if a == nil || a.Key != objKey || a.RawSize != size || res.StdoutBytes != size || a.Frames < 2 || a.Codec != "zstd" || a.Size <= 0 || a.Size >= size {
		t.Fatalf("artifact %+v, stdout bytes %d", a, res.StdoutBytes)
	}
	t.Logf("1 GiB to storage in %s (%.0f MB/s), stored %d bytes in %d frames (ratio %.2f), stages %v",
		up.Round(time.Millisecond), size/up.Seconds()/1e6, a.Size, a.Frames, float64(size)/float64(a.Size), res.Stages)

	obj, err := s.store.Stat(ctx, objKey)
	if err != nil || obj.Size != a.Size || obj.SHA256 != a.SHA256 || obj.Metadata["test"] != "exec" {
		t.Fatalf("stored object %+v (%v); the agent reported %+v", obj, err, a)
	}
	// Sealed: no plaintext of the dump in what the storage service holds.
	var head bytes.Buffer
	if _, err := s.store.Get(ctx, objKey, 0, 4<<20, &head, nil); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(head.Bytes(), []byte("INSERT INTO")) {
		t.Fatal("the stored artifact contains plaintext of the dump")
	}

	t1 := time.Now()
	back, err := g.Client.Run(ctx, guestv1.ExecRequest{
		Tool:   "sha256sum",
		Stdin:  guestv1.StdinSpec{Mode: guestv1.StdinStorage, Storage: &guestv1.StorageRef{Key: objKey, Frames: frames}},
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture},
	}, nil)
	down := time.Since(t1)
	if err != nil || guestclient.Check(back) != nil {
		t.Fatalf("sha256sum from storage: %v %v %+v", err, guestclient.Check(back), back)
	}
	got, _, _ := strings.Cut(strings.TrimSpace(string(back.Stdout)), " ")
	if w := <-want; got != w || back.StdinBytes != size {
		t.Fatalf("sha256sum in the guest %s of %d bytes; datagen's output has %s", got, back.StdinBytes, w)
	}
	t.Logf("back from storage into sha256sum in %s (%.0f MB/s)", down.Round(time.Millisecond), size/down.Seconds()/1e6)

	// The frames are bound to their artifact id and key: another key or id is refused, and sha256sum
	// never sees a byte of it.
	for name, c := range map[string]struct {
		f    *guestv1.FrameSpec
		code errs.Code
	}{
		"wrong key": {&guestv1.FrameSpec{Codec: "zstd", ArtifactID: "exec-it-1", Key: newKey(t)}, errs.Unauthorized},
		"wrong id":  {&guestv1.FrameSpec{Codec: "zstd", ArtifactID: "exec-it-2", Key: key}, errs.Corrupt},
		"no key":    {&guestv1.FrameSpec{Codec: "zstd", ArtifactID: "exec-it-1"}, errs.BadRequest},
	} {
		f := c.f
		r, err := g.Client.Run(ctx, guestv1.ExecRequest{
			Tool:   "sha256sum",
			Stdin:  guestv1.StdinSpec{Mode: guestv1.StdinStorage, Storage: &guestv1.StorageRef{Key: objKey, Frames: f}},
			Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture},
		}, nil)
		if err == nil {
			err = guestclient.Check(r)
		}
		if err == nil || r.OK() {
			t.Fatalf("%s: read back with no error: %+v", name, r)
		}
		if got := errs.CodeOf(err); got != c.code {
			t.Errorf("%s: %s (%v), want %s", name, got, err, c.code)
		}
		if r.StdinBytes != 0 {
			t.Errorf("%s: sha256sum was given %d bytes", name, r.StdinBytes)
		}
	}
	if err := s.store.Delete(ctx, objKey); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationDownloadResumesAcrossStorageRestart: the storage service restarts while the agent feeds
// a framed artifact from it into a tool's stdin. The agent gets the rest from the first byte it had not
// taken, so the tool sees one unbroken stream: sha256sum's result is the artifact's, exactly.
func TestIntegrationDownloadResumesAcrossStorageRestart(t *testing.T) {
	s := getSuite(t)
	g := s.guest(t, guestv1.EngineRedis)
	ctx := timeout(t, 3*time.Minute)
	const size = 256 << 20
	const seed = 43
	want := datagenSHA256(size, seed)
	key := newKey(t)
	objKey := "it/resume/" + g.Instance + "/dump.frames"
	frames := &guestv1.FrameSpec{Codec: "zstd", Level: 1, ArtifactID: "exec-it-resume", Key: key}
	res, err := g.Client.Run(ctx, guestv1.ExecRequest{
		Tool:   "datagen",
		Args:   []string{"-bytes", "256MiB", "-seed", fmt.Sprint(seed)},
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: objKey, Frames: frames}},
	}, nil)
	if err != nil || guestclient.Check(res) != nil {
		t.Fatalf("datagen to storage: %v %v %+v", err, guestclient.Check(res), res)
	}
	stored := res.Artifact.Size

	// About 6 s of transfer at the limit; the restart comes after 2 s, mid-way.
	limit := stored / 6
	type result struct {
		res guestv1.ExecResult
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	go func() {
		r, err := g.Client.Run(ctx, guestv1.ExecRequest{
			Tool:           "sha256sum",
			Stdin:          guestv1.StdinSpec{Mode: guestv1.StdinStorage, Storage: &guestv1.StorageRef{Key: objKey, Frames: frames}},
			Stdout:         guestv1.StdoutSpec{Mode: guestv1.StdoutCapture},
			BandwidthLimit: limit,
		}, nil)
		done <- result{r, err, time.Now()}
	}()
	time.Sleep(2 * time.Second)
	if err := s.storage.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // no storage service at all for a second
	svc, err := storage.Start(ctx, s.kit.Conn(), nil, storage.Config{Strategy: "fs", Options: map[string]string{"root": s.fsRoot}})
	if err != nil {
		t.Fatalf("restart storage: %v", err)
	}
	restarted := time.Now()
	s.storage = svc

	r := <-done
	if r.err != nil || guestclient.Check(r.res) != nil {
		t.Fatalf("sha256sum from storage across its restart: %v %v %+v", r.err, guestclient.Check(r.res), r.res)
	}
	if !r.at.After(restarted) {
		t.Fatalf("the transfer ended at %s, before the storage service came back (%s): the restart was not mid-transfer", r.at, restarted)
	}
	got, _, _ := strings.Cut(strings.TrimSpace(string(r.res.Stdout)), " ")
	if w := <-want; got != w || r.res.StdinBytes != size {
		t.Fatalf("sha256sum in the guest %s of %d bytes; datagen's output has %s", got, r.res.StdinBytes, w)
	}
	t.Logf("%d stored bytes at %d B/s: resumed across the restart, finished %s after it", stored, limit, r.at.Sub(restarted).Round(time.Millisecond))
}

// Files under the roots: write, read, stat, list, remove, and tar extract (from a stream), as the
// caller sees them and as they are inside the guest.
func TestIntegrationFilesAndExtract(t *testing.T) {
	s := getSuite(t)
	g := s.guest(t, guestv1.EngineRedis)
	ctx := timeout(t, 2*time.Minute)
	c := g.Client
	base := "data/it-files-" + hex.EncodeToString(newKey(t)[:4])
	inGuest := "/var/lib/trove/" + strings.TrimPrefix(base, "data/")

	fi, err := c.WriteFile(ctx, guestv1.FileWriteRequest{Path: base + "/sub/a.conf", Data: []byte("maxmemory 64mb\n"), Mode: 0o600})
	if err != nil || fi.Size != 15 {
		t.Fatalf("write: %+v %v", fi, err)
	}
	if out, err := g.Output(ctx, "stat", "-c", "%a %s %U", inGuest+"/sub/a.conf"); err != nil || out != "600 15 root" {
		t.Fatalf("in the guest: %q %v", out, err)
	}
	if _, err := c.WriteFile(ctx, guestv1.FileWriteRequest{Path: base + "/sub/b.conf", Data: []byte("b"), Owner: "redis"}); err != nil {
		t.Fatal(err)
	}
	if out, err := g.Output(ctx, "stat", "-c", "%U", inGuest+"/sub/b.conf"); err != nil || out != "redis" {
		t.Fatalf("owner in the guest: %q %v", out, err)
	}
	// A rewrite replaces the whole file.
	if _, err := c.WriteFile(ctx, guestv1.FileWriteRequest{Path: base + "/sub/a.conf", Data: []byte("maxmemory 32mb\n")}); err != nil {
		t.Fatal(err)
	}
	fd, err := c.ReadFile(ctx, base+"/sub/a.conf")
	if err != nil || string(fd.Data) != "maxmemory 32mb\n" || fd.Size != 15 {
		t.Fatalf("read: %+v %v", fd, err)
	}
	st, err := c.Stat(ctx, base+"/sub")
	if err != nil || !st.Dir {
		t.Fatalf("stat dir: %+v %v", st, err)
	}
	list, err := c.List(ctx, base+"/sub")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range list.Entries {
		names = append(names, filepath.Base(e.Path))
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"a.conf", "b.conf"}) {
		t.Fatalf("list: %+v", list)
	}
	_, err = c.Stat(ctx, base+"/nope")
	wantCode(t, "stat of a missing file", err, errs.NotFound)

	// The config root.
	if _, err := c.WriteFile(ctx, guestv1.FileWriteRequest{Path: "config/it-files.conf", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if out, err := g.Output(ctx, "cat", "/etc/trove/it-files.conf"); err != nil || out != "x" {
		t.Fatalf("config root in the guest: %q %v", out, err)
	}
	if _, err := c.Remove(ctx, guestv1.FileRemoveRequest{Path: "config/it-files.conf"}); err != nil {
		t.Fatal(err)
	}

	// Tar extract from a stream: files, a directory, a relative symlink inside the destination.
	tarball := makeTar(t, []tarEntry{
		{name: "PG_VERSION", body: "15\n"},
		{name: "base/", dir: true},
		{name: "base/1/rel", body: strings.Repeat("r", 70000)},
		{name: "current", link: "base/1/rel", symlink: true},
	})
	res, err := c.Extract(ctx, guestv1.ExtractRequest{Path: base + "/restored", Source: guestv1.SourceStream, Owner: "redis"}, bytes.NewReader(tarball))
	if err != nil || guestclient.Check(res) != nil || res.Extracted == nil || res.Extracted.Entries != 4 {
		t.Fatalf("extract: %v %v %+v", err, guestclient.Check(res), res.Extracted)
	}
	out, err := g.Output(ctx, "sh", "-c", "cd "+inGuest+"/restored && cat PG_VERSION && stat -c %s base/1/rel && readlink current && stat -c %U base/1/rel")
	if err != nil || out != "15\n70000\nbase/1/rel\nredis" {
		t.Fatalf("extracted tree in the guest: %q %v", out, err)
	}
	// Without Replace a non-empty destination is refused; with it, it is replaced as a whole.
	_, err = c.Extract(ctx, guestv1.ExtractRequest{Path: base + "/restored", Source: guestv1.SourceStream}, bytes.NewReader(tarball))
	if err == nil {
		t.Fatal("extract over a non-empty destination without replace: no error")
	}
	res, err = c.Extract(ctx, guestv1.ExtractRequest{Path: base + "/restored", Source: guestv1.SourceStream, Replace: true},
		bytes.NewReader(makeTar(t, []tarEntry{{name: "only", body: "1"}})))
	if err != nil || guestclient.Check(res) != nil {
		t.Fatalf("extract with replace: %v %v", err, guestclient.Check(res))
	}
	if out, err := g.Output(ctx, "ls", "-A", inGuest+"/restored"); err != nil || out != "only" {
		t.Fatalf("after replace: %q %v", out, err)
	}

	if _, err := c.Remove(ctx, guestv1.FileRemoveRequest{Path: base + "/sub/a.conf"}); err != nil {
		t.Fatal(err)
	}
	absent(t, ctx, g, inGuest+"/sub/a.conf")
	_, err = c.Remove(ctx, guestv1.FileRemoveRequest{Path: base})
	if err == nil {
		t.Fatal("removing a non-empty directory without Recursive: no error")
	}
	if _, err := c.Remove(ctx, guestv1.FileRemoveRequest{Path: base, Recursive: true}); err != nil {
		t.Fatal(err)
	}
	absent(t, ctx, g, inGuest)
}

type tarEntry struct {
	name, body, link  string
	dir, symlink      bool
	hardlink, special bool
}

func makeTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, ModTime: time.Now()}
		switch {
		case e.dir:
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		case e.symlink:
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		case e.hardlink:
			h.Typeflag, h.Linkname = tar.TypeLink, e.link
		case e.special:
			h.Typeflag, h.Devmajor, h.Devminor = tar.TypeChar, 1, 3
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Refusals through the real agent in a guest: each with a coded error, and nothing executed or written
// (checked inside the container).
func TestIntegrationSecurityRefusals(t *testing.T) {
	s := getSuite(t)
	g := s.guest(t, guestv1.EngineRedis)
	c := g.Client

	t.Run("tool not on the allow-list", func(t *testing.T) {
		ctx := timeout(t, time.Minute)
		for _, tool := range []string{"touch", "/usr/bin/touch", "sh", "bash", "../../usr/bin/touch", "datagen; touch"} {
			_, err := c.Exec(ctx, guestv1.ExecRequest{Tool: tool, Args: []string{"/var/lib/trove/pwned-tool"}})
			wantCode(t, "exec "+tool, err, errs.BadRequest)
		}
		absent(t, ctx, g, "/var/lib/trove/pwned-tool")
	})

	t.Run("shell metacharacters stay inert", func(t *testing.T) {
		ctx := timeout(t, time.Minute)
		args := []string{
			"x; touch /tmp/pwned1",
			"$(touch /tmp/pwned2)",
			"`touch /tmp/pwned3`",
			"x | touch /tmp/pwned4",
			"x && touch /tmp/pwned5",
			"> /tmp/pwned6",
			"*",
		}
		res, err := c.Run(ctx, guestv1.ExecRequest{Tool: "cat", Args: append([]string{"--"}, args...), Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		// cat got each string as one file name, and found none of them.
		if res.ExitCode == 0 || res.Error != nil {
			t.Fatalf("cat of odd names: %+v", res)
		}
		// cat quotes odd names: "cat: 'x; touch /tmp/pwned1': No such file or directory".
		for _, a := range args {
			if !strings.Contains(res.StderrTail, "'"+a+"': No such file") {
				t.Errorf("cat's stderr does not name %q as a file: %s", a, res.StderrTail)
			}
		}
		absent(t, ctx, g, "/tmp/pwned1", "/tmp/pwned2", "/tmp/pwned3", "/tmp/pwned4", "/tmp/pwned5", "/tmp/pwned6")
		// Env is allow-listed per tool: cat may receive none; LD_PRELOAD and PATH never.
		for _, env := range []map[string]string{{"LD_PRELOAD": "/tmp/x.so"}, {"PATH": "/tmp"}, {"MYSQL_PWD": "x"}} {
			_, err := c.Exec(ctx, guestv1.ExecRequest{Tool: "cat", Args: []string{"/dev/null"}, Env: env})
			wantCode(t, fmt.Sprintf("env %v", env), err, errs.BadRequest)
		}
		// Arguments with NUL or over the limits.
		_, err = c.Exec(ctx, guestv1.ExecRequest{Tool: "cat", Args: []string{"a\x00b"}})
		wantCode(t, "NUL in an argument", err, errs.BadRequest)
		_, err = c.Exec(ctx, guestv1.ExecRequest{Tool: "cat", Args: make([]string, guestv1.MaxArgs+1)})
		wantCode(t, "too many arguments", err, errs.BadRequest)
		_, err = c.Exec(ctx, guestv1.ExecRequest{Tool: "cat", Args: []string{strings.Repeat("a", guestv1.MaxArgLen+1)}})
		wantCode(t, "an argument too long", err, errs.BadRequest)
		_, err = c.Exec(ctx, guestv1.ExecRequest{Tool: "cat", Dir: "data/../../etc"})
		wantCode(t, "working dir outside the roots", err, errs.BadRequest)
	})

	t.Run("paths escaping the roots", func(t *testing.T) {
		ctx := timeout(t, time.Minute)
		// A symlink inside the data root that points out of it, made behind the agent's back.
		if _, err := g.Output(ctx, "ln", "-sfn", "/tmp", "/var/lib/trove/it-link-out"); err != nil {
			t.Fatal(err)
		}
		defer func() { _, _ = g.Exec(context.Background(), "rm", "-f", "/var/lib/trove/it-link-out") }()
		for _, p := range []string{
			"data/../../tmp/pwned-path",
			"data/../config/../../tmp/pwned-path",
			"/tmp/pwned-path",
			"tmp/pwned-path",
			"../tmp/pwned-path",
			"data/it-link-out/pwned-path",
			"data/x\x00/pwned-path",
			"data/x\n/pwned-path",
			"",
		} {
			_, err := c.WriteFile(ctx, guestv1.FileWriteRequest{Path: p, Data: []byte("x")})
			wantCode(t, fmt.Sprintf("write %q", p), err, errs.BadRequest)
			_, err = c.ReadFile(ctx, p)
			if err == nil {
				t.Errorf("read %q: no error", p)
			}
		}
		_, err := c.ReadFile(ctx, "data/../../etc/passwd")
		wantCode(t, "read /etc/passwd", err, errs.BadRequest)
		_, err = c.Remove(ctx, guestv1.FileRemoveRequest{Path: "data/../../etc", Recursive: true})
		wantCode(t, "remove /etc", err, errs.BadRequest)
		_, err = c.Remove(ctx, guestv1.FileRemoveRequest{Path: "data", Recursive: true})
		if err == nil {
			t.Error("removing a whole root: no error")
		}
		_, err = c.List(ctx, "data/it-link-out")
		wantCode(t, "list through a symlink out", err, errs.BadRequest)
		absent(t, ctx, g, "/tmp/pwned-path")
		if out, err := g.Output(ctx, "test", "-s", "/etc/passwd"); err != nil {
			t.Fatalf("/etc/passwd: %q %v", out, err)
		}
	})

	t.Run("archive entries escaping the destination", func(t *testing.T) {
		ctx := timeout(t, time.Minute)
		if _, err := g.Output(ctx, "sh", "-c", "mkdir -p /tmp/it-tar && : > /tmp/it-tar/victim"); err != nil {
			t.Fatal(err)
		}
		cases := map[string][]tarEntry{
			"dot-dot":          {{name: "ok", body: "1"}, {name: "../../../../tmp/it-tar/pwned", body: "x"}},
			"absolute":         {{name: "ok", body: "1"}, {name: "/tmp/it-tar/pwned", body: "x"}},
			"symlink then use": {{name: "l", link: "/tmp/it-tar", symlink: true}, {name: "l/pwned", body: "x"}},
			"relative symlink": {{name: "l", link: "../../../../tmp/it-tar", symlink: true}, {name: "l/pwned", body: "x"}},
			"hard link out":    {{name: "h", link: "/tmp/it-tar/victim", hardlink: true}},
			"device":           {{name: "null", special: true}},
		}
		for name, entries := range cases {
			dest := "data/it-tar-" + strings.ReplaceAll(name, " ", "-")
			res, err := c.Extract(ctx, guestv1.ExtractRequest{Path: dest, Source: guestv1.SourceStream}, bytes.NewReader(makeTar(t, entries)))
			if err == nil {
				err = guestclient.Check(res)
			}
			wantCode(t, "extract "+name, err, errs.BadRequest)
			absent(t, ctx, g, "/var/lib/trove/"+strings.TrimPrefix(dest, "data/"))
		}
		absent(t, ctx, g, "/tmp/it-tar/pwned")
		if out, err := g.Output(ctx, "sh", "-c", "ls -A /tmp/it-tar; stat -c %h /tmp/it-tar/victim"); err != nil || out != "victim\n1" {
			t.Fatalf("/tmp/it-tar after the refused extracts: %q %v", out, err)
		}
		// Nothing left behind in the data root either (no temp dirs of the refused extracts).
		if out, err := g.Output(ctx, "sh", "-c", "ls -A /var/lib/trove | grep -c it-tar || true"); err != nil || out != "0" {
			t.Fatalf("left in the data root: %q %v", out, err)
		}
	})

	t.Run("oversized requests", func(t *testing.T) {
		ctx := timeout(t, time.Minute)
		// Over the inline data limit, and over the request size limit (the kit's NATS lets both through:
		// the agent is the one refusing).
		for _, n := range []int{guestv1.MaxInlineData + 1, guestv1.MaxRequestSize + 1} {
			_, err := c.WriteFile(ctx, guestv1.FileWriteRequest{Path: "data/it-big", Data: make([]byte, n)})
			if err == nil {
				t.Fatalf("write of %d bytes: no error", n)
			}
			if code := errs.CodeOf(err); code != errs.BadRequest {
				t.Fatalf("write of %d bytes: %s (%v), want bad_request", n, code, err)
			}
		}
		_, err := c.Exec(ctx, guestv1.ExecRequest{Tool: "cat", Stdin: guestv1.StdinSpec{Mode: guestv1.StdinData, Data: make([]byte, guestv1.MaxInlineData+1)}})
		wantCode(t, "inline stdin over the limit", err, errs.BadRequest)
		absent(t, ctx, g, "/var/lib/trove/it-big")
	})

	t.Run("instance ids with subject tokens", func(t *testing.T) {
		ctx := timeout(t, 2*time.Minute)
		for _, id := range []string{"a.b", "*", ">", "g.>", "a b", ""} {
			_, err := guestclient.New(s.kit.Conn(), id, stream.Options{})
			wantCode(t, fmt.Sprintf("client for %q", id), err, errs.BadRequest)
		}
		// A guest told to be "evil.>" refuses to start: it never registers or subscribes.
		evil, err := s.kit.AddGuest(ctx, testkit.GuestOptions{Engine: guestv1.EngineRedis, Instance: "evil.>", NoWait: true})
		if err != nil {
			t.Fatal(err)
		}
		logOnFailure(t, evil)
		deadline := time.Now().Add(30 * time.Second)
		for {
			running, err := evil.Running(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !running {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the agent with instance id \"evil.>\" still runs after 30s")
			}
			time.Sleep(100 * time.Millisecond)
		}
		insp, err := evil.Raw().Inspect(ctx)
		if err != nil || insp.State.ExitCode == 0 {
			t.Fatalf("exit code of the refused agent: %+v %v", insp.State, err)
		}
		kv, err := s.kit.Registry(ctx)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := kv.Keys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if strings.Contains(k, "evil") {
				t.Fatalf("registry key %q", k)
			}
		}
		// No one answers on the subjects the id would have made.
		_, err = s.kit.Conn().Request("trove.guest.evil.x.info", nil, time.Second)
		if !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("request to trove.guest.evil.x.info: %v, want no responders", err)
		}
		// And an exec id with subject tokens, to a real agent, is refused too.
		var r guestv1.ExecResult
		err = rpc.Call(ctx, s.kit.Conn(), guestv1.Subject(g.Instance, guestv1.OpExecWait), guestv1.ExecWaitRequest{ExecID: "x.>", WaitMs: 10}, &r)
		if errs.CodeOf(err) != errs.BadRequest && errs.CodeOf(err) != errs.NotFound {
			t.Fatalf("exec_wait of \"x.>\": %v", err)
		}
	})
}

// The agent is killed in the middle of an exec and started again: the caller gets an error, not a hang;
// the registration goes stale within StaleBeats heartbeats and is fresh again after the restart; the
// half-written artifact is not in storage. Engine stop/start are checked on the same guest first.
func TestIntegrationFaultAgentKilledMidExec(t *testing.T) {
	s := getSuite(t)
	const beat = 500 * time.Millisecond
	ctx := timeout(t, 4*time.Minute)
	g, err := s.kit.AddGuest(ctx, testkit.GuestOptions{Engine: guestv1.EngineRedis, Env: map[string]string{heartbeatEnv: beat.String()}})
	if err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, g)
	reg, err := g.Registration(ctx)
	if err != nil || time.Duration(reg.HeartbeatMs)*time.Millisecond != beat {
		t.Fatalf("heartbeat %dms (%v), want %s", reg.HeartbeatMs, err, beat)
	}

	st, err := g.Client.EngineStop(ctx, guestv1.EngineRequest{})
	if err != nil || st.State != guestv1.EngineStopped || st.Healthy {
		t.Fatalf("engine stop: %+v %v", st, err)
	}
	if _, err := g.WaitFor(ctx, "unhealthy after engine stop", func(r guestv1.Registration, err error) bool {
		return err == nil && !r.Status.Healthy
	}); err != nil {
		t.Fatal(err)
	}
	st, err = g.Client.EngineStart(ctx, guestv1.EngineRequest{})
	if err != nil || st.State != guestv1.EngineRunning || !st.Healthy {
		t.Fatalf("engine start: %+v %v", st, err)
	}

	for _, how := range []string{"agent process", "container"} {
		t.Run("kill the "+how, func(t *testing.T) {
			ctx := timeout(t, 2*time.Minute)
			objKey := "it/fault/" + strings.ReplaceAll(how, " ", "-")
			type outcome struct {
				res guestv1.ExecResult
				err error
				at  time.Time
			}
			done := make(chan outcome, 1)
			// Mid-stream: the agent's own process is killed while it frames a tool's output into storage;
			// the container is killed while the output streams to this process.
			var streamed countingWriter
			req := guestv1.ExecRequest{Tool: "datagen", Args: []string{"-bytes", "100GiB"}}
			go func() {
				var r guestv1.ExecResult
				var err error
				if how == "container" {
					r, err = g.Client.RunToWriter(ctx, req, nil, &streamed)
				} else {
					req.Stdout = guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: objKey,
						Frames: &guestv1.FrameSpec{Codec: "zstd", ArtifactID: "fault-1", Key: newKey(t)}}}
					r, err = g.Client.Run(ctx, req, nil)
				}
				done <- outcome{res: r, err: err, at: time.Now()}
			}()
			// Wait until the tool runs and bytes flow, as the agent's own progress report says.
			progress := false
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && !progress; {
				select {
				case o := <-done:
					t.Fatalf("the exec ended before the kill: %+v %v", o.res, o.err)
				case <-time.After(200 * time.Millisecond):
				}
				progress = streamed.n.Load() > 64<<20 || storageProgress(s)
			}
			if !progress {
				t.Fatal("no bytes flowing 30 s after the exec started")
			}
			killed := time.Now()
			if how == "container" {
				err = g.Kill(ctx)
			} else {
				err = g.KillAgent(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			// Watch the registry from the kill on, while the caller waits.
			type staleness struct {
				reg guestv1.Registration
				at  time.Time
				err error
			}
			staleCh := make(chan staleness, 1)
			go func() {
				r, err := g.WaitStale(ctx)
				staleCh <- staleness{r, time.Now(), err}
			}()
			select {
			case o := <-done:
				if o.err == nil {
					t.Fatalf("the exec's wait ended without an error: %+v", o.res)
				}
				t.Logf("caller's error %s after the kill: %v", o.at.Sub(killed).Round(time.Millisecond), o.err)
				if c := errs.CodeOf(o.err); c != errs.Unavailable && c != errs.Timeout {
					t.Errorf("error code %s, want unavailable or timeout", c)
				}
			case <-time.After(guestclient.PollInterval + 20*time.Second):
				t.Fatal("the caller still waits long after the agent was killed")
			}

			st := <-staleCh
			if st.err != nil {
				t.Fatal(st.err)
			}
			// Stale once StaleAfter has passed since the last heartbeat (the registry is polled every 100 ms),
			// and so at most StaleAfter plus one beat after the kill.
			bound := st.reg.StaleAfter() + beat + 500*time.Millisecond
			if lag := st.at.Sub(st.reg.Heartbeat); lag > st.reg.StaleAfter()+500*time.Millisecond {
				t.Errorf("seen stale only %s after the last heartbeat (stale after %s)", lag, st.reg.StaleAfter())
			}
			if d := st.at.Sub(killed); d > bound {
				t.Errorf("stale %s after the kill; the bound is %s", d, bound)
			}
			t.Logf("stale %s after the kill (stale after %s of silence)", st.at.Sub(killed).Round(time.Millisecond), st.reg.StaleAfter())

			if running, err := g.Running(ctx); err != nil || running {
				t.Fatalf("container running after the agent died: %v %v", running, err)
			}
			t0 := time.Now()
			r, err := g.Restart(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if r.Stale(time.Now()) || !r.Status.Healthy || r.Started.Before(t0) {
				t.Fatalf("after restart: %+v", r)
			}
			t.Logf("fresh and healthy %s after the restart", time.Since(t0).Round(time.Millisecond))
			// The interrupted exec left no artifact.
			_, err = s.store.Stat(ctx, objKey)
			wantCode(t, "stat of the interrupted artifact", err, errs.NotFound)
			if n := streamed.n.Load(); how == "container" {
				t.Logf("%d MiB had streamed to the caller when the container was killed", n>>20)
			}
			// And the restarted agent works.
			res, err := g.Client.Run(ctx, guestv1.ExecRequest{Tool: "datagen", Args: []string{"-bytes", "1MiB"}}, nil)
			if err != nil || !res.OK() || res.StdoutBytes != 1<<20 {
				t.Fatalf("exec after restart: %+v %v", res, err)
			}
		})
	}
}

// countingWriter counts and drops what is written to it.
type countingWriter struct{ n atomic.Int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	return len(p), nil
}

// storageProgress reports whether a put into the storage service has received bytes: the fs strategy
// writes a put under <root>/tmp/ before it renames it into place.
func storageProgress(s *suite) bool {
	var total int64
	_ = filepath.WalkDir(filepath.Join(s.fsRoot, "tmp"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	return total > 8<<20
}

// BenchmarkGuestRelay (scripts/bench-guest.sh; not in CI) compares, on one guest and in one run, a tool's
// 2 GiB stdout relayed by the agent through the framed transform (zstd level 1, AES-256-GCM) into the
// storage service (fs strategy) with the same tool piped locally through `zstd -1 -T0` into a file on the
// guest. Rounds alternate (TROVE_BENCH_ROUNDS, default 3); the medians are reported, with the agent's
// peak RSS (VmHWM) after the relays.
func BenchmarkGuestRelay(b *testing.B) {
	s := getSuite(b)
	ctx := timeout(b, 30*time.Minute)
	g := s.guest(b, guestv1.EngineRedis)
	// TROVE_BENCH_GUEST_ENV="K=V K2=V2" runs the benchmark on a guest of its own with that agent
	// environment (e.g. TROVE_MEMORY_LIMIT=0 to see what the agent's soft memory limit costs).
	if v := os.Getenv("TROVE_BENCH_GUEST_ENV"); v != "" {
		env := map[string]string{}
		for _, kv := range strings.Fields(v) {
			k, val, ok := strings.Cut(kv, "=")
			if !ok {
				b.Fatalf("TROVE_BENCH_GUEST_ENV: %q is not K=V", kv)
			}
			env[k] = val
		}
		var err error
		if g, err = s.kit.AddGuest(ctx, testkit.GuestOptions{Engine: guestv1.EngineRedis, Env: env}); err != nil {
			b.Fatal(err)
		}
		b.Logf("guest %s with %v", g.Instance, env)
	}
	const size = 2 << 30
	rounds := 3
	if v := os.Getenv("TROVE_BENCH_ROUNDS"); v != "" {
		if _, err := fmt.Sscan(v, &rounds); err != nil || rounds < 1 {
			b.Fatalf("TROVE_BENCH_ROUNDS=%q", v)
		}
	}
	pid, err := g.AgentPID(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var relay, pipe, relayCPU, pipeCPU []float64
	var stored, pipeSize int64
	b.Logf("load average before: %s", loadavg())
	for round := 1; round <= rounds && b.N > 0; round++ {
		objKey := fmt.Sprintf("bench/relay-%d", round)
		agent0, err := procCPU(ctx, g, pid)
		if err != nil {
			b.Fatal(err)
		}
		host0 := selfCPU()
		t0 := time.Now()
		res, err := g.Client.Run(ctx, guestv1.ExecRequest{
			Tool: "datagen", Args: []string{"-bytes", "2GiB", "-seed", fmt.Sprint(round)},
			Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: objKey,
				Frames: &guestv1.FrameSpec{Codec: "zstd", Level: 1, ArtifactID: objKey[6:], Key: newKey(b)}}},
		}, nil)
		d := time.Since(t0)
		if err != nil || guestclient.Check(res) != nil || res.Artifact == nil || res.StdoutBytes != size {
			b.Fatalf("relay: %v %v %+v", err, guestclient.Check(res), res)
		}
		host := selfCPU() - host0
		agent1, err := procCPU(ctx, g, pid)
		if err != nil {
			b.Fatal(err)
		}
		agentCPU := agent1 - agent0
		relay = append(relay, size/d.Seconds()/1e6)
		relayCPU = append(relayCPU, agentCPU+host)
		stored = res.Artifact.Size
		b.Logf("round %d relay: %.0f MB/s (%s; CPU: agent+datagen %.1fs, test process (NATS, storage) %.1fs; %d frames, stored %d bytes, stages ms %v)",
			round, relay[len(relay)-1], d.Round(time.Millisecond), agentCPU, host, res.Artifact.Frames, stored, res.Stages)
		if err := s.store.Delete(ctx, objKey); err != nil {
			b.Fatal(err)
		}

		t0 = time.Now()
		r, err := g.Exec(ctx, "bash", "-c", fmt.Sprintf(`TIMEFORMAT="%%3U %%3S"; time { trove-agent datagen -bytes 2GiB -seed %d | zstd -1 -T0 -q -f -o /var/lib/trove/bench.zst; } && stat -c %%s /var/lib/trove/bench.zst && rm -f /var/lib/trove/bench.zst`, round))
		d = time.Since(t0)
		if err != nil || r.Code != 0 {
			b.Fatalf("pipe: %v %s", err, r)
		}
		var user, sys float64
		if _, err := fmt.Sscan(string(r.Stdout), &pipeSize); err != nil {
			b.Fatalf("pipe output %s", r)
		}
		if _, err := fmt.Sscan(string(r.Stderr), &user, &sys); err != nil {
			b.Fatalf("pipe times %s", r)
		}
		pipe = append(pipe, size/d.Seconds()/1e6)
		pipeCPU = append(pipeCPU, user+sys)
		b.Logf("round %d pipe:  %.0f MB/s (%s; CPU: datagen+zstd %.1fs; %d bytes)", round, pipe[len(pipe)-1], d.Round(time.Millisecond), user+sys, pipeSize)
	}
	b.Logf("load average after: %s", loadavg())
	hwm, err := g.ProcStatus(ctx, pid, "VmHWM")
	if err != nil {
		b.Fatal(err)
	}
	r, p := median(relay), median(pipe)
	b.ReportMetric(r, "relay-MB/s")
	b.ReportMetric(p, "pipe-MB/s")
	b.ReportMetric(r/p, "ratio")
	b.ReportMetric(float64(hwm)/(1<<20), "agent-peak-RSS-MiB")
	b.ReportMetric(median(relayCPU), "relay-CPU-s")
	b.ReportMetric(median(pipeCPU), "pipe-CPU-s")
	b.Logf("median of %d rounds: relay %.0f MB/s (stored %d bytes, ratio %.2f, %.1f CPU s), pipe %.0f MB/s (%d bytes, %.1f CPU s), relay/pipe %.2f, agent VmHWM %.1f MiB",
		len(relay), r, stored, float64(size)/float64(stored), median(relayCPU), p, pipeSize, median(pipeCPU), r/p, float64(hwm)/(1<<20))
}

// procCPU is the CPU time (user+system, with reaped children: the tools) of a process in the guest, s.
func procCPU(ctx context.Context, g *testkit.Guest, pid int) (float64, error) {
	out, err := g.Output(ctx, "cat", fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name in parentheses: state is field 3, utime..cstime are 14..17.
	f := strings.Fields(out[strings.LastIndexByte(out, ')')+1:])
	var ticks float64
	for _, v := range f[11:15] {
		var n float64
		if _, err := fmt.Sscan(v, &n); err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %q", pid, out)
		}
		ticks += n
	}
	return ticks / 100, nil // USER_HZ is 100 on Linux
}

// selfCPU is this process's CPU time (user+system), s.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
