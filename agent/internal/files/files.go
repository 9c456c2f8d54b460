// Package files is the agent's access to the guest's file roots ("data" and "config"). Every path is
// "<root>/<relative path>", checked lexically (no "..", no absolute path, no control characters) and then
// opened through an os.Root, which refuses any symlink that leads out of the root. Writes are atomic.
package files

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"troveng.dev/agent/internal/osuser"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// MaxPathLen bounds a request path.
const MaxPathLen = 4096

// DefaultMode is the mode of a written file when the request gives none.
const DefaultMode = 0o640

// Roots are the named roots.
type Roots struct {
	names []string
	dirs  map[string]string   // name -> absolute directory
	roots map[string]*os.Root // name -> opened root
}

// Open opens (creating if needed) each named root directory.
func Open(dirs map[string]string) (*Roots, error) {
	r := &Roots{dirs: map[string]string{}, roots: map[string]*os.Root{}}
	for name, dir := range dirs {
		if !filepath.IsAbs(dir) {
			return nil, errs.BadRequestf("root %s: %q is not an absolute path", name, dir)
		}
		dir = filepath.Clean(dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "create root %s", name)
		}
		root, err := os.OpenRoot(dir)
		if err != nil {
			r.Close()
			return nil, errs.Wrap(errs.Unavailable, err, "open root %s", name)
		}
		r.names = append(r.names, name)
		r.dirs[name], r.roots[name] = dir, root
	}
	sort.Strings(r.names)
	return r, nil
}

// Close closes the roots.
func (r *Roots) Close() {
	for _, root := range r.roots {
		_ = root.Close()
	}
}

// Names are the root names, sorted.
func (r *Roots) Names() []string { return slices.Clone(r.names) }

// Dir is a root's absolute directory.
func (r *Roots) Dir(name string) string { return r.dirs[name] }

// Root is a root's os.Root.
func (r *Roots) Root(name string) *os.Root { return r.roots[name] }

// Path is a checked request path: the root it is under and the path relative to it ("." for the root).
type Path struct {
	Full string // as requested, e.g. "data/postgresql/PG_VERSION"
	Root string // "data"
	Rel  string // "postgresql/PG_VERSION"
}

// IsRoot reports whether the path names the root itself.
func (p Path) IsRoot() bool { return p.Rel == "." }

// Parse checks a request path and splits it into root and relative path. It refuses, as bad requests,
// empty and overlong paths, a leading "/", empty, "." and ".." segments, control characters, backslashes
// and unknown roots.
func (r *Roots) Parse(p string) (Path, error) {
	if p == "" {
		return Path{}, errs.BadRequestf("path is empty; paths start with a root: %s", strings.Join(r.names, " or "))
	}
	if len(p) > MaxPathLen {
		return Path{}, errs.BadRequestf("path is %d bytes long; the limit is %d", len(p), MaxPathLen)
	}
	if !utf8.ValidString(p) {
		return Path{}, errs.BadRequestf("path is not valid UTF-8")
	}
	show := printable(p)
	for _, c := range p {
		if c < 0x20 || c == 0x7f {
			return Path{}, errs.BadRequestf("path %q contains a control character", show)
		}
		if c == '\\' {
			return Path{}, errs.BadRequestf("path %q contains a backslash; separate with '/'", show)
		}
	}
	if strings.HasPrefix(p, "/") {
		return Path{}, errs.BadRequestf("path %q is absolute; paths are relative to a root (%s)", show, strings.Join(r.names, ", "))
	}
	segs := strings.Split(strings.TrimSuffix(p, "/"), "/")
	for _, s := range segs {
		switch s {
		case "":
			return Path{}, errs.BadRequestf("path %q has an empty segment", show)
		case ".", "..":
			return Path{}, errs.BadRequestf("path %q has a %q segment; paths may not leave or re-enter a root", show, s)
		}
	}
	if _, ok := r.roots[segs[0]]; !ok {
		return Path{}, errs.BadRequestf("path %q is not under a root; it must start with %s", show, strings.Join(r.names, " or "))
	}
	rel := "."
	if len(segs) > 1 {
		rel = strings.Join(segs[1:], "/")
	}
	return Path{Full: strings.Join(segs, "/"), Root: segs[0], Rel: rel}, nil
}

// Abs is the path's absolute host path (for a tool's working directory). Only for paths checked with a
// Stat through the root first (AbsDir).
func (r *Roots) Abs(p Path) string { return filepath.Join(r.dirs[p.Root], filepath.FromSlash(p.Rel)) }

