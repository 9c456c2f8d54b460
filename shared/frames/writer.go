package frames

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"troveng.dev/shared/errs"
)

// MaxWorkers bounds Options.Workers and ReadOptions.Workers.
const MaxWorkers = 256

// Options configure a Writer.
type Options struct {
	Codec      string // "zstd" (default when ""), "gzip", "none"
	Level      int    // 0 = fast default (zstd SpeedFastest, gzip level 1); zstd 1..22, gzip 1..9
	FrameSize  int    // raw bytes per frame; 0 = DefaultFrameSize; 64 KiB..MaxFrameSize
	Workers    int    // parallel compress+seal workers; 0 = runtime.GOMAXPROCS(0)
	ArtifactID string // required; bound into every frame; 1..200 chars of [A-Za-z0-9._/-]
	// Key is nil (unsealed, hashed only) or exactly 32 bytes (AES-256-GCM). It must be a fresh random data
	// key for this artifact alone: nonces are derived from frame numbers, so sealing two artifacts under
	// one key would reuse nonces and break GCM. The writer cannot detect reuse.
	Key []byte
	// NoStoredHash leaves Summary.SHA256 empty, for a caller that hashes the stored bytes itself on their
	// way out (the storage client does, to have storage check them): a second pass over every byte would
	// cost ~0.18 CPU-s/GB for nothing. Frame digests and the index hash are unaffected.
	NoStoredHash bool
}

// Summary describes an artifact written or read.
type Summary struct {
	Codec       string
	Sealed      bool
	Frames      int
	RawSize     int64
	StoredSize  int64                    // all bytes of the artifact, header to footer
	SHA256      string                   // hex SHA-256 of all stored bytes ("" with NoStoredHash)
	IndexSHA256 string                   // hex SHA-256 of the index
	Stages      map[string]time.Duration // busy time summed over goroutines: read, compress, encrypt, hash, write
}

// Stage names in Summary.Stages.
const (
	StageRead     = "read"
	StageCompress = "compress"
	StageEncrypt  = "encrypt"
	StageHash     = "hash"
	StageWrite    = "write"
)

type stages [5]atomic.Int64

const (
	stRead = iota
	stCompress
	stEncrypt
	stHash
	stWrite
)

func (s *stages) add(i int, since time.Time) time.Time {
	now := time.Now()
	s[i].Add(int64(now.Sub(since)))
	return now
}

func (s *stages) snapshot() map[string]time.Duration {
	return map[string]time.Duration{
		StageRead:     time.Duration(s[stRead].Load()),
		StageCompress: time.Duration(s[stCompress].Load()),
		StageEncrypt:  time.Duration(s[stEncrypt].Load()),
		StageHash:     time.Duration(s[stHash].Load()),
		StageWrite:    time.Duration(s[stWrite].Load()),
	}
}

// wjob is one frame in the writer's pipeline.
type wjob struct {
	number uint64
	final  bool
	in     []byte // raw bytes, cap frameSize
	out    []byte // the frame as stored: header, body, digest
	ready  chan struct{}
	err    error
}

// Writer cuts a stream into frames and writes the framed artifact to dst. Write and Close must be called
// from one goroutine; Abort may be called from any. Always end with Close or Abort, or goroutines leak.
type Writer struct {
	dst       io.Writer
	h         fileHeader
	aead      cipher.AEAD
	level     int
	noStored  bool
	workers   int
	frameSize int

	cur    *wjob
	number uint64
	work   chan *wjob // to the workers
	order  chan *wjob // to the output goroutine, in frame order
	free   chan *wjob
	nJobs  int // jobs allocated, at most cap(free)
	all    []*wjob
	closed bool

	abort     chan struct{}
	abortOnce sync.Once
	errMu     sync.Mutex
	err       error
	wg        sync.WaitGroup
	outDone   chan struct{}
	closeErr  error

	stages  stages
	summary Summary
}

