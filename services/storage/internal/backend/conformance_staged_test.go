package backend

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"troveng.dev/shared/errs"
)

// testStaged is the conformance of staged uploads, for the strategies that have them.
func testStaged(t *testing.T, st strategyUnderTest) {
	b, leftovers := st.open(t)
	sb, ok := b.(Staged)
	if !ok {
		t.Skipf("%s has no staged uploads", st.name)
	}
	ctx := t.Context()
	data := randomBytes(3<<20+123, 21)
	segs := [][]byte{data[:1<<20], data[1<<20 : 2<<20], data[2<<20:]}

	t.Run("RoundTrip", func(t *testing.T) {
		put(t, b, "s/obj", []byte("old"), nil)
		up, err := sb.BeginStaged(ctx, "s/obj", map[string]string{"engine": "redis"})
		if err != nil {
			t.Fatal(err)
		}
		var off int64
		for i, s := range segs {
			got, err := sb.AppendStaged(ctx, "s/obj", up.Token, off, bytes.NewReader(s))
			if err != nil {
				t.Fatalf("append %d: %v", i, err)
			}
			off += int64(len(s))
			if got.Committed != off {
				t.Fatalf("append %d: committed %d, want %d", i, got.Committed, off)
			}
			// Nothing new is visible until the upload completes: the old object stays.
			if old, _ := get(t, b, "s/obj", 0, -1); string(old) != "old" {
				t.Fatalf("mid-upload the key reads %d bytes, want the old object", len(old))
			}
		}
		if s, err := sb.StagedStatus(ctx, "s/obj", up.Token); err != nil || s.Committed != off {
			t.Fatalf("status: %+v %v", s, err)
		}
		info, err := sb.CompleteStaged(ctx, "s/obj", up.Token, int64(len(data)), sha(data))
		if err != nil {
			t.Fatal(err)
		}
		if info.Size != int64(len(data)) || info.SHA256 != sha(data) || info.Metadata["engine"] != "redis" {
			t.Fatalf("completed: %+v", info)
		}
		if got, gi := get(t, b, "s/obj", 0, -1); !bytes.Equal(got, data) || gi.SHA256 != sha(data) {
			t.Fatalf("read back %d bytes (sha %s)", len(got), gi.SHA256)
		}
		_, err = sb.StagedStatus(ctx, "s/obj", up.Token)
		wantCode(t, err, errs.NotFound, "status of a completed upload")
		_, err = sb.CompleteStaged(ctx, "s/obj", up.Token, int64(len(data)), sha(data))
		wantCode(t, err, errs.NotFound, "completing twice")
		if left := leftovers(); len(left) != 0 {
			t.Fatalf("a completed upload left %q", left)
		}
	})

	t.Run("BadAppends", func(t *testing.T) {
		up, err := sb.BeginStaged(ctx, "s/bad", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sb.AppendStaged(ctx, "s/bad", up.Token, 0, bytes.NewReader(segs[0])); err != nil {
			t.Fatal(err)
		}
		n := int64(len(segs[0]))
		// Not at the committed size: refused, in both directions.
		_, err = sb.AppendStaged(ctx, "s/bad", up.Token, 0, bytes.NewReader(segs[1]))
		wantCode(t, err, errs.Conflict, "append behind the committed size")
		_, err = sb.AppendStaged(ctx, "s/bad", up.Token, n+1, bytes.NewReader(segs[1]))
		wantCode(t, err, errs.Conflict, "append past the committed size")
		// A reader failing midway commits nothing of its bytes.
		_, err = sb.AppendStaged(ctx, "s/bad", up.Token, n, &failingReader{data: segs[1][:500<<10], err: errBoom})
		wantCode(t, err, errs.BadRequest, "append with a failing reader")
		if s, err := sb.StagedStatus(ctx, "s/bad", up.Token); err != nil || s.Committed != n {
			t.Fatalf("after a failed append: %+v %v, want %d committed", s, err, n)
		}
		// Another key, an unknown token, a token that is no id.
		_, err = sb.AppendStaged(ctx, "s/other", up.Token, n, bytes.NewReader(segs[1]))
		wantCode(t, err, errs.BadRequest, "append naming another key")
		_, err = sb.StagedStatus(ctx, "s/bad", "0123456789abcdef0123456789abcdef")
		wantCode(t, err, errs.NotFound, "unknown token")
		_, err = sb.StagedStatus(ctx, "s/bad", "../x")
		wantCode(t, err, errs.BadRequest, "token with a path")
		_, err = sb.BeginStaged(ctx, "../x", nil)
		wantCode(t, err, errs.BadRequest, "begin with a bad key")
		// The upload goes on after all of that.
		rest := data[n:]
		if _, err := sb.AppendStaged(ctx, "s/bad", up.Token, n, bytes.NewReader(rest)); err != nil {
			t.Fatal(err)
		}
		// A wrong checksum or size is corrupt and drops the upload; nothing is stored.
		_, err = sb.CompleteStaged(ctx, "s/bad", up.Token, int64(len(data)), sha(segs[0]))
		wantCode(t, err, errs.Corrupt, "complete with a wrong SHA-256")
		_, err = sb.StagedStatus(ctx, "s/bad", up.Token)
		wantCode(t, err, errs.NotFound, "status after a corrupt complete")
		_, err = b.Stat(ctx, "s/bad")
		wantCode(t, err, errs.NotFound, "stat after a corrupt complete")
		if left := leftovers(); len(left) != 0 {
			t.Fatalf("a dropped upload left %q", left)
		}
	})

	t.Run("Abort", func(t *testing.T) {
		var tokens []string
		for _, k := range []string{"p/1", "p/2", "q/1"} {
			up, err := sb.BeginStaged(ctx, k, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sb.AppendStaged(ctx, k, up.Token, 0, bytes.NewReader(segs[0])); err != nil {
				t.Fatal(err)
			}
			tokens = append(tokens, up.Token)
		}
		n, err := sb.AbortStagedPrefix(ctx, "p/")
		if err != nil || n != 2 {
			t.Fatalf("abort prefix p/: %d %v, want 2", n, err)
		}
		_, err = sb.StagedStatus(ctx, "p/1", tokens[0])
		wantCode(t, err, errs.NotFound, "status after abort by prefix")
		if s, err := sb.StagedStatus(ctx, "q/1", tokens[2]); err != nil || s.Committed != int64(len(segs[0])) {
			t.Fatalf("q/1 after aborting p/: %+v %v", s, err)
		}
		if err := sb.AbortStaged(ctx, "q/1", tokens[2]); err != nil {
			t.Fatal(err)
		}
		wantCode(t, sb.AbortStaged(ctx, "q/1", tokens[2]), errs.NotFound, "aborting twice")
		if left := leftovers(); len(left) != 0 {
			t.Fatalf("aborted uploads left %q", left)
		}
		if keys := listAll(t, b, ""); len(keys) != 1 || keys[0] != "s/obj" {
			t.Fatalf("objects: %q", keys)
		}
	})
}

// TestFSStagedSurvivesRestart: a staged upload outlives the backend that began it (a new one opens the same
// directory, as a restarted storage service does), and bytes an interrupted append left past the committed
// size (a crash between write and state) are cut by the next append.
func TestFSStagedSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	b1, err := NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := randomBytes(2<<20, 5)
	up, err := b1.(Staged).BeginStaged(t.Context(), "r/obj", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b1.(Staged).AppendStaged(t.Context(), "r/obj", up.Token, 0, bytes.NewReader(data[:1<<20])); err != nil {
		t.Fatal(err)
	}
	_ = b1.Close()
	// What a crash mid-append leaves: bytes in the data file beyond the committed state.
	f, err := os.OpenFile(filepath.Join(dir, fsTmpDir, up.Token+fsStagedData), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("half of a lost append")); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()

	b2, err := NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	sb := b2.(Staged)
	s, err := sb.StagedStatus(t.Context(), "r/obj", up.Token)
	if err != nil || s.Committed != 1<<20 {
		t.Fatalf("status after the restart: %+v %v", s, err)
	}
	if _, err := sb.AppendStaged(t.Context(), "r/obj", up.Token, s.Committed, bytes.NewReader(data[1<<20:])); err != nil {
		t.Fatal(err)
	}
	info, err := sb.CompleteStaged(t.Context(), "r/obj", up.Token, int64(len(data)), sha(data))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := get(t, b2, "r/obj", 0, -1); !bytes.Equal(got, data) || info.SHA256 != sha(data) {
		t.Fatal("the object completed after the restart differs from what was sent")
	}
}
