// Package extract unpacks a tar archive (optionally zstd- or gzip-compressed) under a file root, all or
// nothing: entries go into a temp dir beside the destination, through an os.Root opened on that temp dir,
// and the temp dir replaces the destination only after the whole archive was read (and its stream
// verified to the end). Absolute names, "..", links that point out, and device files fail the whole
// extract, and nothing is moved.
package extract

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"troveng.dev/agent/internal/files"
	"troveng.dev/agent/internal/osuser"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// Options of one extract.
type Options struct {
	Replace    bool
	Owner      string // "" keeps root
	Decompress string // "", "zstd", "gzip"
	// OnBytes, if set, sees the count of archive bytes read so far (progress).
	OnBytes func(n int64)
}

// DefaultDirMode is the destination's mode when neither the archive ("./") nor an existing destination
// says otherwise: private, as engines want their data dirs.
const DefaultDirMode = 0o700

// Validate checks the options that can be checked before any byte arrives.
func Validate(roots *files.Roots, dest string, o Options) (files.Path, error) {
	p, err := roots.Parse(dest)
	if err != nil {
		return files.Path{}, err
	}
	if p.IsRoot() {
		return files.Path{}, errs.BadRequestf("extract: the destination must be a directory inside %s, not the root itself", p.Root)
	}
	switch o.Decompress {
	case "", "zstd", "gzip":
	default:
		return files.Path{}, errs.BadRequestf("extract: decompress %q is not one of zstd, gzip (or empty)", o.Decompress)
	}
	if o.Owner != "" {
		if _, err := osuser.Lookup(o.Owner); err != nil {
			return files.Path{}, err
		}
	}
	root := roots.Root(p.Root)
	if fi, err := root.Stat(p.Rel); err == nil {
		if !fi.IsDir() {
			return files.Path{}, errs.Conflictf("extract: %s exists and is not a directory", p.Full)
		}
		if !o.Replace {
			if empty, err := isEmpty(root, p.Rel); err != nil {
				return files.Path{}, files.FSError(err, p, "extract")
			} else if !empty {
				return files.Path{}, errs.Conflictf("extract: %s is not empty; set replace to swap it for the archive's content", p.Full)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return files.Path{}, files.FSError(err, p, "extract")
	}
	return p, nil
}

func isEmpty(root *os.Root, rel string) (bool, error) {
	d, err := root.Open(rel)
	if err != nil {
		return false, err
	}
	defer func() { _ = d.Close() }()
	names, err := d.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return len(names) == 0, err
}

// ctxReader stops reading when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
	n   int64
	on  func(int64)
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, errs.Wrap(errs.CodeOf(err), context.Cause(c.ctx), "extract")
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.on != nil && n > 0 {
		c.on(c.n)
	}
	return n, err
}

// Extract reads the archive from src into dest (checked by Validate). src is read to its end (so a
// stream's trailer is verified) before anything moves.
func Extract(ctx context.Context, roots *files.Roots, dest files.Path, src io.Reader, o Options) (guestv1.ExtractResult, error) {
	var owner osuser.Identity
	if o.Owner != "" {
		var err error
		if owner, err = osuser.Lookup(o.Owner); err != nil {
			return guestv1.ExtractResult{}, err
		}
	}
	root := roots.Root(dest.Root)
	parent := path.Dir(dest.Rel)
	base := path.Base(dest.Rel)
	if parent != "." {
		if err := root.MkdirAll(parent, 0o755); err != nil {
			return guestv1.ExtractResult{}, files.FSError(err, dest, "extract")
		}
	}
	cleanLeftovers(root, parent, base)
	tmp := path.Join(parent, "."+base+".extract-"+ids.New())
	if err := root.Mkdir(tmp, 0o700); err != nil {
		return guestv1.ExtractResult{}, files.FSError(err, dest, "extract")
	}
	keep := false
	defer func() {
		if !keep {
			_ = root.RemoveAll(tmp)
		}
	}()
	sub, err := root.OpenRoot(tmp)
	if err != nil {
		return guestv1.ExtractResult{}, files.FSError(err, dest, "extract")
	}
	defer func() { _ = sub.Close() }()

	in := &ctxReader{ctx: ctx, r: src, on: o.OnBytes}
	var r io.Reader = in
	switch o.Decompress {
	case "zstd":
		zr, err := zstd.NewReader(in, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(128<<20))
		if err != nil {
			return guestv1.ExtractResult{}, errs.Wrap(errs.Internal, err, "zstd")
		}
		defer zr.Close()
		r = zr
	case "gzip":
		gr, err := gzip.NewReader(in)
		if err != nil {
			return guestv1.ExtractResult{}, archiveError(err, "the gzip header")
		}
		defer func() { _ = gr.Close() }()
		r = gr
	}
	x := &extractor{sub: sub, owner: owner, dest: dest}
	if err := x.run(tar.NewReader(r)); err != nil {
		return guestv1.ExtractResult{}, err
	}
	// The rest of the input (tar padding, a compressor's end, the stream's trailer) is read and verified.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return guestv1.ExtractResult{}, archiveError(err, "the end of the archive")
	}
	if r != io.Reader(in) {
		if _, err := io.Copy(io.Discard, in); err != nil {
			return guestv1.ExtractResult{}, archiveError(err, "the end of the input")
		}
	}
	if err := x.finish(); err != nil {
		return guestv1.ExtractResult{}, err
	}

	// Mode and owner of the new directory: the archive's "./" entry, else the destination's, else private.
	mode := fs.FileMode(DefaultDirMode)
	existed := false
	if fi, err := root.Lstat(dest.Rel); err == nil {
		existed = true
		mode = fi.Mode().Perm()
		if !fi.IsDir() {
			return guestv1.ExtractResult{}, errs.Conflictf("extract: %s is no longer a directory", dest.Full)
		}
		if !o.Replace {
			if empty, err := isEmpty(root, dest.Rel); err != nil || !empty {
				return guestv1.ExtractResult{}, errs.Conflictf("extract: %s is no longer empty; nothing was moved", dest.Full)
			}
		}
	}
	if x.rootMode != nil {
		mode = *x.rootMode
	}
	if err := root.Chmod(tmp, mode); err != nil {
		return guestv1.ExtractResult{}, files.FSError(err, dest, "extract")
	}
	if o.Owner != "" && osuser.CanSwitch() {
		if err := root.Lchown(tmp, owner.UID, owner.GID); err != nil {
			return guestv1.ExtractResult{}, files.FSError(err, dest, "extract")
		}
	}
	files.SyncDir(root, tmp)

	// Swap: the old destination steps aside, the new one takes its name, the old one goes.
	old := ""
	if existed {
		old = path.Join(parent, "."+base+".old-"+ids.New())
		if err := root.Rename(dest.Rel, old); err != nil {
			return guestv1.ExtractResult{}, files.FSError(err, dest, "extract")
		}
	}
	if err := root.Rename(tmp, dest.Rel); err != nil {
		if old != "" {
			_ = root.Rename(old, dest.Rel)
		}
		return guestv1.ExtractResult{}, files.FSError(err, dest, "extract")
	}
	keep = true
	files.SyncDir(root, parent)
	if old != "" {
		_ = root.RemoveAll(old)
	}
	return guestv1.ExtractResult{Path: dest.Full, Entries: x.entries, Bytes: x.bytes}, nil
}

