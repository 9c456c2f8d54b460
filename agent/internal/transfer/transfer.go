// Package transfer moves a tool's bytes between the guest and the storage service: stdout into an
// artifact (framed: compressed, sealed and hashed with shared/frames; or raw) and an artifact back into a
// tool's stdin (frames verified one by one before a byte is handed on). A failed tool or transfer never
// leaves an artifact: the upload is aborted, and the storage service drops a put whose stream fails.
// BandwidthLimit caps the bytes that cross to or from storage. Data keys live only in the job's memory and
// are zeroed when it ends.
package transfer

import (
	"context"
	"io"
	"sync"
	"time"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
	"troveng.dev/shared/ratelimit"
	"troveng.dev/shared/storageclient"
)

// ValidateRef checks a storage reference before anything runs.
func ValidateRef(ref *guestv1.StorageRef, reading bool) error {
	if ref == nil {
		return errs.BadRequestf("storage mode needs a storage reference (key, frames)")
	}
	if err := ids.ValidateKey(ref.Key); err != nil {
		return err
	}
	if reading && len(ref.Meta) > 0 {
		return errs.BadRequestf("storage metadata is for writing; a read takes none")
	}
	if ref.Frames != nil {
		return validateFrames(ref.Frames, reading)
	}
	return nil
}

// validateFrames checks a frame spec (the key's length, never its bytes, goes into messages).
func validateFrames(f *guestv1.FrameSpec, reading bool) error {
	switch f.Codec {
	case "", "zstd", "gzip", "none":
	default:
		return errs.BadRequestf("frames: codec %q is not one of zstd, gzip, none", f.Codec)
	}
	if f.Key != nil && len(f.Key) != 32 {
		return errs.BadRequestf("frames: the data key is %d bytes; AES-256-GCM needs 32", len(f.Key))
	}
	if err := validateArtifactID(f.ArtifactID); err != nil {
		return err
	}
	if f.Level < 0 || f.FrameSize < 0 || f.Workers < 0 {
		return errs.BadRequestf("frames: level, frame size and workers must not be negative")
	}
	if f.Workers > 64 {
		return errs.BadRequestf("frames: %d workers; at most 64", f.Workers)
	}
	if f.FrameSize > 64<<20 {
		return errs.BadRequestf("frames: frame size %d is over 64 MiB", f.FrameSize)
	}
	if !reading && f.IndexSHA256 != "" {
		return errs.BadRequestf("frames: index_sha256 is checked when reading; a write reports it in the artifact")
	}
	return nil
}

// zero wipes a data key (the caller's copy in the decoded request).
func zero(b []byte) { clear(b) }

// timedWriter measures how long writes into the storage pipe were blocked (the "upload" stage).
type timedWriter struct {
	w       io.Writer
	blocked time.Duration
	n       int64
}

func (t *timedWriter) Write(p []byte) (int, error) {
	start := time.Now()
	n, err := t.w.Write(p)
	t.blocked += time.Since(start)
	t.n += int64(n)
	return n, err
}

// gateReader reports the first Read: the storage client reads the body only once the service has accepted
// the put, so the tool starts only then (a refused put executes nothing).
type gateReader struct {
	r    io.Reader
	once sync.Once
	open chan struct{}
}

func (g *gateReader) Read(p []byte) (int, error) {
	g.once.Do(func() { close(g.open) })
	return g.r.Read(p)
}

type putResult struct {
	obj     storagev1.Object
	resumes int
	err     error
}

// frameWriter is the framed encoder (frames.go).
type frameWriter interface {
	io.Writer
	Close() error
	Abort(err error)
	summary() frameSummary
}

// frameReader is the framed decoder (frames.go).
type frameReader interface {
	io.Reader
	Close() error
	stages() map[string]time.Duration
}

type frameSummary struct {
	Codec       string
	Frames      int
	RawSize     int64
	IndexSHA256 string
	Stages      map[string]time.Duration
}

// Upload is a tool's stdout on its way into an artifact.
type Upload struct {
	ref    guestv1.StorageRef
	pw     *io.PipeWriter
	timed  *timedWriter
	fw     frameWriter // nil: raw
	dst    io.Writer   // what the tool's bytes are written to
	result chan putResult
	raw    int64
	once   sync.Once
	ended  bool
}

