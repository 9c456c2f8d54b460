package agent

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// objectFile is where the fs strategy keeps an object's bytes (objects/d<dir>/.../f<name>).
func (h *harness) objectFile(key string) string {
	segs := strings.Split(key, "/")
	parts := []string{h.storeFS, "objects"}
	for i, s := range segs {
		if i == len(segs)-1 {
			parts = append(parts, "f"+s)
		} else {
			parts = append(parts, "d"+s)
		}
	}
	return filepath.Join(parts...)
}

// markerTool is a shell that leaves a marker before it reads stdin: its absence proves the tool never ran.
func (h *harness) markerTool(out guestv1.StdoutSpec, in guestv1.StdinSpec) (guestv1.ExecRequest, string) {
	marker := filepath.Join(h.data, "ran-"+strings.ReplaceAll(h.t.Name(), "/", "_"))
	return guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", "touch " + marker + "; cat"}, Stdout: out, Stdin: in}, marker
}

func TestStorageFramedSealedRoundTrip(t *testing.T) {
	h := newHarness(t, nil)
	const n = 3<<20 + 5
	key := newKey(t)
	spec := func() *guestv1.FrameSpec {
		return &guestv1.FrameSpec{Codec: "zstd", FrameSize: 256 << 10, ArtifactID: "backup-1", Key: append([]byte(nil), key...)}
	}
	r := h.run(guestv1.ExecRequest{Tool: "datagen", Args: datagenArgs(n, 11), Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage,
		Storage: &guestv1.StorageRef{Key: "b/full.frames", Frames: spec(), Meta: map[string]string{"engine": "postgresql"}}}}, nil)
	mustOK(t, "datagen to storage", r)
	a := r.Artifact
	if a == nil || a.Key != "b/full.frames" || a.RawSize != n || a.Codec != "zstd" || a.Frames < 12 || len(a.IndexSHA256) != 64 || a.Size >= n {
		t.Fatalf("artifact %+v", a)
	}
	obj, err := h.store.Stat(ctxFor(t, 5*time.Second), "b/full.frames")
	if err != nil || obj.Size != a.Size || obj.SHA256 != a.SHA256 || obj.Metadata["engine"] != "postgresql" {
		t.Fatalf("stored %+v %v (artifact %+v)", obj, err, a)
	}
	if r.Stages["upload"] < 0 || len(r.Stages) < 3 {
		t.Fatalf("stages %v", r.Stages)
	}
	// The plaintext never reached storage.
	stored, err := os.ReadFile(h.objectFile("b/full.frames"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(stored, []byte("INSERT INTO")) {
		t.Fatal("the sealed artifact holds plaintext")
	}

	// Back through sha256sum: frames checked and decoded on the guest.
	in := func(f *guestv1.FrameSpec) guestv1.StdinSpec {
		return guestv1.StdinSpec{Mode: guestv1.StdinStorage, Storage: &guestv1.StorageRef{Key: "b/full.frames", Frames: f}}
	}
	withIndex := spec()
	withIndex.IndexSHA256 = a.IndexSHA256
	back := h.run(guestv1.ExecRequest{Tool: "sha256sum", Stdin: in(withIndex), Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
	mustOK(t, "sha256sum from storage", back)
	if got := strings.Fields(string(back.Stdout)); len(got) == 0 || got[0] != genSum(n, 11) || back.StdinBytes != n {
		t.Fatalf("sha256sum said %q after %d bytes", back.Stdout, back.StdinBytes)
	}
	if _, ok := back.Stages["download"]; !ok {
		t.Fatalf("stages %v", back.Stages)
	}

	// The wrong key, another artifact's id, or another index: refused before the tool sees a byte.
	wrongKey := spec()
	wrongKey.Key = newKey(t)
	wrongID := spec()
	wrongID.ArtifactID = "backup-2"
	wrongIndex := spec()
	wrongIndex.IndexSHA256 = strings.Repeat("0", 64)
	for name, c := range map[string]struct {
		f    *guestv1.FrameSpec
		code errs.Code
	}{
		"wrong key":   {wrongKey, errs.Unauthorized},
		"wrong id":    {wrongID, errs.Corrupt},
		"wrong index": {wrongIndex, errs.Corrupt},
	} {
		req, marker := h.markerTool(guestv1.StdoutSpec{Mode: guestv1.StdoutDiscard}, in(c.f))
		res := h.run(req, nil)
		if res.Error == nil || res.Error.Code != c.code {
			t.Errorf("%s: want %s, got %+v", name, c.code, res.Error)
			continue
		}
		// The index is checked at the end: the tool may have started, but its input never ended normally.
		if name != "wrong index" {
			if _, err := os.Stat(marker); err == nil {
				t.Errorf("%s: the tool ran", name)
			}
		} else if res.ExitCode != -1 || res.Signal != "killed" {
			t.Errorf("%s: the tool was not killed before the end of its input: %+v", name, res)
		}
		_ = os.Remove(marker)
		if strings.Contains(res.Error.Message, string(key)) {
			t.Errorf("%s: the error shows the data key", name)
		}
	}
}

func TestStorageTamperedArtifactIsCorrupt(t *testing.T) {
	h := newHarness(t, nil)
	const n = 6 << 20 // stored ~2 MiB: more than the stream window, so frames arrive before storage's final check
	spec := &guestv1.FrameSpec{Codec: "zstd", FrameSize: 128 << 10, ArtifactID: "a1"}
	r := h.run(guestv1.ExecRequest{Tool: "datagen", Args: datagenArgs(n, 3),
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: "t/a1", Frames: spec}}}, nil)
	mustOK(t, "write", r)
	f := h.objectFile("t/a1")
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40 // a byte in a middle frame
	if err := os.WriteFile(f, b, 0o640); err != nil {
		t.Fatal(err)
	}
	res := h.run(guestv1.ExecRequest{Tool: "sha256sum", Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture},
		Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStorage, Storage: &guestv1.StorageRef{Key: "t/a1", Frames: &guestv1.FrameSpec{ArtifactID: "a1"}}}}, nil)
	// The bad frame fails the read (the tool is killed before its stdin ends), or, when the whole object
	// fitted in the stream's window, the storage service's own digest check fails it before the tool starts.
	if res.Error == nil || res.Error.Code != errs.Corrupt || res.ExitCode != -1 || len(res.Stdout) != 0 ||
		(res.Signal != "killed" && res.StdinBytes != 0) {
		t.Fatalf("tampered: %+v", res)
	}
	if res.StdinBytes >= n {
		t.Fatalf("the tool got %d bytes: all of them, bad frame included", res.StdinBytes)
	}
	// Raw (unframed) bytes are checked by the storage service against the SHA-256 it recorded: the exec
	// fails as corrupt and the tool never sees the end of its stdin (it is killed, or never started).
	raw := genBytes(1<<20, 4)
	if _, err := h.store.Put(ctxFor(t, 10*time.Second), "t/raw", bytes.NewReader(raw), nil); err != nil {
		t.Fatal(err)
	}
	f = h.objectFile("t/raw")
	b, _ = os.ReadFile(f)
	b[1000] ^= 1
	_ = os.WriteFile(f, b, 0o640)
	res = h.run(guestv1.ExecRequest{Tool: "sha256sum", Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture},
		Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStorage, Storage: &guestv1.StorageRef{Key: "t/raw"}}}, nil)
	if res.Error == nil || res.Error.Code != errs.Corrupt || res.ExitCode != -1 || len(res.Stdout) != 0 {
		t.Fatalf("tampered raw: %+v", res)
	}
}