// cleanLeftovers removes temp and old dirs a crashed extract of the same destination left behind.
func cleanLeftovers(root *os.Root, parent, base string) {
	d, err := root.Open(parent)
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	_ = d.Close()
	for _, n := range names {
		if strings.HasPrefix(n, "."+base+".extract-") || strings.HasPrefix(n, "."+base+".old-") {
			_ = root.RemoveAll(path.Join(parent, n))
		}
	}
}

func archiveError(err error, what string) error {
	if c := errs.CodeOf(err); c != errs.Internal {
		return err // the stream's or the context's own coded error
	}
	return errs.Wrap(errs.BadRequest, err, "extract: cannot read %s", what)
}

type dirMode struct {
	name string
	mode fs.FileMode
	mt   time.Time
}

type extractor struct {
	sub      *os.Root
	owner    osuser.Identity
	dest     files.Path
	entries  int
	bytes    int64
	dirs     []dirMode    // applied at the end (a read-only dir must not block its own content)
	rootMode *fs.FileMode // the archive's "./" entry
}

// name checks an entry name and returns it cleaned, relative to the archive root ("." for the root).
func entryName(n string) (string, error) {
	show := printable(n)
	if n == "" || strings.IndexByte(n, 0) >= 0 {
		return "", errs.BadRequestf("extract: an entry has an empty name or a NUL byte")
	}
	if strings.HasPrefix(n, "/") {
		return "", errs.BadRequestf("extract: entry %q has an absolute name; refused", show)
	}
	for _, seg := range strings.Split(n, "/") {
		if seg == ".." {
			return "", errs.BadRequestf("extract: entry %q has a \"..\" segment; refused", show)
		}
	}
	if strings.ContainsRune(n, '\\') {
		return "", errs.BadRequestf("extract: entry %q contains a backslash; refused", show)
	}
	return path.Clean(n), nil
}