// NewWriter checks the options and starts the workers and the output goroutine, which writes the file
// header at once and then the frames in order. Bad options are errs.BadRequest. Memory: about
// (2·Workers+2)·2·FrameSize of frame buffers plus one codec state per worker, whatever the stream length.
func NewWriter(dst io.Writer, o Options) (*Writer, error) {
	if dst == nil {
		return nil, errs.BadRequestf("frames writer: no destination")
	}
	if err := validateID(o.ArtifactID); err != nil {
		return nil, err
	}
	w := &Writer{dst: dst, h: fileHeader{id: o.ArtifactID}}
	switch o.Codec {
	case "", "zstd":
		w.h.codec = codecZstd
		if o.Level < 0 || o.Level > 22 {
			return nil, errs.BadRequestf("zstd level %d is outside 1..22 (0 = fastest)", o.Level)
		}
	case "gzip":
		w.h.codec = codecGzip
		if o.Level < 0 || o.Level > 9 {
			return nil, errs.BadRequestf("gzip level %d is outside 1..9 (0 = 1)", o.Level)
		}
	case "none":
		w.h.codec = codecNone
		if o.Level != 0 {
			return nil, errs.BadRequestf("codec none takes no level (got %d)", o.Level)
		}
	default:
		return nil, errs.BadRequestf("unknown codec %q; use zstd, gzip or none", printable([]byte(o.Codec)))
	}
	w.level = o.Level
	w.noStored = o.NoStoredHash
	w.frameSize = o.FrameSize
	if w.frameSize == 0 {
		w.frameSize = DefaultFrameSize
	}
	if w.frameSize < MinFrameSize || w.frameSize > MaxFrameSize {
		return nil, errs.BadRequestf("frame size %d is outside %d..%d", o.FrameSize, MinFrameSize, MaxFrameSize)
	}
	w.h.frameSize = w.frameSize
	var err error
	if w.workers, err = workerCount(o.Workers); err != nil {
		return nil, err
	}
	switch len(o.Key) {
	case 0:
		if o.Key != nil {
			return nil, errs.BadRequestf("the data key is empty; give a 32-byte key or none")
		}
	case 32:
		w.h.sealed = true
		block, err := aes.NewCipher(o.Key)
		if err != nil {
			return nil, errs.Wrap(errs.Internal, err, "AES")
		}
		if w.aead, err = cipher.NewGCM(block); err != nil {
			return nil, errs.Wrap(errs.Internal, err, "GCM")
		}
	default:
		return nil, errs.BadRequestf("the data key is %d bytes; AES-256-GCM needs exactly 32", len(o.Key))
	}
	// The key check: a GCM tag over nothing, bound to the header, under a nonce no frame uses. It lets a
	// reader tell a wrong key from a damaged frame before producing any output.
	w.h.encode(func(prefix []byte) []byte { return w.aead.Seal(nil, keyCheckNonce[:], nil, prefix) })

	// Compressors first, so a failure leaves no goroutine behind.
	comps := make([]compressor, w.workers)
	for i := range comps {
		if comps[i], err = getCompressor(w.h.codec, w.level); err != nil {
			for _, c := range comps[:i] {
				putCompressor(c, w.h.codec, w.level)
			}
			return nil, err
		}
	}
	n := 2*w.workers + 2 // frames in flight: the one being filled, queued, in workers, being written
	w.work = make(chan *wjob, n)
	w.order = make(chan *wjob, n)
	w.free = make(chan *wjob, n)
	w.abort = make(chan struct{})
	w.outDone = make(chan struct{})
	w.summary.Codec = w.h.codecName()
	w.summary.Sealed = w.h.sealed
	w.wg.Add(w.workers + 1)
	for _, c := range comps {
		go w.worker(c)
	}
	go w.output()
	return w, nil
}

func workerCount(n int) (int, error) {
	if n < 0 || n > MaxWorkers {
		return 0, errs.BadRequestf("workers %d is outside 1..%d (0 = GOMAXPROCS)", n, MaxWorkers)
	}
	if n == 0 {
		n = runtime.GOMAXPROCS(0)
	}
	return n, nil
}