// AbsDir checks that p is a directory reached inside its root (no symlink out) and returns its absolute path.
func (r *Roots) AbsDir(p Path) (string, error) {
	fi, err := r.roots[p.Root].Stat(p.Rel)
	if err != nil {
		return "", fsError(err, p, "stat")
	}
	if !fi.IsDir() {
		return "", errs.BadRequestf("%s is not a directory", p.Full)
	}
	return r.Abs(p), nil
}

// IsEscape reports an os.Root refusal of a path that leaves the root (through a symlink, typically).
func IsEscape(err error) bool {
	return err != nil && strings.Contains(err.Error(), "path escapes from parent")
}

// fsError turns a filesystem error on p into a coded error without the host's absolute paths.
func fsError(err error, p Path, op string) error {
	switch {
	case IsEscape(err):
		return errs.BadRequestf("%s: %s leads out of the %s root (through a symlink); refused", op, p.Full, p.Root)
	case errors.Is(err, fs.ErrNotExist):
		return errs.NotFoundf("%s: %s does not exist", op, p.Full)
	case errors.Is(err, fs.ErrExist):
		return errs.Conflictf("%s: %s already exists", op, p.Full)
	case errors.Is(err, fs.ErrPermission):
		return errs.Wrap(errs.Conflict, errors.Unwrap(err), "%s: %s", op, p.Full)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return errs.Wrap(errs.Internal, pe.Err, "%s: %s", op, p.Full)
	}
	return errs.Wrap(errs.Internal, err, "%s: %s", op, p.Full)
}

// FSError is fsError for other packages (extract).
func FSError(err error, p Path, op string) error { return fsError(err, p, op) }

func info(p string, fi fs.FileInfo) guestv1.FileInfo {
	return guestv1.FileInfo{Path: p, Size: fi.Size(), Mode: uint32(fi.Mode().Perm()), Dir: fi.IsDir(), ModTime: fi.ModTime().UTC()}
}

// Stat describes a path (following symlinks that stay in the root).
func (r *Roots) Stat(p Path) (guestv1.FileInfo, error) {
	fi, err := r.roots[p.Root].Stat(p.Rel)
	if err != nil {
		return guestv1.FileInfo{}, fsError(err, p, "stat")
	}
	return info(p.Full, fi), nil
}

// Read reads a file of at most guestv1.MaxInlineData bytes.
func (r *Roots) Read(p Path) (guestv1.FileData, error) {
	f, err := r.roots[p.Root].Open(p.Rel)
	if err != nil {
		return guestv1.FileData{}, fsError(err, p, "read")
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return guestv1.FileData{}, fsError(err, p, "read")
	}
	if !fi.Mode().IsRegular() {
		return guestv1.FileData{}, errs.BadRequestf("read: %s is not a regular file", p.Full)
	}
	if fi.Size() > guestv1.MaxInlineData {
		return guestv1.FileData{}, errs.BadRequestf("read: %s is %d bytes; file_read returns at most %d (stream a large file with exec cat)", p.Full, fi.Size(), guestv1.MaxInlineData)
	}
	data, err := io.ReadAll(io.LimitReader(f, guestv1.MaxInlineData+1))
	if err != nil {
		return guestv1.FileData{}, fsError(err, p, "read")
	}
	if len(data) > guestv1.MaxInlineData {
		return guestv1.FileData{}, errs.BadRequestf("read: %s grew past %d bytes while being read", p.Full, guestv1.MaxInlineData)
	}
	return guestv1.FileData{FileInfo: info(p.Full, fi), Data: data}, nil
}

// List lists a directory (not recursive); entries are described as they are (a symlink as a link).
func (r *Roots) List(p Path) (guestv1.FileList, error) {
	f, err := r.roots[p.Root].Open(p.Rel)
	if err != nil {
		return guestv1.FileList{}, fsError(err, p, "list")
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return guestv1.FileList{}, fsError(err, p, "list")
	}
	if !fi.IsDir() {
		return guestv1.FileList{}, errs.BadRequestf("list: %s is not a directory", p.Full)
	}
	ents, err := f.ReadDir(-1)
	if err != nil {
		return guestv1.FileList{}, fsError(err, p, "list")
	}
	out := guestv1.FileList{Path: p.Full, Entries: []guestv1.FileInfo{}}
	for _, e := range ents {
		ei, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out.Entries = append(out.Entries, info(p.Full+"/"+e.Name(), ei))
	}
	sort.Slice(out.Entries, func(i, j int) bool { return out.Entries[i].Path < out.Entries[j].Path })
	return out, nil
}

