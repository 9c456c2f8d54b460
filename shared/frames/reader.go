package frames

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"hash"
	"io"
	"sync"
	"time"

	"troveng.dev/shared/errs"
)

// ReadOptions configure a Reader or Verify.
type ReadOptions struct {
	ArtifactID        string // required: must match the header
	Key               []byte // required if the artifact is sealed; an unsealed artifact is refused when a key is given
	Workers           int    // parallel decode workers; 0 = GOMAXPROCS
	ExpectIndexSHA256 string // optional: if set, the index at the end must hash to this (hex)
	// NoStoredHash leaves Summary.SHA256 empty, for a caller whose transfer already checked the stored
	// bytes against their recorded SHA-256 (a whole-object get does). Ignored by Verify, which exists to
	// report it.
	NoStoredHash bool
}

// growChunk bounds how far a reader allocates ahead of bytes actually received.
const growChunk = 1 << 20

// rjob is one frame in the reader's pipeline.
type rjob struct {
	fh    frameHeader
	rec   []byte // the frame as stored: header, body, digest
	raw   []byte // decoded plaintext, a view of buf
	buf   []byte // cap frameSize once used
	ready chan struct{}
	err   error
}

// Reader decodes a framed artifact read sequentially from src. Read and Close must be called from one
// goroutine.
type Reader struct {
	src      io.Reader
	noStored bool
	h        fileHeader
	aead     cipher.AEAD
	decode   bool
	workers  int
	expect   []byte

	work  chan *rjob
	order chan *rjob
	free  chan *rjob
	nJobs int
	all   []*rjob // every job allocated (by the feeder), for returning buffers
	freed bool

	abort     chan struct{}
	abortOnce sync.Once
	errMu     sync.Mutex
	failErr   error
	wg        sync.WaitGroup

	cur  *rjob
	pos  int
	err  error // sticky error for Read
	done bool  // the final frame was delivered

	stages  stages
	summary Summary // filled by the feeder, read after the final frame was delivered
}

// NewReader reads and checks the file header (and, for a sealed artifact, the key) and starts decoding.
func NewReader(src io.Reader, o ReadOptions) (*Reader, error) {
	return newReader(src, o, true)
}

// Verify checks every frame (SHA-256 always, the GCM tag when a key is given), the index and the footer,
// and returns the artifact's summary. Frames are not decompressed. Without a key, a sealed artifact is
// checked against its hashes only, which proves integrity against the index but not authenticity.
func Verify(src io.Reader, o ReadOptions) (Summary, error) {
	r, err := newReader(src, o, false)
	if err != nil {
		return Summary{}, err
	}
	defer func() { _ = r.Close() }() // Close never fails
	for {
		if err := r.next(); err != nil {
			if err == io.EOF {
				return r.Summary(), nil
			}
			return Summary{}, err
		}
	}
}