func (x *extractor) run(tr *tar.Reader) error {
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return archiveError(err, "the tar archive")
		}
		if err := x.entry(tr, h); err != nil {
			return err
		}
	}
}

func (x *extractor) escape(err error, name, op string) error {
	if files.IsEscape(err) {
		return errs.BadRequestf("extract: entry %q leads out of the destination through a symlink; refused", printable(name))
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return errs.Wrap(errs.Internal, err, "extract: %s %q", op, printable(name))
}

func (x *extractor) entry(tr *tar.Reader, h *tar.Header) error {
	if h.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := entryName(h.Name)
	if err != nil {
		return err
	}
	x.entries++
	mode := fs.FileMode(h.Mode).Perm() // no setuid, setgid or sticky bits from an archive
	switch h.Typeflag {
	case tar.TypeDir:
		if name == "." {
			x.rootMode = &mode
			return nil
		}
		if err := x.sub.MkdirAll(name, impliedDirMode); err != nil {
			return x.escape(err, h.Name, "create directory")
		}
		if fi, err := x.sub.Lstat(name); err != nil || !fi.IsDir() {
			return errs.BadRequestf("extract: directory entry %q collides with a non-directory entry; refused", printable(h.Name))
		}
		x.dirs = append(x.dirs, dirMode{name, mode, h.ModTime})
		return nil
	case tar.TypeReg: // (archive/tar reports the old TypeRegA as TypeReg)
		if name == "." {
			return errs.BadRequestf("extract: a file entry names the archive root; refused")
		}
		if err := x.parent(name); err != nil {
			return err
		}
		if fi, err := x.sub.Lstat(name); err == nil {
			if !fi.Mode().IsRegular() {
				return errs.BadRequestf("extract: entry %q would replace a %s of the same archive; refused", printable(h.Name), kind(fi))
			}
			if err := x.sub.Remove(name); err != nil {
				return x.escape(err, h.Name, "replace")
			}
		}
		f, err := x.sub.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return x.escape(err, h.Name, "create")
		}
		n, cerr := io.Copy(f, tr)
		if cerr == nil {
			cerr = f.Chmod(mode)
		}
		if cerr == nil {
			cerr = f.Sync()
		}
		if err := f.Close(); cerr == nil {
			cerr = err
		}
		if cerr != nil {
			return archiveError(cerr, "entry "+printable(h.Name))
		}
		x.bytes += n
		_ = x.sub.Chtimes(name, h.ModTime, h.ModTime)
		return nil
	case tar.TypeSymlink:
		if name == "." {
			return errs.BadRequestf("extract: a symlink entry names the archive root; refused")
		}
		if err := checkLinkTarget(name, h.Linkname); err != nil {
			return err
		}
		if err := x.parent(name); err != nil {
			return err
		}
		if _, err := x.sub.Lstat(name); err == nil {
			return errs.BadRequestf("extract: symlink entry %q names an existing entry; refused", printable(h.Name))
		}
		if err := x.sub.Symlink(h.Linkname, name); err != nil {
			return x.escape(err, h.Name, "symlink")
		}
		return nil
	case tar.TypeLink:
		target, err := entryName(h.Linkname)
		if err != nil {
			return errs.BadRequestf("extract: hard link %q: target %s", printable(h.Name), errs.From(err).Message)
		}
		if name == "." || target == "." {
			return errs.BadRequestf("extract: hard link %q involves the archive root; refused", printable(h.Name))
		}
		fi, err := x.sub.Lstat(target)
		if err != nil || !fi.Mode().IsRegular() {
			return errs.BadRequestf("extract: hard link %q points at %q, which is not a file extracted before it; refused", printable(h.Name), printable(h.Linkname))
		}
		if err := x.parent(name); err != nil {
			return err
		}
		if err := x.sub.Link(target, name); err != nil {
			return x.escape(err, h.Name, "hard link")
		}
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return errs.BadRequestf("extract: entry %q is a device or FIFO; archives may hold files, directories and links only", printable(h.Name))
	default:
		return errs.BadRequestf("extract: entry %q has tar type %q, which the agent does not extract", printable(h.Name), h.Typeflag)
	}
}