// fail records the first error and stops the pipeline; it does not wait.
func (w *Writer) fail(err error) {
	w.errMu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.errMu.Unlock()
	w.abortOnce.Do(func() { close(w.abort) })
}

func (w *Writer) failed() error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

func (w *Writer) getJob() (*wjob, error) {
	select {
	case j := <-w.free:
		return j, nil
	default:
	}
	if w.nJobs < cap(w.free) {
		w.nJobs++
		j := &wjob{in: getBuf(w.frameSize), ready: make(chan struct{}, 1)}
		w.all = append(w.all, j)
		return j, nil
	}
	select {
	case j := <-w.free:
		return j, nil
	case <-w.abort:
		return nil, w.failed()
	}
}

func (w *Writer) submit(j *wjob, final bool) error {
	if w.number >= maxFrames {
		return errs.BadRequestf("artifact %s: more than %d frames; use a larger frame size", w.h.id, uint64(maxFrames))
	}
	j.number, j.final, j.err = w.number, final, nil
	w.number++
	// Neither send blocks: at most cap(free) jobs exist and both channels hold that many.
	w.work <- j
	w.order <- j
	return nil
}

// Write cuts p into frames. It returns the pipeline's first error (for example from dst) once known.
func (w *Writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errs.Internalf("frames writer: write after Close")
	}
	n := 0
	for len(p) > 0 {
		if err := w.failed(); err != nil {
			return n, err
		}
		if w.cur != nil && len(w.cur.in) == w.frameSize {
			// More data follows, so the full frame is not the final one.
			if err := w.submit(w.cur, false); err != nil {
				w.fail(err)
				return n, err
			}
			w.cur = nil
		}
		if w.cur == nil {
			j, err := w.getJob()
			if err != nil {
				return n, err
			}
			j.in = j.in[:0]
			w.cur = j
		}
		c := copy(w.cur.in[len(w.cur.in):w.frameSize], p)
		w.cur.in = w.cur.in[:len(w.cur.in)+c]
		p = p[c:]
		n += c
	}
	return n, nil
}

// Close seals the last frame, waits for every frame to be written in order, then writes the index and the
// footer. It returns the first error of the pipeline.
func (w *Writer) Close() error {
	if w.closed {
		return w.closeErr
	}
	w.closed = true
	err := w.failed()
	if err == nil {
		if w.cur == nil {
			w.cur, err = w.getJob()
			if err == nil {
				w.cur.in = w.cur.in[:0]
			}
		}
		if err == nil {
			if err = w.submit(w.cur, true); err != nil {
				w.fail(err)
			}
			w.cur = nil
		}
	}
	close(w.work)
	close(w.order)
	<-w.outDone
	w.wg.Wait()
	for _, j := range w.all {
		putBuf(j.in, w.frameSize)
		putBuf(j.out, w.frameSize)
		j.in, j.out = nil, nil
	}
	w.all, w.cur = nil, nil
	if err == nil {
		err = w.failed()
	}
	w.closeErr = err
	return err
}

// Abort stops the workers and writes nothing more: without a footer the partial output is detectably
// incomplete. err (or a cancellation error when nil) is what later calls return. Abort waits for the
// pipeline's goroutines (including a dst.Write in progress) and may be called from any goroutine.
func (w *Writer) Abort(err error) {
	if err == nil {
		err = errs.New(errs.Cancelled, "artifact %s: writing was aborted", w.h.id)
	}
	w.fail(err)
	w.wg.Wait()
}

// Summary describes the artifact written; valid after Close returned nil.
func (w *Writer) Summary() Summary {
	s := w.summary
	s.Stages = w.stages.snapshot()
	return s
}

func (w *Writer) worker(c compressor) {
	defer w.wg.Done()
	defer putCompressor(c, w.h.codec, w.level)
	d := sha256.New()
	var aadBuf []byte
	t := time.Now()
	for {
		var j *wjob
		var ok bool
		select {
		case j, ok = <-w.work:
		case <-w.abort:
			return
		}
		if !ok {
			return
		}
		t = w.stages.add(stRead, t)
		j.err = w.seal(j, c, d, &aadBuf, &t)
		j.ready <- struct{}{}
	}
}

