package backend

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// The fs strategy keeps objects in a directory tree on a local (or mounted) filesystem.
//
// Configuration keys:
//
//	root   directory holding the store (required; created if missing)
//
// Layout under root:
//
//	objects/  one file per object; key "a/b/c" is objects/da/db/fc: every directory segment gets a "d"
//	          prefix and the last segment an "f" prefix, so keys "a" and "a/b" can both exist (file "fa" next
//	          to directory "da"). A key segment may be at most 254 bytes (the filesystem's name limit).
//	tmp/      puts in progress (*.part) and staged uploads (*.staged, *.stage: fs_staged.go); a put's
//	          file is removed when it fails; any of them is removed at open when older than a day (left
//	          behind by a crash or an abandoned staged upload).
//
// An object file is the object's bytes followed by a trailer: the JSON record (key, size, sha256,
// metadata, modified), its length (4 bytes, big endian) and the magic "TROVEFS1". A put writes the whole
// file under tmp/, fsyncs it and renames it into objects/ (then fsyncs the directory): the data and its
// record become visible in one atomic step, and an overwrite replaces both at once. Every path is opened
// through an os.Root, so no key can reach outside root even through a planted symlink.

func init() { Register("fs", openFS) }

const (
	fsObjectsDir  = "objects"
	fsTmpDir      = "tmp"
	fsMagic       = "TROVEFS1"
	fsTrailerLen  = 4 + len(fsMagic)
	fsMaxRecord   = 64 << 10
	fsMaxSegment  = 254
	fsStaleTmpAge = 24 * time.Hour
)

type fsBackend struct {
	root *os.Root
	dir  string
}