// Write writes data to p atomically: a temp file beside it, fsync, rename, fsync of the directory. Missing
// parent directories are created (0755). owner "" keeps root.
func (r *Roots) Write(p Path, data []byte, mode uint32, owner string) (guestv1.FileInfo, error) {
	if p.IsRoot() {
		return guestv1.FileInfo{}, errs.BadRequestf("write: %s is a root, not a file", p.Full)
	}
	if len(data) > guestv1.MaxInlineData {
		return guestv1.FileInfo{}, errs.BadRequestf("write: %d bytes; file_write takes at most %d (extract an archive for more)", len(data), guestv1.MaxInlineData)
	}
	if mode == 0 {
		mode = DefaultMode
	}
	if mode&^0o777 != 0 {
		return guestv1.FileInfo{}, errs.BadRequestf("write: mode %o has bits beyond 0777", mode)
	}
	var id osuser.Identity
	if owner != "" {
		var err error
		if id, err = osuser.Lookup(owner); err != nil {
			return guestv1.FileInfo{}, err
		}
	}
	root := r.roots[p.Root]
	dir := path.Dir(p.Rel)
	if dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return guestv1.FileInfo{}, fsError(err, p, "write")
		}
	}
	if fi, err := root.Lstat(p.Rel); err == nil && fi.IsDir() {
		return guestv1.FileInfo{}, errs.Conflictf("write: %s is a directory", p.Full)
	}
	tmp := path.Join(dir, "."+path.Base(p.Rel)+".trove-tmp-"+ids.New())
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(mode))
	if err != nil {
		return guestv1.FileInfo{}, fsError(err, p, "write")
	}
	done := false
	defer func() {
		if !done {
			_ = f.Close()
			_ = root.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return guestv1.FileInfo{}, fsError(err, p, "write")
	}
	if err := f.Chmod(fs.FileMode(mode)); err != nil { // the umask narrowed the create mode
		return guestv1.FileInfo{}, fsError(err, p, "write")
	}
	if owner != "" {
		if err := f.Chown(id.UID, id.GID); err != nil {
			return guestv1.FileInfo{}, fsError(err, p, "chown")
		}
	}
	if err := f.Sync(); err != nil {
		return guestv1.FileInfo{}, fsError(err, p, "write")
	}
	if err := f.Close(); err != nil {
		return guestv1.FileInfo{}, fsError(err, p, "write")
	}
	if err := root.Rename(tmp, p.Rel); err != nil {
		return guestv1.FileInfo{}, fsError(err, p, "write")
	}
	done = true
	SyncDir(root, dir)
	fi, err := root.Lstat(p.Rel)
	if err != nil {
		return guestv1.FileInfo{}, fsError(err, p, "write")
	}
	return info(p.Full, fi), nil
}

// SyncDir fsyncs a directory of root (best effort: a rename is durable once its directory is).
func SyncDir(root *os.Root, dir string) {
	if d, err := root.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

// Remove removes a file, a symlink, an empty directory or, with recursive, a directory tree. A root itself
// cannot be removed.
func (r *Roots) Remove(p Path, recursive bool) (guestv1.FileInfo, error) {
	if p.IsRoot() {
		return guestv1.FileInfo{}, errs.BadRequestf("remove: %s is a root; remove what is inside it instead", p.Full)
	}
	root := r.roots[p.Root]
	// Lstat of the parent through the root refuses a parent that is a symlink out; the entry itself is
	// looked at as it is (a symlink is removed, not followed).
	fi, err := root.Lstat(p.Rel)
	if err != nil {
		return guestv1.FileInfo{}, fsError(err, p, "remove")
	}
	if fi.IsDir() && recursive {
		err = root.RemoveAll(p.Rel)
	} else {
		err = root.Remove(p.Rel)
	}
	if err != nil {
		if fi.IsDir() && !recursive {
			return guestv1.FileInfo{}, errs.Conflictf("remove: %s is a directory that is not empty; set recursive to remove the tree", p.Full)
		}
		return guestv1.FileInfo{}, fsError(err, p, "remove")
	}
	SyncDir(root, path.Dir(p.Rel))
	return info(p.Full, fi), nil
}

func printable(s string) string {
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return strings.ToValidUTF8(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s), "?")
}