// StartUpload asks the storage service for a put of ref and returns once it accepted (so a refusal fails
// before the tool runs). ref.Frames.Key is wiped when the upload ends.
//
// A put that is not direct is staged (storageclient.PutStaged) where the strategy allows: the storage
// service restarting or the link to it failing mid-upload costs the segment in flight, which is sent again
// once storage answers, while the tool keeps writing (it blocks once the two segments held are full).
// onResume, if not nil, hears of each resume. A direct put retries each part against the object store.
func StartUpload(ctx context.Context, sc *storageclient.Client, ref guestv1.StorageRef, limit *ratelimit.Limiter, onResume func(offset int64, cause error)) (*Upload, error) {
	pr, pw := io.Pipe()
	gate := &gateReader{r: pr, open: make(chan struct{})}
	u := &Upload{ref: ref, pw: pw, result: make(chan putResult, 1)}
	go func() {
		var obj storagev1.Object
		var resumes int
		var err error
		if ref.Direct {
			obj, err = sc.PutDirect(ctx, ref.Key, gate, ref.Meta)
		} else {
			obj, resumes, err = sc.PutStaged(ctx, ref.Key, gate, ref.Meta, storageclient.Staged{OnResume: onResume})
		}
		_ = pr.CloseWithError(errs.From(err)) // unblocks the writer when the put ended early
		u.result <- putResult{obj, resumes, err}
	}()
	select {
	case <-gate.open:
	case r := <-u.result:
		u.result <- r
		u.wipe()
		if r.err == nil {
			r.err = errs.Internalf("storage finished the put of %q before reading it", ref.Key)
		}
		return nil, r.err
	case <-ctx.Done():
		_ = pw.CloseWithError(errs.From(context.Cause(ctx)))
		<-u.result
		u.wipe()
		return nil, errs.Wrap(errs.CodeOf(ctx.Err()), context.Cause(ctx), "put %q", ref.Key)
	}
	u.timed = &timedWriter{w: ratelimit.Writer(ctx, pw, limit)}
	u.dst = u.timed
	if ref.Frames != nil {
		fw, err := newFrameWriter(u.timed, ref.Frames)
		if err != nil {
			u.Abort(err)
			return nil, err
		}
		u.fw, u.dst = fw, fw
	}
	return u, nil
}

// Write takes the tool's bytes.
func (u *Upload) Write(p []byte) (int, error) {
	n, err := u.dst.Write(p)
	u.raw += int64(n)
	if err != nil {
		return n, u.putError(err)
	}
	return n, nil
}

// putError prefers the storage side's own error to the pipe's.
func (u *Upload) putError(err error) error {
	select {
	case r := <-u.result:
		u.result <- r
		if r.err != nil {
			return r.err
		}
	default:
	}
	return errs.From(err)
}

// Commit finishes the artifact after the tool succeeded: the frame index and footer are written, the put
// completes, and the artifact is described.
func (u *Upload) Commit() (*guestv1.Artifact, map[string]int64, error) {
	defer u.wipe()
	if u.fw != nil {
		if err := u.fw.Close(); err != nil {
			err = u.putError(err)
			_ = u.pw.CloseWithError(err)
			<-u.result
			return nil, nil, err
		}
	}
	_ = u.pw.Close()
	r := <-u.result
	u.ended = true
	if r.err != nil {
		return nil, nil, r.err
	}
	a := &guestv1.Artifact{Key: r.obj.Key, Size: r.obj.Size, SHA256: r.obj.SHA256, RawSize: u.raw, Resumes: r.resumes}
	stages := map[string]int64{}
	if u.fw != nil {
		s := u.fw.summary()
		a.Codec, a.Frames, a.IndexSHA256 = s.Codec, s.Frames, s.IndexSHA256
		if s.RawSize > 0 {
			a.RawSize = s.RawSize
		}
		for k, d := range s.Stages {
			stages[k] = d.Milliseconds()
		}
	}
	stages["upload"] = u.timed.blocked.Milliseconds()
	if a.Size != u.timed.n {
		return nil, nil, errs.New(errs.Corrupt, "storage recorded %d bytes for %q, the agent sent %d", a.Size, a.Key, u.timed.n)
	}
	return a, stages, nil
}

// Abort fails the put: the storage service drops the partial object.
func (u *Upload) Abort(err error) {
	defer u.wipe()
	if u.ended {
		return
	}
	u.ended = true
	if err == nil {
		err = errs.New(errs.Cancelled, "upload of %q abandoned", u.ref.Key)
	}
	// The pipe first: a frame write blocked on it returns, so the encoder's Abort does not wait on it.
	_ = u.pw.CloseWithError(errs.From(err))
	if u.fw != nil {
		u.fw.Abort(err)
	}
	<-u.result
}

func (u *Upload) wipe() {
	u.once.Do(func() {
		if u.ref.Frames != nil {
			zero(u.ref.Frames.Key)
		}
	})
}

// Download is an artifact on its way into a tool's stdin.
type Download struct {
	ref    guestv1.StorageRef
	pr     *io.PipeReader
	src    io.Reader
	fr     frameReader   // framed decoder (nil: raw)
	done   chan struct{} // the get returned; err is its error
	err    error
	cancel context.CancelFunc
	once   sync.Once
	wait   time.Duration
}