func TestStorageFailedExecLeavesNoArtifact(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxFor(t, 30*time.Second)
	out := func(key string, f *guestv1.FrameSpec) guestv1.StdoutSpec {
		return guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: key, Frames: f}}
	}
	// A tool that writes a lot and then fails.
	r := h.run(guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", "head -c 3000000 /dev/zero; exit 1"},
		Stdout: out("f/failed", &guestv1.FrameSpec{ArtifactID: "f1"})}, nil)
	if r.ExitCode != 1 || r.Artifact != nil || r.StdoutBytes != 3000000 {
		t.Fatalf("failed tool: %+v", r)
	}
	_, err := h.store.Stat(ctx, "f/failed")
	wantErrCode(t, "artifact of a failed tool", err, errs.NotFound)
	// A cancelled one (raw), over an existing object: the old object stays as it was.
	old := []byte("the previous good backup")
	if _, err := h.store.Put(ctx, "f/keep", bytes.NewReader(old), nil); err != nil {
		t.Fatal(err)
	}
	st, err := h.gc.Exec(ctx, guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", "head -c 100000 /dev/zero; sleep 300"}, Stdout: out("f/keep", nil)})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "output", 5*time.Second, func() bool {
		w, err := h.gc.WaitOnce(ctx, st.ExecID, 10*time.Millisecond)
		return err == nil && w.StdoutBytes > 0
	})
	if _, err := h.gc.Cancel(ctx, st.ExecID); err != nil {
		t.Fatal(err)
	}
	r, err = h.gc.Wait(ctx, st.ExecID, nil)
	if err != nil || r.Error == nil || r.Error.Code != errs.Cancelled || r.Artifact != nil {
		t.Fatalf("cancelled: %+v %v", r, err)
	}
	var got bytes.Buffer
	if _, err := h.store.Get(ctx, "f/keep", 0, 0, &got, nil); err != nil || !bytes.Equal(got.Bytes(), old) {
		t.Fatalf("the old object changed: %q %v", got.Bytes(), err)
	}
	if ents, _ := os.ReadDir(filepath.Join(h.storeFS, "tmp")); len(ents) != 0 {
		t.Fatalf("partial uploads left in the store: %v", ents)
	}
}