func newReader(src io.Reader, o ReadOptions, decode bool) (*Reader, error) {
	if src == nil {
		return nil, errs.BadRequestf("frames reader: no source")
	}
	if err := validateID(o.ArtifactID); err != nil {
		return nil, err
	}
	r := &Reader{src: src, decode: decode, noStored: o.NoStoredHash && decode}
	var err error
	if r.workers, err = workerCount(o.Workers); err != nil {
		return nil, err
	}
	if o.Key != nil && len(o.Key) != 32 {
		return nil, errs.BadRequestf("the data key is %d bytes; AES-256-GCM needs exactly 32", len(o.Key))
	}
	if o.ExpectIndexSHA256 != "" {
		if r.expect, err = hex.DecodeString(o.ExpectIndexSHA256); err != nil || len(r.expect) != digestLen {
			return nil, errs.BadRequestf("expected index SHA-256 %q is not 64 hex digits", printable([]byte(o.ExpectIndexSHA256)))
		}
	}
	t := time.Now()
	if err := r.readHeader(); err != nil {
		return nil, err
	}
	r.stages.add(stRead, t)
	if r.h.id != o.ArtifactID {
		return nil, errs.New(errs.Corrupt, "the artifact's header names artifact %q, not %q: this is another artifact's data", r.h.id, o.ArtifactID)
	}
	switch {
	case r.h.sealed && o.Key == nil && decode:
		return nil, errs.BadRequestf("artifact %s is sealed: a data key is required to read it (wrong or missing data key)", r.h.id)
	case !r.h.sealed && o.Key != nil:
		// A reader expecting a sealed artifact must not accept an unsealed substitute.
		return nil, errs.New(errs.Corrupt, "artifact %s is not sealed but a data key was given: expected encrypted data, found plaintext", r.h.id)
	case r.h.sealed && o.Key != nil:
		block, err := aes.NewCipher(o.Key)
		if err != nil {
			return nil, errs.Wrap(errs.Internal, err, "AES")
		}
		if r.aead, err = cipher.NewGCM(block); err != nil {
			return nil, errs.Wrap(errs.Internal, err, "GCM")
		}
		if _, err := r.aead.Open(nil, keyCheckNonce[:], r.h.keyCheck[:], r.h.keyCheckAAD()); err != nil {
			return nil, errs.New(errs.Unauthorized, "the data key does not open artifact %s: wrong or missing data key (or its header was forged)", r.h.id)
		}
	}
	decs := make([]decompressor, r.workers)
	if decode {
		for i := range decs {
			if decs[i], err = getDecompressor(r.h.codec, r.h.frameSize); err != nil {
				for _, d := range decs[:i] {
					putDecompressor(d, r.h.codec, r.h.frameSize)
				}
				return nil, err
			}
		}
	}
	n := 2*r.workers + 2
	r.work = make(chan *rjob, n)
	r.order = make(chan *rjob, n)
	r.free = make(chan *rjob, n)
	r.abort = make(chan struct{})
	r.summary.Codec = r.h.codecName()
	r.summary.Sealed = r.h.sealed
	r.wg.Add(r.workers + 1)
	for _, d := range decs {
		go r.worker(d)
	}
	go r.feed()
	return r, nil
}

// readErr turns a source error into a coded one: an early end is corruption (truncation), anything else
// keeps the source's code.
func (r *Reader) readErr(err error, what string, off int64) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errs.New(errs.Corrupt, "artifact %s is truncated: it ends in %s (byte %d); the artifact is incomplete", r.h.id, what, off)
	}
	return errs.Wrap(errs.CodeOf(err), err, "artifact %s: reading %s at byte %d", r.h.id, what, off)
}

func (r *Reader) readHeader() error {
	r.h.id = "?"
	fixed := make([]byte, fileFixedLen)
	if _, err := io.ReadFull(r.src, fixed); err != nil {
		return r.readErr(err, "the file header", 0)
	}
	rest, err := r.h.parseFixed(fixed)
	if err != nil {
		return err
	}
	all := make([]byte, fileFixedLen+rest)
	copy(all, fixed)
	if _, err := io.ReadFull(r.src, all[fileFixedLen:]); err != nil {
		return r.readErr(err, "the file header", fileFixedLen)
	}
	return r.h.parseRest(all)
}

func (r *Reader) fail(err error) {
	r.errMu.Lock()
	if r.failErr == nil {
		r.failErr = err
	}
	r.errMu.Unlock()
	r.abortOnce.Do(func() { close(r.abort) })
}

func (r *Reader) getJob() (*rjob, bool) {
	select {
	case j := <-r.free:
		return j, true
	default:
	}
	if r.nJobs < cap(r.free) {
		r.nJobs++
		// A pooled buffer if there is one; otherwise readFull grows one as bytes arrive.
		j := &rjob{ready: make(chan struct{}, 1), rec: tryBuf(recCap(r.h.frameSize))}
		r.all = append(r.all, j)
		return j, true
	}
	t := time.Now()
	defer r.stages.add(stWrite, t) // waiting for the consumer to take frames
	select {
	case j := <-r.free:
		return j, true
	case <-r.abort:
		return nil, false
	}
}

