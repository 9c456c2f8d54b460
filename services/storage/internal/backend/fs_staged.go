package backend

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// Staged uploads of the fs strategy live in tmp/ as two files per upload: <token>.staged holds the bytes
// appended so far and <token>.stage their state (key, metadata, committed size and the SHA-256 state of
// the committed bytes, so completing needs no read-back). An append truncates the data file to the
// committed size, writes, fsyncs, then replaces the state file atomically: a crash at any point leaves the
// previous committed state, and bytes past it are cut by the next append. Every call on an upload holds an
// exclusive flock on its data file, so replicas sharing the directory take turns. Completing appends the
// object record and renames the data file into objects/, the same commit as Put's. Abandoned uploads go
// with the other old temporary files (a day after their last append).

const (
	fsStagedData  = ".staged"
	fsStagedState = ".stage"
	fsLockPoll    = 20 * time.Millisecond
)

var _ Staged = (*fsBackend)(nil)

// fsStage is the state file's JSON.
type fsStage struct {
	Key       string            `json:"key"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	Committed int64             `json:"committed"`
	Hash      []byte            `json:"hash"` // sha256 state of the committed bytes (MarshalBinary)
}

func stagedPaths(token string) (data, state string) {
	return path.Join(fsTmpDir, token+fsStagedData), path.Join(fsTmpDir, token+fsStagedState)
}

func (b *fsBackend) BeginStaged(_ context.Context, key string, meta map[string]string) (StagedUpload, error) {
	if err := ids.ValidateKey(key); err != nil {
		return StagedUpload{}, err
	}
	if _, err := b.objectPath(key); err != nil {
		return StagedUpload{}, err
	}
	if err := ValidateMetadata(meta); err != nil {
		return StagedUpload{}, err
	}
	token := ids.New()
	dataPath, _ := stagedPaths(token)
	f, err := b.root.OpenFile(dataPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return StagedUpload{}, b.ioError(err, "staged upload of %q: create", key)
	}
	defer func() { _ = f.Close() }()
	st := fsStage{Key: key, Metadata: copyMetadata(meta)}
	if st.Hash, err = marshalHash(sha256.New()); err != nil {
		_ = b.root.Remove(dataPath)
		return StagedUpload{}, err
	}
	if err := b.saveStage(token, st); err != nil {
		_ = b.root.Remove(dataPath)
		return StagedUpload{}, b.ioError(err, "staged upload of %q: write state", key)
	}
	return StagedUpload{Key: key, Token: token}, nil
}

func (b *fsBackend) StagedStatus(ctx context.Context, key, token string) (StagedUpload, error) {
	f, st, err := b.lockStaged(ctx, key, token)
	if err != nil {
		return StagedUpload{}, err
	}
	_ = f.Close()
	return StagedUpload{Key: key, Token: token, Committed: st.Committed}, nil
}

func (b *fsBackend) AppendStaged(ctx context.Context, key, token string, offset int64, r io.Reader) (StagedUpload, error) {
	if r == nil {
		return StagedUpload{}, errs.BadRequestf("append to %q: no data reader", key)
	}
	f, st, err := b.lockStaged(ctx, key, token)
	if err != nil {
		return StagedUpload{}, err
	}
	defer func() { _ = f.Close() }()
	if offset != st.Committed {
		return StagedUpload{}, errs.New(errs.Conflict, "staged upload of %q holds %d bytes; an append must start there, not at %d", key, st.Committed, offset)
	}
	h, err := unmarshalHash(st.Hash)
	if err != nil {
		return StagedUpload{}, errs.Wrap(errs.Corrupt, err, "staged upload of %q: its hash state is unreadable", key)
	}
	// Bytes past the committed size are an append that failed (or a crash before its state was saved).
	if err := f.Truncate(st.Committed); err != nil {
		return StagedUpload{}, b.ioError(err, "append to %q: truncate", key)
	}
	if _, err := f.Seek(st.Committed, io.SeekStart); err != nil {
		return StagedUpload{}, b.ioError(err, "append to %q: seek", key)
	}
	bufp := copyBufPool.Get().(*[]byte)
	n, err := io.CopyBuffer(io.MultiWriter(f, h), sourceReader{ctx, r}, *bufp)
	copyBufPool.Put(bufp)
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		_ = f.Truncate(st.Committed)
		var re *readerError
		if !errors.As(err, &re) && ctx.Err() == nil {
			err = b.ioError(err, "append to %q: write", key)
		}
		return StagedUpload{}, putError(ctx, key, err)
	}
	st.Committed += n
	if st.Hash, err = marshalHash(h); err != nil {
		return StagedUpload{}, err
	}
	if err := b.saveStage(token, st); err != nil {
		return StagedUpload{}, b.ioError(err, "append to %q: write state", key)
	}
	return StagedUpload{Key: key, Token: token, Committed: st.Committed}, nil
}

func (b *fsBackend) CompleteStaged(ctx context.Context, key, token string, size int64, sum string) (ObjectInfo, error) {
	dst, err := b.objectPath(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	f, st, err := b.lockStaged(ctx, key, token)
	if err != nil {
		return ObjectInfo{}, err
	}
	closed := false
	defer func() {
		if !closed {
			_ = f.Close()
		}
	}()
	h, err := unmarshalHash(st.Hash)
	if err != nil {
		return ObjectInfo{}, errs.Wrap(errs.Corrupt, err, "staged upload of %q: its hash state is unreadable", key)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if st.Committed != size || got != sum {
		b.removeStaged(token)
		return ObjectInfo{}, errs.New(errs.Corrupt, "staged upload of %q holds %d bytes with SHA-256 %s, the writer sent %d bytes with %s; upload dropped", key, st.Committed, got, size, sum)
	}
	if err := f.Truncate(st.Committed); err != nil {
		return ObjectInfo{}, b.ioError(err, "complete %q: truncate", key)
	}
	rec := fsRecord{Key: key, Size: size, SHA256: got, Metadata: st.Metadata, Modified: time.Now().UTC()}
	trailer, err := rec.trailer()
	if err != nil {
		return ObjectInfo{}, err
	}
	if _, err := f.WriteAt(trailer, st.Committed); err != nil {
		return ObjectInfo{}, b.ioError(err, "complete %q: write record", key)
	}
	if err := f.Sync(); err != nil {
		return ObjectInfo{}, b.ioError(err, "complete %q: sync", key)
	}
	dataPath, statePath := stagedPaths(token)
	// The rename happens under the lock, so a concurrent complete or append finds the data file gone.
	if err := b.rename(dataPath, dst); err != nil {
		_ = f.Truncate(st.Committed)
		return ObjectInfo{}, b.ioError(err, "complete %q: commit", key)
	}
	closed = true
	_ = f.Close()
	_ = b.root.Remove(statePath)
	return rec.info(), nil
}

func (b *fsBackend) AbortStaged(ctx context.Context, key, token string) error {
	f, _, err := b.lockStaged(ctx, key, token)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	b.removeStaged(token)
	return nil
}

func (b *fsBackend) AbortStagedPrefix(ctx context.Context, prefix string) (int, error) {
	entries, err := fs.ReadDir(b.root.FS(), fsTmpDir)
	if err != nil {
		return 0, b.ioError(err, "list staged uploads")
	}
	n := 0
	for _, e := range entries {
		token, ok := strings.CutSuffix(e.Name(), fsStagedState)
		if !ok || ids.Validate("token", token) != nil {
			continue
		}
		st, err := b.loadStage(token)
		if err != nil || !strings.HasPrefix(st.Key, prefix) {
			continue
		}
		if err := b.AbortStaged(ctx, st.Key, token); err == nil {
			n++
		} else if !errs.Is(err, errs.NotFound) {
			return n, err
		}
	}
	return n, nil
}

// lockStaged opens the upload's data file, takes its lock (waiting while another call holds it) and reads
// its state. The lock goes with the returned file's Close.
func (b *fsBackend) lockStaged(ctx context.Context, key, token string) (*os.File, fsStage, error) {
	if err := ids.ValidateKey(key); err != nil {
		return nil, fsStage{}, err
	}
	if err := ids.Validate("staged upload", token); err != nil {
		return nil, fsStage{}, err
	}
	notFound := errs.NotFoundf("no staged upload %s of %q (completed, aborted, or dropped after a day without appends)", token, key)
	dataPath, _ := stagedPaths(token)
	f, err := b.root.OpenFile(dataPath, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fsStage{}, notFound
		}
		return nil, fsStage{}, b.ioError(err, "staged upload of %q: open", key)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fsStage{}, b.ioError(err, "staged upload of %q: lock", key)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fsStage{}, errs.Wrap(errs.CodeOfContext(ctx), context.Cause(ctx), "staged upload of %q: waiting for another call on it", key)
		case <-time.After(fsLockPoll):
		}
	}
	// The holder before us may have completed or aborted it: the name is gone (or a new file replaced it).
	if ci, err := b.root.Stat(dataPath); err != nil || !sameFile(f, ci) {
		_ = f.Close()
		return nil, fsStage{}, notFound
	}
	st, err := b.loadStage(token)
	if err != nil {
		_ = f.Close()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fsStage{}, notFound
		}
		return nil, fsStage{}, errs.Wrap(errs.Corrupt, err, "staged upload of %q: state unreadable", key)
	}
	if st.Key != key {
		_ = f.Close()
		return nil, fsStage{}, errs.BadRequestf("staged upload %s is of another key than %q", token, key)
	}
	return f, st, nil
}

func sameFile(f *os.File, other fs.FileInfo) bool {
	fi, err := f.Stat()
	return err == nil && os.SameFile(fi, other)
}

func (b *fsBackend) loadStage(token string) (fsStage, error) {
	_, statePath := stagedPaths(token)
	js, err := b.root.ReadFile(statePath)
	if err != nil {
		return fsStage{}, err
	}
	var st fsStage
	if err := json.Unmarshal(js, &st); err != nil {
		return fsStage{}, err
	}
	return st, nil
}

// saveStage replaces the state file atomically and durably.
func (b *fsBackend) saveStage(token string, st fsStage) error {
	js, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, statePath := stagedPaths(token)
	tmp := statePath + ".new"
	f, err := b.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(js)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = b.root.Rename(tmp, statePath)
	}
	if err != nil {
		_ = b.root.Remove(tmp)
		return err
	}
	return b.syncDir(fsTmpDir)
}

func (b *fsBackend) removeStaged(token string) {
	dataPath, statePath := stagedPaths(token)
	_ = b.root.Remove(dataPath)
	_ = b.root.Remove(statePath)
}

func marshalHash(h hash.Hash) ([]byte, error) {
	m, ok := h.(encoding.BinaryMarshaler)
	if !ok {
		return nil, errs.Internalf("sha256 state cannot be saved")
	}
	return m.MarshalBinary()
}

func unmarshalHash(state []byte) (hash.Hash, error) {
	h := sha256.New()
	u, ok := h.(encoding.BinaryUnmarshaler)
	if !ok {
		return nil, errs.Internalf("sha256 state cannot be restored")
	}
	if err := u.UnmarshalBinary(state); err != nil {
		return nil, err
	}
	return h, nil
}
