package agent

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

func TestFilesUnderRoots(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxFor(t, 30*time.Second)
	fi, err := h.gc.WriteFile(ctx, guestv1.FileWriteRequest{Path: "data/pg/standby.signal", Data: []byte("x=1\n"), Mode: 0o600})
	if err != nil {
		t.Fatal(err)
	}
	if fi.Path != "data/pg/standby.signal" || fi.Size != 4 || fi.Mode != 0o600 {
		t.Fatalf("written %+v", fi)
	}
	got, err := h.gc.ReadFile(ctx, "data/pg/standby.signal")
	if err != nil || string(got.Data) != "x=1\n" {
		t.Fatalf("read %q %v", got.Data, err)
	}
	if st, err := os.Stat(filepath.Join(h.data, "pg", "standby.signal")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("on disk: %v %v", st, err)
	}
	// Rewriting replaces atomically and leaves no temp file.
	if _, err := h.gc.WriteFile(ctx, guestv1.FileWriteRequest{Path: "data/pg/standby.signal", Data: []byte("x=2\n")}); err != nil {
		t.Fatal(err)
	}
	list, err := h.gc.List(ctx, "data/pg")
	if err != nil || len(list.Entries) != 1 || list.Entries[0].Path != "data/pg/standby.signal" || list.Entries[0].Mode != 0o640 {
		t.Fatalf("list %+v %v", list, err)
	}
	root, err := h.gc.List(ctx, "data")
	if err != nil || len(root.Entries) != 1 || !root.Entries[0].Dir {
		t.Fatalf("list root %+v %v", root, err)
	}
	if st, err := h.gc.Stat(ctx, "data/pg"); err != nil || !st.Dir {
		t.Fatalf("stat dir %+v %v", st, err)
	}
	// The config root, and an owner.
	if u, err := user.Lookup("postgres"); err == nil {
		if _, err := h.gc.WriteFile(ctx, guestv1.FileWriteRequest{Path: "config/postgresql.conf", Data: []byte("work_mem = '8MB'\n"), Owner: "postgres"}); err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(filepath.Join(h.config, "postgresql.conf"))
		if uid := strconv.Itoa(int(st.Sys().(*syscall.Stat_t).Uid)); uid != u.Uid {
			t.Fatalf("owner uid %s, want postgres %s", uid, u.Uid)
		}
	}
	_, err = h.gc.WriteFile(ctx, guestv1.FileWriteRequest{Path: "config/x", Data: []byte("x"), Owner: "nobody"})
	wantErrCode(t, "owner outside the engine users", err, errs.BadRequest)
	// Remove: a file, then a tree (not without recursive).
	if _, err := h.gc.WriteFile(ctx, guestv1.FileWriteRequest{Path: "data/pg/sub/f", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	_, err = h.gc.Remove(ctx, guestv1.FileRemoveRequest{Path: "data/pg"})
	wantErrCode(t, "remove a full dir", err, errs.Conflict)
	if _, err := h.gc.Remove(ctx, guestv1.FileRemoveRequest{Path: "data/pg/standby.signal"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.gc.Remove(ctx, guestv1.FileRemoveRequest{Path: "data/pg", Recursive: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(h.data, "pg")); !os.IsNotExist(err) {
		t.Fatal("recursive remove left the tree")
	}
	_, err = h.gc.Stat(ctx, "data/pg")
	wantErrCode(t, "stat removed", err, errs.NotFound)
	_, err = h.gc.Remove(ctx, guestv1.FileRemoveRequest{Path: "data", Recursive: true})
	wantErrCode(t, "remove a root", err, errs.BadRequest)
	// Large files are read with exec cat, not file_read.
	big := filepath.Join(h.data, "big")
	if err := os.WriteFile(big, make([]byte, guestv1.MaxInlineData+1), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = h.gc.ReadFile(ctx, "data/big")
	if !errs.Is(err, errs.BadRequest) || !strings.Contains(err.Error(), "exec cat") {
		t.Fatalf("big read: %v", err)
	}
}

func TestFilePathEscapesAreRefused(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxFor(t, 30*time.Second)
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Symlinks planted in the data root (by a tool, an archive, anyone): one to a dir outside, one to a file
	// outside, one that stays inside.
	if err := os.Symlink(outside, filepath.Join(h.data, "out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(h.data, "secret")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../"+filepath.Base(outside), filepath.Join(h.data, "rel")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.data, "inside"), []byte("in"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("inside", filepath.Join(h.data, "alias")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"data/../etc/passwd", "/etc/passwd", "data/./x", "data//x", "data\\x", "etc/passwd", "", "data/x\x01",
		"data/out/secret", "data/secret", "data/rel/secret", "data/out"} {
		_, rerr := h.gc.ReadFile(ctx, p)
		_, werr := h.gc.WriteFile(ctx, guestv1.FileWriteRequest{Path: p + "-new", Data: []byte("pwned")})
		_, serr := h.gc.Stat(ctx, p)
		_, lerr := h.gc.List(ctx, p)
		for _, e := range []error{rerr, serr, lerr} {
			if !errs.Is(e, errs.BadRequest) {
				t.Errorf("%q: want bad_request, got %v", p, e)
			}
		}
		if p != "data/secret" && p != "data/out" && !errs.Is(werr, errs.BadRequest) { // "data/secret-new" is a plain new file
			t.Errorf("write %q: want bad_request, got %v", p+"-new", werr)
		}
	}
	_, err := h.gc.WriteFile(ctx, guestv1.FileWriteRequest{Path: "data/out/planted", Data: []byte("pwned")})
	wantErrCode(t, "write through a symlink out", err, errs.BadRequest)
	_, err = h.gc.Remove(ctx, guestv1.FileRemoveRequest{Path: "data/out/secret"})
	wantErrCode(t, "remove through a symlink out", err, errs.BadRequest)
	if b, err := os.ReadFile(secret); err != nil || string(b) != "outside" {
		t.Fatal("the file outside the root changed")
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Fatalf("something was written outside the root: %v", ents)
	}
	// A symlink that stays inside works; removing a symlink removes the link only.
	if got, err := h.gc.ReadFile(ctx, "data/alias"); err != nil || string(got.Data) != "in" {
		t.Fatalf("inside symlink: %q %v", got.Data, err)
	}
	if _, err := h.gc.Remove(ctx, guestv1.FileRemoveRequest{Path: "data/out", Recursive: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(secret); err != nil {
		t.Fatal("removing a symlink removed its target")
	}
}