// fsRecord is the trailer's JSON.
type fsRecord struct {
	Key      string            `json:"key"`
	Size     int64             `json:"size"`
	SHA256   string            `json:"sha256"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Modified time.Time         `json:"modified"`
}

func openFS(_ context.Context, values map[string]string) (Backend, error) {
	cfg, err := newConfig("fs", values, "root")
	if err != nil {
		return nil, err
	}
	dir, err := cfg.required("root")
	if err != nil {
		return nil, err
	}
	return NewFS(dir)
}

// NewFS opens (creating if needed) a filesystem store rooted at dir.
func NewFS(dir string) (Backend, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "fs strategy: create root directory %q", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "fs strategy: open root directory %q", dir)
	}
	for _, d := range []string{fsObjectsDir, fsTmpDir} {
		if err := root.Mkdir(d, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
			_ = root.Close()
			return nil, errs.Wrap(errs.Unavailable, err, "fs strategy: create %q under %q", d, dir)
		}
	}
	b := &fsBackend{root: root, dir: dir}
	b.removeStaleTmp()
	return b, nil
}

// removeStaleTmp removes temporary files a crashed process left behind. Only old ones: another process
// sharing the directory may be writing the young ones.
func (b *fsBackend) removeStaleTmp() {
	entries, err := fs.ReadDir(b.root.FS(), fsTmpDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > fsStaleTmpAge {
			_ = b.root.Remove(path.Join(fsTmpDir, e.Name()))
		}
	}
}

// objectPath maps a key to its file under root (see the layout above).
func (b *fsBackend) objectPath(key string) (string, error) {
	if err := ids.ValidateKey(key); err != nil {
		return "", err
	}
	segs := strings.Split(key, "/")
	parts := make([]string, 0, len(segs)+1)
	parts = append(parts, fsObjectsDir)
	for i, s := range segs {
		if len(s) > fsMaxSegment {
			return "", errs.BadRequestf("object key %q has a %d-byte segment; the fs strategy allows %d", key, len(s), fsMaxSegment)
		}
		if i == len(segs)-1 {
			parts = append(parts, "f"+s)
		} else {
			parts = append(parts, "d"+s)
		}
	}
	return strings.Join(parts, "/"), nil
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

func (b *fsBackend) Put(ctx context.Context, key string, r io.Reader, meta map[string]string) (ObjectInfo, error) {
	if err := checkPut(key, r, meta); err != nil {
		return ObjectInfo{}, err
	}
	dst, err := b.objectPath(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	tmp := path.Join(fsTmpDir, ids.New()+".part")
	f, err := b.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return ObjectInfo{}, b.ioError(err, "put %q: create temporary file", key)
	}
	committed := false
	defer func() {
		if !committed {
			_ = f.Close()
			_ = b.root.Remove(tmp)
		}
	}()

	h := sha256.New()
	bufp := copyBufPool.Get().(*[]byte)
	size, err := io.CopyBuffer(io.MultiWriter(f, h), sourceReader{ctx, r}, *bufp)
	copyBufPool.Put(bufp)
	if err != nil {
		var re *readerError
		if !errors.As(err, &re) && ctx.Err() == nil {
			err = b.ioError(err, "put %q: write", key)
		}
		return ObjectInfo{}, putError(ctx, key, err)
	}
	rec := fsRecord{Key: key, Size: size, SHA256: hex.EncodeToString(h.Sum(nil)), Metadata: copyMetadata(meta), Modified: time.Now().UTC()}
	trailer, err := rec.trailer()
	if err != nil {
		return ObjectInfo{}, err
	}
	if _, err := f.Write(trailer); err != nil {
		return ObjectInfo{}, b.ioError(err, "put %q: write record", key)
	}
	if err := f.Sync(); err != nil {
		return ObjectInfo{}, b.ioError(err, "put %q: sync", key)
	}
	if err := f.Close(); err != nil {
		return ObjectInfo{}, b.ioError(err, "put %q: close", key)
	}
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, putError(ctx, key, err)
	}
	if err := b.rename(tmp, dst); err != nil {
		return ObjectInfo{}, b.ioError(err, "put %q: commit", key)
	}
	committed = true
	return rec.info(), nil
}

// rename moves a finished temporary file to dst, creating parent directories, and makes the result durable
// (fsync of every directory whose entries changed). A concurrent Delete may remove an emptied parent
// directory between our mkdir and rename; then we create it again.
func (b *fsBackend) rename(tmp, dst string) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var created []string
		created, err = b.mkdirs(path.Dir(dst))
		if err != nil {
			return err
		}
		err = b.root.Rename(tmp, dst)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if err := b.syncDir(path.Dir(dst)); err != nil {
			return err
		}
		for _, d := range created {
			if err := b.syncDir(path.Dir(d)); err != nil {
				return err
			}
		}
		return nil
	}
	return err
}

// mkdirs creates the missing directories of dir (one at a time) and returns the ones it created.
func (b *fsBackend) mkdirs(dir string) ([]string, error) {
	var created []string
	parts := strings.Split(dir, "/")
	for i := range parts {
		d := strings.Join(parts[:i+1], "/")
		err := b.root.Mkdir(d, 0o750)
		switch {
		case err == nil:
			created = append(created, d)
		case errors.Is(err, fs.ErrExist):
		default:
			return nil, err
		}
	}
	return created, nil
}

func (b *fsBackend) syncDir(dir string) error {
	d, err := b.root.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	return d.Sync()
}

// open opens the object file of key and reads its record.
func (b *fsBackend) open(key string) (*os.File, fsRecord, error) {
	p, err := b.objectPath(key)
	if err != nil {
		return nil, fsRecord{}, err
	}
	f, err := b.root.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil, fsRecord{}, errs.NotFoundf("object %q not found", key)
		}
		return nil, fsRecord{}, b.ioError(err, "open %q", key)
	}
	rec, err := readTrailer(f, key)
	if err != nil {
		_ = f.Close()
		return nil, fsRecord{}, err
	}
	return f, rec, nil
}

func readTrailer(f *os.File, key string) (fsRecord, error) {
	fi, err := f.Stat()
	if err != nil {
		return fsRecord{}, errs.Wrap(errs.Unavailable, err, "stat %q", key)
	}
	if !fi.Mode().IsRegular() {
		return fsRecord{}, errs.NotFoundf("object %q not found", key)
	}
	total := fi.Size()
	if total < int64(fsTrailerLen) {
		return fsRecord{}, errs.New(errs.Corrupt, "object file of %q is too short to hold its record", key)
	}
	var tail [fsTrailerLen]byte
	if _, err := f.ReadAt(tail[:], total-int64(fsTrailerLen)); err != nil {
		return fsRecord{}, errs.Wrap(errs.Unavailable, err, "read record of %q", key)
	}
	if string(tail[4:]) != fsMagic {
		return fsRecord{}, errs.New(errs.Corrupt, "object file of %q has no record trailer", key)
	}
	n := int64(binary.BigEndian.Uint32(tail[:4]))
	if n > fsMaxRecord || n > total-int64(fsTrailerLen) {
		return fsRecord{}, errs.New(errs.Corrupt, "object file of %q has a record length of %d bytes", key, n)
	}
	js := make([]byte, n)
	if _, err := f.ReadAt(js, total-int64(fsTrailerLen)-n); err != nil {
		return fsRecord{}, errs.Wrap(errs.Unavailable, err, "read record of %q", key)
	}
	var rec fsRecord
	if err := json.Unmarshal(js, &rec); err != nil {
		return fsRecord{}, errs.Wrap(errs.Corrupt, err, "record of %q", key)
	}
	if rec.Key != key || rec.Size != total-int64(fsTrailerLen)-n {
		return fsRecord{}, errs.New(errs.Corrupt, "record of %q names key %q and %d bytes; the file holds %d", key, rec.Key, rec.Size, total-int64(fsTrailerLen)-n)
	}
	return rec, nil
}

// trailer is the record as it ends an object file.
func (r fsRecord) trailer() ([]byte, error) {
	js, err := json.Marshal(r)
	if err != nil {
		return nil, errs.Wrap(errs.Internal, err, "put %q: encode record", r.Key)
	}
	t := binary.BigEndian.AppendUint32(js, uint32(len(js)))
	return append(t, fsMagic...), nil
}

func (r fsRecord) info() ObjectInfo {
	return ObjectInfo{Key: r.Key, Size: r.Size, SHA256: r.SHA256, Metadata: copyMetadata(r.Metadata), Modified: r.Modified}
}

func (b *fsBackend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, ObjectInfo, error) {
	f, rec, err := b.open(key)
	if err != nil {
		return nil, ObjectInfo{}, err
	}
	n, err := resolveRange(key, rec.Size, offset, length)
	if err != nil {
		_ = f.Close()
		return nil, ObjectInfo{}, err
	}
	return &fsReader{ctx: ctx, key: key, r: io.NewSectionReader(f, offset, n), f: f}, rec.info(), nil
}

// fsReader reads an object's byte range; it stops when the Get's context ends.
type fsReader struct {
	ctx context.Context
	key string
	r   *io.SectionReader
	f   *os.File
}

func (r *fsReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, errs.Wrap(errs.CodeOf(err), err, "read %q", r.key)
	}
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = errs.Wrap(errs.Unavailable, err, "read %q", r.key)
	}
	return n, err
}

func (r *fsReader) Close() error { return r.f.Close() }

func (b *fsBackend) Stat(_ context.Context, key string) (ObjectInfo, error) {
	f, rec, err := b.open(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	_ = f.Close()
	return rec.info(), nil
}

func (b *fsBackend) Delete(_ context.Context, key string) error {
	p, err := b.objectPath(key)
	if err != nil {
		return err
	}
	if fi, err := b.root.Lstat(p); err != nil || !fi.Mode().IsRegular() {
		if err == nil || errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return errs.NotFoundf("object %q not found", key)
		}
		return b.ioError(err, "delete %q", key)
	}
	if err := b.root.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errs.NotFoundf("object %q not found", key)
		}
		return b.ioError(err, "delete %q", key)
	}
	if err := b.syncDir(path.Dir(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return b.ioError(err, "delete %q: sync directory", key)
	}
	// Remove directories the delete left empty (Remove fails on a non-empty one, which ends the climb).
	for d := path.Dir(p); d != fsObjectsDir; d = path.Dir(d) {
		if b.root.Remove(d) != nil {
			break
		}
	}
	return nil
}

func (b *fsBackend) List(ctx context.Context, prefix, startAfter string, limit int) ([]ObjectInfo, string, error) {
	if err := ids.ValidatePrefix(prefix); err != nil {
		return nil, "", err
	}
	limit = normalizeLimit(limit)
	l := fsLister{b: b, ctx: ctx, prefix: prefix, startAfter: startAfter, limit: limit}
	if err := l.walk(fsObjectsDir, ""); err != nil {
		return nil, "", err
	}
	next := ""
	if l.more && len(l.out) > 0 {
		next = l.out[len(l.out)-1].Key
	}
	return l.out, next, nil
}

type fsLister struct {
	b                  *fsBackend
	ctx                context.Context
	prefix, startAfter string
	limit              int
	out                []ObjectInfo
	more               bool
}

type fsEntry struct {
	name string // on disk
	key  string // the key (file) or key prefix ending in '/' (directory) it stands for
	dir  bool
}

// walk visits dir (standing for keys starting with keyPrefix) in key order. Sorting a directory's entries
// by the key string they stand for (a directory's ends in '/') gives the global key order, because no key
// segment contains '/'. Subtrees that cannot hold a match are skipped without being read.
func (l *fsLister) walk(dir, keyPrefix string) error {
	if err := l.ctx.Err(); err != nil {
		return errs.Wrap(errs.CodeOf(err), err, "list")
	}
	d, err := l.b.root.Open(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed by a concurrent delete
		}
		return l.b.ioError(err, "list %q", keyPrefix)
	}
	dirents, err := d.ReadDir(-1)
	_ = d.Close()
	if err != nil {
		return l.b.ioError(err, "list %q", keyPrefix)
	}
	entries := make([]fsEntry, 0, len(dirents))
	for _, de := range dirents {
		// Only what the store itself creates: symlinks and other odd files are not objects.
		n := de.Name()
		switch {
		case strings.HasPrefix(n, "d") && de.Type() == fs.ModeDir:
			entries = append(entries, fsEntry{name: n, key: keyPrefix + n[1:] + "/", dir: true})
		case strings.HasPrefix(n, "f") && de.Type().IsRegular():
			entries = append(entries, fsEntry{name: n, key: keyPrefix + n[1:]})
		}
	}
	slices.SortFunc(entries, func(a, b fsEntry) int { return strings.Compare(a.key, b.key) })
	for _, e := range entries {
		if e.dir {
			inPrefix := strings.HasPrefix(e.key, l.prefix) || strings.HasPrefix(l.prefix, e.key)
			// Every key under e.key starts with it; if e.key sorts before startAfter and is not its prefix,
			// all of them do too.
			afterStart := e.key > l.startAfter || strings.HasPrefix(l.startAfter, e.key)
			if !inPrefix || !afterStart {
				continue
			}
			if err := l.walk(dir+"/"+e.name, e.key); err != nil {
				return err
			}
			if l.more {
				return nil
			}
			continue
		}
		if !strings.HasPrefix(e.key, l.prefix) || e.key <= l.startAfter {
			continue
		}
		f, rec, err := l.b.open(e.key)
		if err != nil {
			if c := errs.CodeOf(err); c == errs.NotFound || c == errs.Corrupt || c == errs.BadRequest {
				continue // deleted meanwhile, or not a valid object: not visible
			}
			return err
		}
		_ = f.Close()
		if len(l.out) == l.limit {
			l.more = true
			return nil
		}
		l.out = append(l.out, rec.info())
	}
	return nil
}

func (b *fsBackend) Ping(context.Context) error {
	if _, err := b.root.Stat(fsObjectsDir); err != nil {
		return b.ioError(err, "ping")
	}
	return nil
}

func (b *fsBackend) Close() error { return b.root.Close() }

// ioError codes a filesystem failure. The disk is the dependency, so failures are Unavailable, with the
// common reasons spelled out; a file where a directory should be means someone edited the tree by hand.
func (b *fsBackend) ioError(err error, format string, args ...any) error {
	msg := "fs strategy at " + b.dir + ": " + format
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return errs.Wrap(errs.Unavailable, err, msg+" (no space left)", args...)
	case errors.Is(err, fs.ErrPermission):
		return errs.Wrap(errs.Unavailable, err, msg+" (permission denied)", args...)
	case strings.Contains(err.Error(), "path escapes from parent"): // os.Root's error, not exported
		return errs.Wrap(errs.Conflict, err, msg+" (a symlink in the store points outside it; the store was changed outside the service)", args...)
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR):
		return errs.Wrap(errs.Conflict, err, msg+" (a file is in the way of a directory; the store was changed outside the service)", args...)
	}
	return errs.Wrap(errs.Unavailable, err, msg, args...)
}