// readFull reads exactly n bytes into buf[from:from+n], growing buf no faster than bytes arrive (past
// growChunk), so a hostile size claim costs at most what the source really sends.
func readFull(src io.Reader, buf []byte, from, n, full int) ([]byte, int, error) {
	end := from + n
	if cap(buf) >= end {
		buf = buf[:end]
		m, err := io.ReadFull(src, buf[from:end])
		return buf, m, err
	}
	buf = buf[:from]
	got := 0
	for len(buf) < end {
		want := min(end, max(2*len(buf), len(buf)+growChunk))
		if cap(buf) < want {
			c := want
			if want == end {
				c = max(end, full) // the last step: room for any later frame too
			}
			nb := make([]byte, len(buf), c)
			copy(nb, buf)
			buf = nb
		}
		m, err := io.ReadFull(src, buf[len(buf):want])
		got += m
		buf = buf[:len(buf)+m]
		if err != nil {
			return buf, got, err
		}
	}
	return buf, got, nil
}

// feed reads frames in order and hands them to the workers; after the final frame it reads and checks the
// index and the footer before letting the final frame through.
func (r *Reader) feed() {
	defer r.wg.Done()
	defer close(r.order)
	defer close(r.work)
	whole := newStoredHash(r.noStored)
	whole.Write(r.h.raw)
	off := int64(len(r.h.raw))
	var entries []byte
	send := func(j *rjob, toWorkers bool) bool {
		if toWorkers {
			r.work <- j
		} else {
			j.ready <- struct{}{}
		}
		r.order <- j
		return true
	}
	sendErr := func(j *rjob, err error) {
		j.err = err
		send(j, false)
	}
	for number := uint64(0); ; number++ {
		j, ok := r.getJob()
		if !ok {
			return
		}
		j.err, j.raw = nil, j.raw[:0]
		t := time.Now()
		var err error
		j.rec, _, err = readFull(r.src, j.rec, 0, frameHeaderLen, frameHeaderLen)
		if err != nil {
			what := "the header of frame " + itoa(number)
			if errors.Is(err, io.EOF) && number > 0 {
				what = "after frame " + itoa(number-1) + ", which is not the final frame"
			}
			sendErr(j, r.readErr(err, what, off))
			return
		}
		fh, err := parseFrameHeader(j.rec, number, &r.h)
		if err != nil {
			sendErr(j, err)
			return
		}
		j.fh = fh
		j.rec, _, err = readFull(r.src, j.rec, frameHeaderLen, fh.stored+digestLen, frameHeaderLen+maxStored(r.h.frameSize)+digestLen)
		if err != nil {
			sendErr(j, r.readErr(err, "frame "+itoa(number), off))
			return
		}
		t = r.stages.add(stRead, t)
		whole.Write(j.rec)
		r.stages.add(stHash, t)
		var eb [indexEntryLen]byte
		e := indexEntry{offset: uint64(off), stored: uint32(fh.stored), raw: uint32(fh.raw)}
		copy(e.digest[:], j.rec[frameHeaderLen+fh.stored:])
		e.put(eb[:])
		entries = append(entries, eb[:]...)
		off += int64(len(j.rec))
		r.summary.Frames++
		r.summary.RawSize += int64(fh.raw)
		if !fh.final {
			send(j, true)
			continue
		}
		if err := r.readTrailer(whole, entries, &off); err != nil {
			sendErr(j, err)
			return
		}
		r.summary.StoredSize = off
		r.summary.SHA256 = storedSum(whole)
		send(j, true)
		return
	}
}