// parent makes an entry's parent directories (inside the sub-root: a symlinked parent that leads out is
// refused by the root).
func (x *extractor) parent(name string) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	if err := x.sub.MkdirAll(dir, impliedDirMode); err != nil {
		return x.escape(err, name, "create the directory of")
	}
	if fi, err := x.sub.Stat(dir); err != nil || !fi.IsDir() {
		if err != nil && files.IsEscape(err) {
			return x.escape(err, name, "open the directory of")
		}
		return errs.BadRequestf("extract: the directory of entry %q is not a directory in the archive; refused", printable(name))
	}
	return nil
}

// checkLinkTarget refuses symlink targets that are absolute or, resolved from the link's own directory,
// leave the archive.
func checkLinkTarget(name, target string) error {
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return errs.BadRequestf("extract: symlink %q has an empty target or a NUL byte; refused", printable(name))
	}
	if strings.HasPrefix(target, "/") {
		return errs.BadRequestf("extract: symlink %q points to the absolute path %q; refused", printable(name), printable(target))
	}
	resolved := path.Join(path.Dir(name), target)
	if resolved == ".." || strings.HasPrefix(resolved, "../") {
		return errs.BadRequestf("extract: symlink %q points out of the destination (%q); refused", printable(name), printable(target))
	}
	return nil
}

// impliedDirMode is the mode of a directory the archive has no entry for.
const impliedDirMode = 0o750

// finish gives every entry to the owner, then applies directory modes and times, deepest first.
func (x *extractor) finish() error {
	if x.owner.Name != "" && osuser.CanSwitch() {
		err := fs.WalkDir(x.sub.FS(), ".", func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if p == "." {
				return nil
			}
			return x.sub.Lchown(p, x.owner.UID, x.owner.GID)
		})
		if err != nil {
			return x.escape(err, "(tree)", "chown")
		}
	}
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		if err := x.sub.Chmod(d.name, d.mode|0o700); err != nil { // the owner keeps access to its own tree
			return x.escape(err, d.name, "chmod")
		}
		_ = x.sub.Chtimes(d.name, d.mt, d.mt)
	}
	return nil
}

func kind(fi fs.FileInfo) string {
	switch {
	case fi.IsDir():
		return "directory"
	case fi.Mode()&fs.ModeSymlink != 0:
		return "symlink"
	}
	return "non-regular file"
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
