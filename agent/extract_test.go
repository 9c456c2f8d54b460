package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

// entry is one tar member of a test archive.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func tarOf(t *testing.T, ents ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
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

func (h *harness) extract(req guestv1.ExtractRequest, archive []byte) (guestv1.ExecResult, error) {
	h.t.Helper()
	return h.gc.Extract(ctxFor(h.t, 30*time.Second), req, bytes.NewReader(archive))
}

// leftovers lists what an extract left in dir besides want.
func leftovers(t *testing.T, dir string, want ...string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		keep := false
		for _, w := range want {
			keep = keep || e.Name() == w
		}
		if !keep {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestExtractAllOrNothing(t *testing.T) {
	h := newHarness(t, nil)
	archive := tarOf(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o700},
		entry{name: "PG_VERSION", body: "15\n"},
		entry{name: "base/", typ: tar.TypeDir},
		entry{name: "base/1/data", body: strings.Repeat("row\n", 1000), mode: 0o600},
		entry{name: "base/link", typ: tar.TypeSymlink, link: "1/data"},
		entry{name: "hard", typ: tar.TypeLink, link: "PG_VERSION"},
	)
	r, err := h.extract(guestv1.ExtractRequest{Path: "data/postgresql", Source: guestv1.SourceStream}, archive)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "extract", r)
	if r.Extracted == nil || r.Extracted.Entries != 6 || r.Extracted.Bytes != 3+4000 || r.Extracted.Path != "data/postgresql" || r.Tool != "file_extract" {
		t.Fatalf("extracted %+v", r.Extracted)
	}
	dest := filepath.Join(h.data, "postgresql")
	if b, err := os.ReadFile(filepath.Join(dest, "base", "link")); err != nil || len(b) != 4000 {
		t.Fatalf("symlink inside: %v", err)
	}
	if st, _ := os.Stat(dest); st.Mode().Perm() != 0o700 {
		t.Fatalf("dest mode %v, want the archive's ./ 0700", st.Mode())
	}
	if st, _ := os.Stat(filepath.Join(dest, "base", "1", "data")); st.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v", st.Mode())
	}
	// A second extract without replace refuses a non-empty destination; with replace it swaps it whole.
	_, err = h.extract(guestv1.ExtractRequest{Path: "data/postgresql", Source: guestv1.SourceStream}, archive)
	wantErrCode(t, "extract onto content", err, errs.Conflict)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(tarOf(t, entry{name: "only", body: "new"}))
	_ = zw.Close()
	r, err = h.extract(guestv1.ExtractRequest{Path: "data/postgresql", Source: guestv1.SourceStream, Replace: true, Decompress: "gzip"}, gz.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "replace", r)
	if left := leftovers(t, dest, "only"); len(left) != 0 {
		t.Fatalf("replace kept old entries: %v", left)
	}
	if left := leftovers(t, h.data, "postgresql"); len(left) != 0 {
		t.Fatalf("temp dirs left beside the destination: %v", left)
	}
	// zstd, with an owner for every entry.
	var zs bytes.Buffer
	enc, _ := zstd.NewWriter(&zs)
	_, _ = enc.Write(tarOf(t, entry{name: "d/", typ: tar.TypeDir}, entry{name: "d/f", body: "z"}))
	_ = enc.Close()
	owner := ""
	if _, err := user.Lookup("postgres"); err == nil {
		owner = "postgres"
	}
	r, err = h.extract(guestv1.ExtractRequest{Path: "config/z", Source: guestv1.SourceStream, Decompress: "zstd", Owner: owner}, zs.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "zstd", r)
	if owner != "" {
		u, _ := user.Lookup(owner)
		for _, p := range []string{"z", "z/d", "z/d/f"} {
			st, _ := os.Lstat(filepath.Join(h.config, p))
			if strconv.Itoa(int(st.Sys().(*syscall.Stat_t).Uid)) != u.Uid {
				t.Fatalf("%s is not owned by %s", p, owner)
			}
		}
	}
	// From storage (raw): the archive put as an object, then extracted by key.
	if _, err := h.store.Put(ctxFor(t, 10*time.Second), "tars/one.tar", bytes.NewReader(archive), nil); err != nil {
		t.Fatal(err)
	}
	r, err = h.gc.Extract(ctxFor(t, 30*time.Second), guestv1.ExtractRequest{Path: "data/fromstore", Source: guestv1.SourceStorage,
		Storage: &guestv1.StorageRef{Key: "tars/one.tar"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "extract from storage", r)
	if b, err := os.ReadFile(filepath.Join(h.data, "fromstore", "PG_VERSION")); err != nil || string(b) != "15\n" {
		t.Fatalf("from storage: %q %v", b, err)
	}
	r, err = h.gc.Extract(ctxFor(t, 30*time.Second), guestv1.ExtractRequest{Path: "data/nothing", Source: guestv1.SourceStorage,
		Storage: &guestv1.StorageRef{Key: "tars/missing.tar"}}, nil)
	if err != nil || r.Error == nil || r.Error.Code != errs.NotFound {
		t.Fatalf("missing artifact: %+v %v", r.Error, err)
	}
}

func TestExtractRefusalsWriteNothing(t *testing.T) {
	h := newHarness(t, nil)
	outside := t.TempDir()
	rel, err := filepath.Rel(filepath.Join(h.data, "dest"), outside)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		ents []entry
	}{
		{"absolute name", []entry{{name: "/etc/cron.d/evil", body: "x"}}},
		{"dot-dot name", []entry{{name: "ok", body: "1"}, {name: "a/../../evil", body: "x"}}},
		{"absolute symlink", []entry{{name: "l", typ: tar.TypeSymlink, link: outside}}},
		{"relative symlink out", []entry{{name: "l", typ: tar.TypeSymlink, link: rel}}},
		{"symlink then file through it", []entry{{name: "l", typ: tar.TypeSymlink, link: "../../x"}, {name: "l/evil", body: "x"}}},
		{"hard link out", []entry{{name: "h", typ: tar.TypeLink, link: "../../../etc/passwd"}}},
		{"hard link absolute", []entry{{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}}},
		{"hard link to a symlink", []entry{{name: "e", typ: tar.TypeSymlink, link: "x"}, {name: "h", typ: tar.TypeLink, link: "e"}}},
		{"device", []entry{{name: "null", typ: tar.TypeChar}}},
		{"fifo", []entry{{name: "p", typ: tar.TypeFifo}}},
		{"file over a symlink", []entry{{name: "l", typ: tar.TypeSymlink, link: "x"}, {name: "l", body: "x"}}},
	}
	for _, c := range cases {
		r, err := h.extract(guestv1.ExtractRequest{Path: "data/dest", Source: guestv1.SourceStream}, tarOf(t, c.ents...))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if r.Error == nil || r.Error.Code != errs.BadRequest || r.Extracted != nil {
			t.Errorf("%s: want a bad_request result, got %+v", c.name, r)
		}
		if left := leftovers(t, h.data); len(left) != 0 {
			t.Errorf("%s: written beside the destination: %v", c.name, left)
		}
		if left := leftovers(t, outside); len(left) != 0 {
			t.Errorf("%s: written outside: %v", c.name, left)
		}
	}
	// Each link looks harmless alone: "d" is the archive root itself, so "d/e" really sits at the root and
	// "../escaped" from there leaves the destination. The check by name lets it pass (from "d", it stays
	// inside); the os.Root the entries are written through refuses the file.
	escaped := filepath.Join(h.data, "escaped")
	if err := os.Mkdir(escaped, 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := h.extract(guestv1.ExtractRequest{Path: "data/dest", Source: guestv1.SourceStream}, tarOf(t,
		entry{name: "d", typ: tar.TypeSymlink, link: "."}, entry{name: "d/e", typ: tar.TypeSymlink, link: "../escaped"},
		entry{name: "e/evil", body: "x"}))
	if err != nil || r.Error == nil || r.Error.Code != errs.BadRequest || !strings.Contains(r.Error.Message, "through a symlink") {
		t.Fatalf("symlink chain: %+v %v", r.Error, err)
	}
	if left := leftovers(t, escaped); len(left) != 0 {
		t.Fatalf("symlink chain wrote outside the destination: %v", left)
	}
	if left := leftovers(t, h.data, "escaped"); len(left) != 0 {
		t.Fatalf("symlink chain left %v", left)
	}
	if err := os.Remove(escaped); err != nil {
		t.Fatal(err)
	}

	// Destination checks happen before any byte is read.
	for _, p := range []string{"data", "data/../x", "/tmp/x", "nowhere/x"} {
		_, err := h.extract(guestv1.ExtractRequest{Path: p, Source: guestv1.SourceStream}, nil)
		wantErrCode(t, "destination "+p, err, errs.BadRequest)
	}
	_, err = h.extract(guestv1.ExtractRequest{Path: "data/x", Source: "http"}, nil)
	wantErrCode(t, "unknown source", err, errs.BadRequest)
	_, err = h.extract(guestv1.ExtractRequest{Path: "data/x", Source: guestv1.SourceStream, Decompress: "xz"}, nil)
	wantErrCode(t, "unknown codec", err, errs.BadRequest)

	// A stream the caller cuts with an error half way leaves nothing.
	archive := tarOf(t, entry{name: "a", body: strings.Repeat("x", 200<<10)}, entry{name: "b", body: "y"})
	r, _ = h.gc.Extract(ctxFor(t, 30*time.Second), guestv1.ExtractRequest{Path: "data/dest", Source: guestv1.SourceStream},
		io.MultiReader(bytes.NewReader(archive[:100<<10]), failingReader{}))
	if r.Error == nil || r.Extracted != nil {
		t.Fatalf("cut stream: %+v", r)
	}
	if left := leftovers(t, h.data); len(left) != 0 {
		t.Fatalf("cut stream left %v", left)
	}
	// A truncated archive (valid stream, short tar) is refused too.
	r, err = h.extract(guestv1.ExtractRequest{Path: "data/dest", Source: guestv1.SourceStream}, archive[:100<<10])
	if err != nil || r.Error == nil || r.Error.Code != errs.BadRequest {
		t.Fatalf("truncated tar: %+v %v", r.Error, err)
	}
	if left := leftovers(t, h.data); len(left) != 0 {
		t.Fatalf("truncated tar left %v", left)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) {
	return 0, errs.Unavailablef("the caller's source broke")
}