// readTrailer reads the index and footer after the final frame, compares them with what the frames said,
// and checks that nothing follows.
func (r *Reader) readTrailer(whole hash.Hash, entries []byte, off *int64) error {
	frames := len(entries) / indexEntryLen
	ilen := indexLen(frames)
	ioff := *off
	idx := sha256.New()
	want := indexHeader(frames)
	buf := make([]byte, min(int64(64<<10), ilen))
	t := time.Now()
	// The index is compared piecewise against the entries gathered from the frames, never held whole.
	for pos := int64(0); pos < ilen; {
		n := min(int64(len(buf)), ilen-pos)
		if _, err := io.ReadFull(r.src, buf[:n]); err != nil {
			return r.readErr(err, "the index", *off)
		}
		for i := int64(0); i < n; i++ {
			p := pos + i
			var w byte
			if p < indexHeaderLen {
				w = want[p]
			} else {
				w = entries[p-indexHeaderLen]
			}
			if buf[i] != w {
				if p < indexHeaderLen {
					return errs.New(errs.Corrupt, "artifact %s: the index header is damaged (byte %d)", r.h.id, ioff+p)
				}
				return errs.New(errs.Corrupt, "artifact %s: the index entry of frame %d does not match the frame (byte %d)", r.h.id, (p-indexHeaderLen)/indexEntryLen, ioff+p)
			}
		}
		idx.Write(buf[:n])
		whole.Write(buf[:n])
		pos += n
		*off += n
	}
	var f footer
	f.indexOffset, f.indexLength = uint64(ioff), uint64(ilen)
	idx.Sum(f.indexSHA256[:0])
	fb := make([]byte, footerLen)
	if _, err := io.ReadFull(r.src, fb); err != nil {
		return r.readErr(err, "the footer", *off)
	}
	whole.Write(fb)
	*off += footerLen
	if err := checkFooter(fb, &f); err != nil {
		return errs.New(errs.Corrupt, "artifact %s: %s", r.h.id, errs.From(err).Message)
	}
	if r.expect != nil && subtle.ConstantTimeCompare(r.expect, f.indexSHA256[:]) != 1 {
		return errs.New(errs.Corrupt, "artifact %s: the index SHA-256 is %x, the manifest expects %x: this is not the artifact the manifest describes", r.h.id, f.indexSHA256, r.expect)
	}
	var one [1]byte
	for {
		n, err := r.src.Read(one[:])
		if n > 0 {
			return errs.New(errs.Corrupt, "artifact %s has data after its footer (byte %d)", r.h.id, *off)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return r.readErr(err, "past the footer", *off)
		}
	}
	r.stages.add(stRead, t)
	r.summary.IndexSHA256 = hex.EncodeToString(f.indexSHA256[:])
	return nil
}

func (r *Reader) worker(d decompressor) {
	defer r.wg.Done()
	if d != nil {
		defer func() {
			d.reset()
			putDecompressor(d, r.h.codec, r.h.frameSize)
		}()
	}
	h := sha256.New()
	var aadBuf []byte
	var sum [digestLen]byte
	for {
		var j *rjob
		var ok bool
		select {
		case j, ok = <-r.work:
		case <-r.abort:
			return
		}
		if !ok {
			return
		}
		j.err = r.open(j, d, h, &aadBuf, sum[:0])
		j.ready <- struct{}{}
	}
}

