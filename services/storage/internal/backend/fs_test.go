package backend

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"troveng.dev/shared/errs"
)

// A symlink planted inside the store cannot lead a key outside the root.
func TestFSSymlinkCannotEscapeRoot(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	b, err := NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(dir, fsObjectsDir, "fleak")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, fsObjectsDir, "dout")); err != nil {
		t.Fatal(err)
	}
	_, err = b.Stat(t.Context(), "leak")
	wantCode(t, err, errs.Conflict, "stat through a symlink out of the root")
	if _, _, err := b.Get(t.Context(), "out/secret", 0, -1); err == nil {
		t.Fatal("get followed a directory symlink out of the root")
	}
	if _, err := b.Put(t.Context(), "out/planted", bytes.NewReader([]byte("x")), nil); err == nil {
		t.Fatal("put wrote through a directory symlink out of the root")
	}
	if _, err := os.Stat(filepath.Join(outside, "fplanted")); err == nil {
		t.Fatal("a file appeared outside the root")
	}
	if keys := listAll(t, b, ""); len(keys) != 0 {
		t.Fatalf("list shows %q", keys)
	}
}

// A file without a valid record (truncated by hand, or copied in) is not visible, and a stale temporary
// file is removed at open.
func TestFSInvalidFilesAndStaleTmp(t *testing.T) {
	dir := t.TempDir()
	b, err := NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	put(t, b, "good", []byte("good data"), nil)
	put(t, b, "bad", []byte("bad data"), nil)
	bad := filepath.Join(dir, fsObjectsDir, "fbad")
	fi, _ := os.Stat(bad)
	if err := os.Truncate(bad, fi.Size()-3); err != nil {
		t.Fatal(err)
	}
	_, err = b.Stat(t.Context(), "bad")
	wantCode(t, err, errs.Corrupt, "stat of a truncated object")
	if keys := listAll(t, b, ""); len(keys) != 1 || keys[0] != "good" {
		t.Fatalf("list: %q", keys)
	}
	if err := b.Delete(t.Context(), "bad"); err != nil {
		t.Fatalf("a corrupt object must still be deletable: %v", err)
	}
	b.Close()

	stale := filepath.Join(dir, fsTmpDir, "old.part")
	young := filepath.Join(dir, fsTmpDir, "young.part")
	for _, p := range []string{stale, young} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * fsStaleTmpAge)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	b, err = NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatal("stale temporary file survived open")
	}
	if _, err := os.Stat(young); err != nil {
		t.Fatal("young temporary file (maybe another process's put) was removed")
	}
}

// Deleting the last object under a directory removes the emptied directories.
func TestFSDeleteRemovesEmptyDirs(t *testing.T) {
	dir := t.TempDir()
	b, err := NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	put(t, b, "x/y/z", []byte("1"), nil)
	if err := b.Delete(t.Context(), "x/y/z"); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, fsObjectsDir))
	if len(entries) != 0 {
		t.Fatalf("objects/ still holds %v", entries)
	}
	put(t, b, "x/y/z", []byte("2"), nil) // and the tree is rebuilt on the next put
	if got, _ := get(t, b, "x/y/z", 0, -1); string(got) != "2" {
		t.Fatalf("got %q", got)
	}
}