func TestStorageRefusalsRunNothing(t *testing.T) {
	h := newHarness(t, nil)
	// A missing artifact for stdin.
	req, marker := h.markerTool(guestv1.StdoutSpec{}, guestv1.StdinSpec{Mode: guestv1.StdinStorage, Storage: &guestv1.StorageRef{Key: "no/such"}})
	r := h.run(req, nil)
	if r.Error == nil || r.Error.Code != errs.NotFound || r.ExitCode != -1 {
		t.Fatalf("missing artifact: %+v", r)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the tool ran although its input was missing")
	}
	// A put the storage service refuses (metadata it does not take).
	req, marker = h.markerTool(guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: "x/y", Meta: map[string]string{"bad key!": "v"}}}, guestv1.StdinSpec{})
	r = h.run(req, nil)
	if r.Error == nil || r.Error.Code != errs.BadRequest {
		t.Fatalf("refused put: %+v", r)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the tool ran although its output was refused")
	}
}

func TestStorageRawAndBandwidthLimit(t *testing.T) {
	h := newHarness(t, nil)
	data := genBytes(1<<20, 9)
	begin := time.Now()
	r := h.run(guestv1.ExecRequest{Tool: "cat", Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStream}, BandwidthLimit: 1 << 20,
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: "raw/one"}}}, bytes.NewReader(data))
	took := time.Since(begin)
	mustOK(t, "raw put", r)
	if r.Artifact == nil || r.Artifact.Size != int64(len(data)) || r.Artifact.SHA256 != sumOf(data) || r.Artifact.Frames != 0 {
		t.Fatalf("raw artifact %+v", r.Artifact)
	}
	// 1 MiB at 1 MiB/s with a 256 KiB burst: at least 0.75 s.
	if took < 700*time.Millisecond || took > 10*time.Second {
		t.Fatalf("1 MiB at 1 MiB/s took %s", took)
	}
	var got bytes.Buffer
	if _, err := h.store.Get(ctxFor(t, 10*time.Second), "raw/one", 0, 0, &got, nil); err != nil || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("raw object differs: %v", err)
	}
	// Raw from storage to a caller's stream, limited the same way.
	begin = time.Now()
	var out bytes.Buffer
	r, err := h.gc.RunToWriter(ctxFor(t, 30*time.Second), guestv1.ExecRequest{Tool: "cat", BandwidthLimit: 2 << 20,
		Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStorage, Storage: &guestv1.StorageRef{Key: "raw/one"}}}, nil, &out)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "raw get", r)
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatal("raw get differs")
	}
	// 1 MiB at 2 MiB/s with a 512 KiB burst: at least 0.25 s.
	if took := time.Since(begin); took < 220*time.Millisecond {
		t.Fatalf("1 MiB at 2 MiB/s took only %s", took)
	}
}