// open checks a frame's digest and tag and decodes it into j.raw.
func (r *Reader) open(j *rjob, d decompressor, h hash.Hash, aadBuf *[]byte, sum []byte) error {
	t := time.Now()
	n := j.fh.number
	bodyEnd := frameHeaderLen + j.fh.stored
	// A Reader with the key relies on the GCM tag, which authenticates the header and body; it skips the
	// redundant SHA-256 of each frame (one pass over the stored bytes; the stream's SHA-256 is still
	// computed). The stored digests are still compared with the index. Verify always checks them.
	if r.aead == nil || !r.decode {
		h.Reset()
		h.Write(r.h.digest[:])
		h.Write(j.rec[:bodyEnd])
		sum = h.Sum(sum)
		if !bytes.Equal(sum, j.rec[bodyEnd:]) {
			return errs.New(errs.Corrupt, "artifact %s: frame %d fails its SHA-256 check: it was altered, damaged or comes from another artifact", r.h.id, n)
		}
		t = r.stages.add(stHash, t)
	}
	body := j.rec[frameHeaderLen:bodyEnd]
	if r.aead != nil {
		nc := nonce(n, j.fh.final)
		*aadBuf = aad(*aadBuf, &r.h, j.rec)
		var err error
		if body, err = r.aead.Open(body[:0], nc[:], body, *aadBuf); err != nil {
			return errs.New(errs.Corrupt, "artifact %s: frame %d fails authentication: it was altered, moved or comes from another artifact", r.h.id, n)
		}
		t = r.stages.add(stEncrypt, t)
	}
	if d == nil {
		return nil
	}
	if cap(j.buf) < j.fh.raw {
		j.buf = getBuf(r.h.frameSize)
	}
	out, err := d.decompress(j.buf, body, j.fh.raw)
	if err != nil {
		msg := err.Error()
		if e, ok := err.(*errs.Error); ok {
			msg = e.Message
		}
		return errs.New(errs.Corrupt, "artifact %s: frame %d does not decompress (%s): it is damaged", r.h.id, n, msg)
	}
	j.raw = out
	r.stages.add(stCompress, t)
	return nil
}

// next makes the next frame current; io.EOF after the final frame.
func (r *Reader) next() error {
	if r.err != nil {
		return r.err
	}
	if r.cur != nil {
		final := r.cur.fh.final
		r.free <- r.cur
		r.cur = nil
		if final {
			r.done = true
			r.err = io.EOF
			r.wg.Wait() // the feeder has returned and the workers are leaving
			r.release()
			return io.EOF
		}
	}
	j, ok := <-r.order
	if !ok {
		r.errMu.Lock()
		r.err = r.failErr
		r.errMu.Unlock()
		if r.err == nil {
			r.err = errs.Internalf("artifact %s: the reader stopped early", r.h.id)
		}
		return r.err
	}
	<-j.ready
	if j.err != nil {
		r.err = j.err
		r.fail(j.err)
		return r.err
	}
	r.cur, r.pos = j, 0
	return nil
}

// Read returns plaintext in order. The first bad frame ends it with an errs.Corrupt error naming the
// frame; io.EOF comes only after the final frame, the index and the footer were checked.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil || len(p) == 0 {
		return 0, r.err
	}
	for r.cur == nil || r.pos == len(r.cur.raw) {
		if err := r.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.cur.raw[r.pos:])
	r.pos += n
	return n, nil
}

// WriteTo lets io.Copy take frames without an intermediate buffer.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if r.err != nil {
			if r.err == io.EOF {
				return total, nil
			}
			return total, r.err
		}
		if r.cur != nil && r.pos < len(r.cur.raw) {
			n, err := w.Write(r.cur.raw[r.pos:])
			r.pos += n
			total += int64(n)
			if err != nil {
				return total, err
			}
			continue
		}
		if err := r.next(); err != nil {
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
	}
}

// Close stops the workers; it is safe to call at any time and more than once.
func (r *Reader) Close() error {
	if r.err == nil {
		r.err = errs.New(errs.Cancelled, "artifact %s: the reader was closed", r.h.id)
	}
	r.fail(r.err)
	r.wg.Wait()
	r.release()
	return nil
}

// release returns the frame buffers for reuse; only once every goroutine has exited.
func (r *Reader) release() {
	if r.freed {
		return
	}
	r.freed = true
	for _, j := range r.all {
		putBuf(j.rec, r.h.frameSize)
		putBuf(j.buf, r.h.frameSize)
		j.rec, j.raw, j.buf = nil, nil, nil
	}
	r.all, r.cur = nil, nil
}

// Summary describes the artifact read; valid after Read returned io.EOF.
func (r *Reader) Summary() Summary {
	if !r.done {
		return Summary{Codec: r.summary.Codec, Sealed: r.summary.Sealed, Stages: r.stages.snapshot()}
	}
	s := r.summary
	s.Stages = r.stages.snapshot()
	return s
}

func itoa(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return string(b[i:])
}