// firstWrite reports the first bytes (or the end) of a get, so the tool starts only once the artifact
// was found.
type firstWrite struct {
	w    io.Writer
	once sync.Once
	open chan struct{}
}

func (f *firstWrite) Write(p []byte) (int, error) {
	f.once.Do(func() { close(f.open) })
	return f.w.Write(p)
}

// StartDownload begins reading ref from storage and returns once the storage service started sending (a
// missing artifact fails before the tool runs). Read the bytes, then End.
//
// A framed artifact's transfer survives the storage service restarting (or the link to it failing)
// mid-way: the rest is fetched from the first byte not yet taken (storageclient.GetResumable), so the
// tool reading it never notices; onResume, if not nil, hears of each resume. Every frame is
// authenticated and the index hashed, so the spliced transfer is checked end to end. A raw artifact is
// not resumed: only a whole-object get is checked against its recorded SHA-256.
func StartDownload(ctx context.Context, sc *storageclient.Client, ref guestv1.StorageRef, limit *ratelimit.Limiter, onResume func(offset int64, cause error)) (*Download, error) {
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	fw := &firstWrite{w: pw, open: make(chan struct{})}
	d := &Download{ref: ref, pr: pr, done: make(chan struct{}), cancel: cancel}
	go func() {
		var err error
		w := ratelimit.Writer(ctx, fw, limit)
		switch {
		case ref.Frames != nil:
			_, _, err = sc.GetResumable(ctx, ref.Key, w, storageclient.Resume{Direct: ref.Direct, OnResume: onResume})
		case ref.Direct:
			_, err = sc.GetDirect(ctx, ref.Key, 0, 0, w)
		default:
			_, err = sc.Get(ctx, ref.Key, 0, 0, w, nil)
		}
		if err != nil {
			_ = pw.CloseWithError(errs.From(err))
		} else {
			_ = pw.Close()
		}
		d.err = err
		close(d.done)
	}()
	select {
	case <-fw.open:
	case <-d.done:
		// Ended before a byte came: refused, not found, or an empty artifact.
		if d.err != nil {
			err := d.err
			d.End(err)
			return nil, err
		}
	case <-ctx.Done():
		d.End(context.Cause(ctx))
		return nil, errs.Wrap(errs.CodeOf(ctx.Err()), context.Cause(ctx), "get %q", ref.Key)
	}
	d.src = &timedReader{r: pr, d: d}
	if ref.Frames != nil {
		fr, err := newFrameReader(d.src, ref.Frames)
		if err != nil {
			d.End(err)
			return nil, err
		}
		d.fr, d.src = fr, fr
	}
	return d, nil
}

type timedReader struct {
	r io.Reader
	d *Download
}

func (t *timedReader) Read(p []byte) (int, error) {
	start := time.Now()
	n, err := t.r.Read(p)
	t.d.wait += time.Since(start)
	return n, err
}

// Read returns verified bytes only; a frame that fails verification is errs.Corrupt. io.EOF comes only
// once the storage service finished the transfer with its own check of the whole object.
func (d *Download) Read(p []byte) (int, error) {
	n, err := d.src.Read(p)
	if err == io.EOF && d.fr != nil {
		// The framed artifact ended at its footer; the transfer must end there too.
		var one [1]byte
		m, rerr := io.ReadFull(d.pr, one[:])
		switch {
		case m > 0:
			return n, errs.New(errs.Corrupt, "artifact %q has data after its footer", d.ref.Key)
		case rerr != io.EOF:
			return n, d.readError(rerr)
		}
	}
	if err != nil && err != io.EOF {
		return n, d.readError(err)
	}
	return n, err
}

func (d *Download) readError(err error) error {
	e := errs.From(err)
	if e.Code == errs.Internal && d.fr != nil {
		return errs.Wrap(errs.Corrupt, err, "artifact %q failed verification", d.ref.Key)
	}
	return e
}

// End finishes the download: err nil after Read returned io.EOF, otherwise the transfer is cancelled.
func (d *Download) End(err error) {
	d.once.Do(func() {
		if err != nil {
			_ = d.pr.CloseWithError(errs.From(err))
			d.cancel()
		}
		if d.fr != nil {
			_ = d.fr.Close()
		}
		<-d.done
		d.cancel()
		if d.ref.Frames != nil {
			zero(d.ref.Frames.Key)
		}
	})
}

// Stages are the download's stage times in ms (after End).
func (d *Download) Stages() map[string]int64 {
	out := map[string]int64{"download": d.wait.Milliseconds()}
	if d.fr != nil {
		for k, v := range d.fr.stages() {
			out[k] = v.Milliseconds()
		}
	}
	return out
}