// seal turns j.in into j.out: frame header, compressed (and sealed) body, digest.
func (w *Writer) seal(j *wjob, c compressor, d hash.Hash, aadBuf *[]byte, t *time.Time) error {
	bound := maxStored(w.frameSize)
	if cap(j.out) < recCap(w.frameSize) {
		j.out = getBuf(recCap(w.frameSize))
	}
	out, err := c.compress(j.out[:frameHeaderLen], j.in)
	if err != nil {
		return err
	}
	*t = w.stages.add(stCompress, *t)
	stored := len(out) - frameHeaderLen
	if w.aead != nil {
		stored += tagLen
	}
	if stored > bound {
		return errs.Internalf("frame %d compressed to %d bytes, over the format's bound %d", j.number, stored, bound)
	}
	fh := frameHeader{number: j.number, raw: len(j.in), stored: stored, final: j.final}
	fh.put(out[:frameHeaderLen])
	if w.aead != nil {
		n := nonce(j.number, j.final)
		*aadBuf = aad(*aadBuf, &w.h, out)
		body := out[frameHeaderLen:]
		sealed := w.aead.Seal(body[:0], n[:], body, *aadBuf)
		out = out[:frameHeaderLen+len(sealed)]
		*t = w.stages.add(stEncrypt, *t)
	}
	d.Reset()
	d.Write(w.h.digest[:])
	d.Write(out)
	j.out = d.Sum(out)
	*t = w.stages.add(stHash, *t)
	return nil
}

// output writes the header, then each frame in order as it is ready, then the index and footer.
func (w *Writer) output() {
	defer w.wg.Done()
	defer close(w.outDone)
	whole := newStoredHash(w.noStored)
	idx := sha256.New()
	var off uint64
	put := func(b []byte) bool {
		select {
		case <-w.abort:
			return false
		default:
		}
		t := time.Now()
		_, err := w.dst.Write(b)
		t = w.stages.add(stWrite, t)
		if err != nil {
			w.fail(errs.Wrap(errs.CodeOf(err), err, "artifact %s: writing at byte %d", w.h.id, off))
			return false
		}
		whole.Write(b)
		w.stages.add(stHash, t)
		off += uint64(len(b))
		return true
	}
	if !put(w.h.raw) {
		return
	}
	// The index grows by one entry per frame (48 bytes): the only per-stream growth.
	var entries []byte
	for {
		var j *wjob
		var ok bool
		select {
		case j, ok = <-w.order:
		case <-w.abort:
			return
		}
		if !ok {
			return // Close without a final frame: only after a failure
		}
		select {
		case <-j.ready:
		case <-w.abort:
			return
		}
		if j.err != nil {
			w.fail(j.err)
			return
		}
		e := indexEntry{offset: off, stored: uint32(len(j.out) - frameHeaderLen - digestLen), raw: uint32(len(j.in))}
		copy(e.digest[:], j.out[len(j.out)-digestLen:])
		if !put(j.out) {
			return
		}
		var eb [indexEntryLen]byte
		e.put(eb[:])
		entries = append(entries, eb[:]...)
		w.summary.Frames++
		w.summary.RawSize += int64(len(j.in))
		final := j.final
		w.free <- j
		if final {
			break
		}
	}
	ih := indexHeader(w.summary.Frames)
	idx.Write(ih)
	idx.Write(entries)
	f := footer{indexOffset: off, indexLength: uint64(indexLen(w.summary.Frames))}
	idx.Sum(f.indexSHA256[:0])
	if !put(append(ih, entries...)) || !put(f.encode()) {
		return
	}
	w.summary.StoredSize = int64(off)
	w.summary.SHA256 = storedSum(whole)
	w.summary.IndexSHA256 = hex.EncodeToString(f.indexSHA256[:])
}
