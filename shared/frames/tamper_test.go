package frames

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"troveng.dev/shared/errs"
)

// layout locates the parts of a well-formed artifact.
type layout struct {
	hdrLen  int
	digest  [32]byte // the header digest
	frames  [][2]int // start, end of each frame record
	idxOff  int
	footOff int
}

func parseLayout(t *testing.T, art []byte) layout {
	t.Helper()
	var l layout
	idLen := int(art[11])
	l.hdrLen = fileFixedLen + idLen + digestLen
	if art[10]&headerSealed != 0 {
		l.hdrLen += keyCheckLen
	}
	copy(l.digest[:], art[l.hdrLen-digestLen:l.hdrLen])
	off := l.hdrLen
	for {
		stored := int(binary.BigEndian.Uint32(art[off+16:]))
		end := off + frameHeaderLen + stored + digestLen
		l.frames = append(l.frames, [2]int{off, end})
		final := art[off+20]&frameFinal != 0
		off = end
		if final {
			break
		}
	}
	l.idxOff = off
	l.footOff = len(art) - footerLen
	return l
}

// records returns each frame's header and body (without its digest).
func (l layout) records(art []byte) [][]byte {
	var out [][]byte
	for _, f := range l.frames {
		out = append(out, bytes.Clone(art[f[0]:f[1]-digestLen]))
	}
	return out
}

// rebuild assembles an artifact from a header and frame records the way an attacker without the key
// could: every digest, the index and the footer recomputed to match.
func rebuild(hdr []byte, digest [32]byte, recs [][]byte) []byte {
	out := bytes.Clone(hdr)
	var entries []byte
	for _, rec := range recs {
		h := sha256.New()
		h.Write(digest[:])
		h.Write(rec)
		e := indexEntry{offset: uint64(len(out)), stored: uint32(len(rec) - frameHeaderLen), raw: binary.BigEndian.Uint32(rec[12:16])}
		h.Sum(e.digest[:0])
		out = append(out, rec...)
		out = append(out, e.digest[:]...)
		var eb [indexEntryLen]byte
		e.put(eb[:])
		entries = append(entries, eb[:]...)
	}
	idx := append(indexHeader(len(recs)), entries...)
	f := footer{indexOffset: uint64(len(out)), indexLength: uint64(len(idx)), indexSHA256: sha256.Sum256(idx)}
	out = append(out, idx...)
	return append(out, f.encode()...)
}

// expectErr reads art and wants an error of code, a message containing want, and no plaintext past
// maxPlain bytes (all of it a prefix of data).
func expectErr(t *testing.T, art, data []byte, ro ReadOptions, code errs.Code, maxPlain int, want string) {
	t.Helper()
	got, _, err := readAll(art, ro)
	if err == nil {
		t.Fatalf("read succeeded; want %s error", code)
	}
	if !errs.Is(err, code) {
		t.Fatalf("error %v; want code %s", err, code)
	}
	if want != "" && !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not mention %q", err, want)
	}
	if len(got) > maxPlain || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("produced %d bytes of plaintext (prefix ok: %v); at most %d allowed", len(got), bytes.Equal(got, data[:len(got)]), maxPlain)
	}
	if code == errs.Corrupt || code == errs.Unauthorized {
		// Verify reports the same code as Read.
		if _, err := Verify(bytes.NewReader(art), ro); !errs.Is(err, code) {
			t.Fatalf("Verify: %v; want %s", err, code)
		}
	}
}

func flip(art []byte, at int) []byte {
	b := bytes.Clone(art)
	b[at] ^= 0x40
	return b
}

const tamperFrames = 6

func tamperSetup(t *testing.T, key []byte) (data, art []byte, l layout, ro ReadOptions) {
	data = dumpBytes(tamperFrames*fs-100, 3)
	art, _ = write(t, data, opts("artifact-A", key, "zstd"))
	l = parseLayout(t, art)
	if len(l.frames) != tamperFrames {
		t.Fatalf("%d frames", len(l.frames))
	}
	return data, art, l, ropts("artifact-A", key)
}

func TestTamper(t *testing.T) {
	for _, sealed := range []bool{false, true} {
		var key []byte
		name := "unsealed"
		if sealed {
			key, name = key1, "sealed"
		}
		t.Run(name, func(t *testing.T) {
			noLeak(t)
			data, art, l, ro := tamperSetup(t, key)
			allButFinal := (tamperFrames - 1) * fs

			t.Run("body", func(t *testing.T) {
				for _, at := range []int{l.frames[3][0] + frameHeaderLen, (l.frames[3][0] + l.frames[3][1]) / 2, l.frames[3][1] - digestLen - 1} {
					expectErr(t, flip(art, at), data, ro, errs.Corrupt, 3*fs, "frame 3")
				}
			})
			t.Run("frame-header", func(t *testing.T) {
				for i := range frameHeaderLen {
					expectErr(t, flip(art, l.frames[2][0]+i), data, ro, errs.Corrupt, 2*fs, "frame 2")
				}
			})
			t.Run("frame-digest", func(t *testing.T) {
				if sealed {
					// The keyed reader trusts the GCM tag for the frame and finds the bad digest at the index.
					expectErr(t, flip(art, l.frames[2][1]-5), data, ro, errs.Corrupt, allButFinal, "index entry of frame 2")
					return
				}
				expectErr(t, flip(art, l.frames[2][1]-5), data, ro, errs.Corrupt, 2*fs, "frame 2")
			})
			t.Run("file-header", func(t *testing.T) {
				for i := range l.hdrLen {
					expectErr(t, flip(art, i), data, ro, errs.Corrupt, 0, "")
				}
			})
			t.Run("index", func(t *testing.T) {
				for i := l.idxOff; i < l.footOff; i += 7 {
					expectErr(t, flip(art, i), data, ro, errs.Corrupt, allButFinal, "index")
				}
			})
			t.Run("footer", func(t *testing.T) {
				for i := l.footOff; i < len(art); i++ {
					expectErr(t, flip(art, i), data, ro, errs.Corrupt, allButFinal, "footer")
				}
			})
			t.Run("trailing-data", func(t *testing.T) {
				expectErr(t, append(bytes.Clone(art), 0), data, ro, errs.Corrupt, allButFinal, "after its footer")
			})
			t.Run("swap", func(t *testing.T) {
				b := bytes.Clone(art[:l.frames[1][0]])
				b = append(b, art[l.frames[2][0]:l.frames[2][1]]...)
				b = append(b, art[l.frames[1][0]:l.frames[1][1]]...)
				b = append(b, art[l.frames[3][0]:]...)
				expectErr(t, b, data, ro, errs.Corrupt, fs, "frame 1")
			})
			t.Run("drop", func(t *testing.T) {
				b := bytes.Clone(art[:l.frames[2][0]])
				b = append(b, art[l.frames[3][0]:]...)
				expectErr(t, b, data, ro, errs.Corrupt, 2*fs, "frame 2")
			})
			t.Run("drop-final", func(t *testing.T) {
				last := l.frames[tamperFrames-1]
				b := bytes.Clone(art[:last[0]])
				b = append(b, art[last[1]:]...)
				expectErr(t, b, data, ro, errs.Corrupt, allButFinal, "frame 5")
			})
			t.Run("truncate", func(t *testing.T) {
				cuts := []int{0, 1, l.hdrLen - 1, l.hdrLen, l.idxOff, l.idxOff + 1, l.footOff - 1, l.footOff, len(art) - 1}
				for _, f := range l.frames {
					cuts = append(cuts, f[0]+1, f[0]+frameHeaderLen, (f[0]+f[1])/2, f[1]-1, f[1])
				}
				for c := 0; c < len(art); c += 4099 {
					cuts = append(cuts, c)
				}
				for _, c := range cuts {
					// No plaintext beyond the frames complete before the cut, and never the final frame.
					complete := 0
					for _, f := range l.frames {
						if f[1] <= c {
							complete++
						}
					}
					maxPlain := min(complete*fs, allButFinal)
					expectErr(t, art[:c], data, ro, errs.Corrupt, maxPlain, "truncated")
				}
			})
			t.Run("renumbered-swap", func(t *testing.T) {
				// An attacker without the key swaps two frames and fixes their numbers and every hash.
				recs := l.records(art)
				recs[1], recs[2] = recs[2], recs[1]
				binary.BigEndian.PutUint64(recs[1][4:], 1)
				binary.BigEndian.PutUint64(recs[2][4:], 2)
				b := rebuild(art[:l.hdrLen], l.digest, recs)
				if !sealed {
					// Without a key only the manifest's index hash can tell: caught before the final frame.
					if _, _, err := readAll(b, ro); err != nil {
						t.Fatalf("unsealed rebuild should decode: %v", err)
					}
					_, ws := write(t, data, opts("artifact-A", key, "zstd"))
					ro2 := ro
					ro2.ExpectIndexSHA256 = ws.IndexSHA256
					got, _, err := readAll(b, ro2)
					if !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), "index SHA-256") || len(got) > allButFinal {
						t.Fatalf("unsealed forgery with the manifest's index hash: %v after %d bytes", err, len(got))
					}
					return
				}
				expectErr(t, b, data, ro, errs.Corrupt, fs, "frame 1 fails authentication")
			})
			t.Run("final-flag", func(t *testing.T) {
				// Truncation made to look complete: frame 3 marked final, hashes fixed.
				recs := l.records(art)[:4]
				recs[3][20] |= frameFinal
				b := rebuild(art[:l.hdrLen], l.digest, recs)
				if sealed {
					expectErr(t, b, data, ro, errs.Corrupt, 3*fs, "frame 3 fails authentication")
				}
			})
			t.Run("splice", func(t *testing.T) {
				// Frame 2 of another artifact sealed under the same key spliced in.
				other, _ := write(t, data, opts("artifact-B", key, "zstd"))
				lo := parseLayout(t, other)
				b := bytes.Clone(art[:l.frames[2][0]])
				b = append(b, other[lo.frames[2][0]:lo.frames[2][1]]...)
				b = append(b, art[l.frames[3][0]:]...)
				if !sealed {
					expectErr(t, b, data, ro, errs.Corrupt, 2*fs, "frame 2 fails its SHA-256")
				} else {
					expectErr(t, b, data, ro, errs.Corrupt, 2*fs, "frame 2 fails authentication")
					// Verify without the key finds it by the digest, which binds the header.
					if _, err := Verify(bytes.NewReader(b), ReadOptions{ArtifactID: "artifact-A"}); !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), "frame 2 fails its SHA-256") {
						t.Fatalf("keyless Verify of a spliced frame: %v", err)
					}
					recs := l.records(art)
					recs[2] = lo.records(other)[2]
					b = rebuild(art[:l.hdrLen], l.digest, recs)
					expectErr(t, b, data, ro, errs.Corrupt, 2*fs, "frame 2 fails authentication")
				}
			})
			t.Run("expect-index", func(t *testing.T) {
				ro2 := ro
				ro2.ExpectIndexSHA256 = strings.Repeat("ab", 32)
				expectErr(t, art, data, ro2, errs.Corrupt, allButFinal, "index SHA-256")
			})
			t.Run("artifact-id", func(t *testing.T) {
				ro2 := ro
				ro2.ArtifactID = "artifact-B"
				expectErr(t, art, data, ro2, errs.Corrupt, 0, "artifact-B")
			})
			t.Run("keys", func(t *testing.T) {
				ro2 := ro
				if sealed {
					ro2.Key = key2
					expectErr(t, art, data, ro2, errs.Unauthorized, 0, "wrong or missing data key")
					ro2.Key = nil
					expectErr(t, art, data, ro2, errs.BadRequest, 0, "data key is required")
				} else {
					ro2.Key = key1
					expectErr(t, art, data, ro2, errs.Corrupt, 0, "not sealed")
				}
			})
		})
	}
}

// TestVerifyDetects checks that Verify, with and without the key, finds what Read finds.
func TestVerifyDetects(t *testing.T) {
	noLeak(t)
	_, art, l, ro := tamperSetup(t, key1)
	keyless := ro
	keyless.Key = nil
	for _, o := range []ReadOptions{ro, keyless} {
		if _, err := Verify(bytes.NewReader(flip(art, l.frames[4][0]+100)), o); !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), "frame 4") {
			t.Errorf("Verify(key=%v) of a flipped body: %v", o.Key != nil, err)
		}
	}
	// A forgery with consistent hashes passes only the keyless check.
	recs := l.records(art)
	recs[1], recs[2] = recs[2], recs[1]
	binary.BigEndian.PutUint64(recs[1][4:], 1)
	binary.BigEndian.PutUint64(recs[2][4:], 2)
	b := rebuild(art[:l.hdrLen], l.digest, recs)
	if _, err := Verify(bytes.NewReader(b), ro); !errs.Is(err, errs.Corrupt) {
		t.Errorf("Verify with key of a forgery: %v", err)
	}
	if _, err := Verify(bytes.NewReader(b), keyless); err != nil {
		t.Errorf("keyless Verify of a hash-consistent forgery: %v (expected to pass: only the key or the manifest's index hash can tell)", err)
	}
}

// allocated runs f and returns the bytes it allocated.
func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

func TestHostileSizes(t *testing.T) {
	noLeak(t)
	// An unsealed header with the largest frame size, then a frame header claiming 4 GiB.
	h := fileHeader{codec: codecZstd, frameSize: MaxFrameSize, id: "h"}
	h.encode(nil)
	mk := func(raw, stored uint32, body int) []byte {
		b := bytes.Clone(h.raw)
		fh := make([]byte, frameHeaderLen)
		frameHeader{number: 0, final: true}.put(fh)
		binary.BigEndian.PutUint32(fh[12:], raw)
		binary.BigEndian.PutUint32(fh[16:], stored)
		b = append(b, fh...)
		return append(b, make([]byte, body)...)
	}
	ro := ReadOptions{ArtifactID: "h", Workers: 2}
	cases := []struct {
		name        string
		art         []byte
		want        string
		maxAlloc    uint64
		maxDuration time.Duration
	}{
		{"stored-4GiB", mk(1, 0xffffffff, 1000), "stored bytes", 1 << 20, time.Second},
		{"raw-4GiB", mk(0xffffffff, 100, 1000), "raw bytes", 1 << 20, time.Second},
		// A size within bounds but a source that ends early: allocation follows the bytes that arrive.
		{"stored-max-short", mk(MaxFrameSize, uint32(maxStored(MaxFrameSize)), 1000), "truncated", 4 << 20, time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			var err error
			n := allocated(func() { _, _, err = readAll(c.art, ro) })
			if !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v; want corrupt mentioning %q", err, c.want)
			}
			if n > c.maxAlloc {
				t.Fatalf("allocated %d bytes; at most %d expected", n, c.maxAlloc)
			}
			if d := time.Since(start); d > c.maxDuration {
				t.Fatalf("took %v", d)
			}
		})
	}
	// A file header claiming a frame size out of range.
	bad := bytes.Clone(h.raw)
	binary.BigEndian.PutUint32(bad[12:], 1<<31)
	if _, err := NewReader(bytes.NewReader(bad), ro); !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), "frame size") {
		t.Fatalf("huge frame size: %v", err)
	}
}

// TestHostileZstd feeds an unsealed frame whose zstd data decodes to more than its header says: refused
// without decoding past the claimed size.
func TestHostileZstd(t *testing.T) {
	noLeak(t)
	data := dumpBytes(fs, 1)
	art, _ := write(t, data, opts("z", nil, "zstd"))
	l := parseLayout(t, art)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	defer enc.Close()
	bomb := enc.EncodeAll(make([]byte, 64<<20), nil) // 64 MiB of zeros in a few KiB
	rec := l.records(art)[0]
	rec = append(rec[:frameHeaderLen], bomb...)
	binary.BigEndian.PutUint32(rec[16:], uint32(len(bomb)))
	b := rebuild(art[:l.hdrLen], l.digest, [][]byte{rec})
	var err error
	n := allocated(func() { _, _, err = readAll(b, ropts("z", nil)) })
	if !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), "does not decompress") {
		t.Fatalf("zstd bomb: %v", err)
	}
	if n > 16<<20 {
		t.Fatalf("zstd bomb allocated %d bytes", n)
	}
}

var errSink = errors.New("sink failed")

// failingWriter accepts n bytes, then fails.
type failingWriter struct{ n int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		return 0, errSink
	}
	f.n -= len(p)
	return len(p), nil
}

func TestFailingDst(t *testing.T) {
	noLeak(t)
	data := dumpBytes(20*fs, 2)
	for _, at := range []int{0, 10, 3 * fs, 1 << 30} {
		w, err := NewWriter(&failingWriter{n: at}, opts("f", key1, ""))
		if err != nil {
			t.Fatal(err)
		}
		_, werr := w.Write(data)
		cerr := w.Close()
		if at == 1<<30 {
			if werr != nil || cerr != nil {
				t.Fatalf("no failure expected: %v %v", werr, cerr)
			}
			continue
		}
		if !errors.Is(cerr, errSink) || (werr != nil && !errors.Is(werr, errSink)) {
			t.Fatalf("fail at %d: Write %v, Close %v; want the sink's error", at, werr, cerr)
		}
		if _, err := w.Write([]byte("x")); err == nil {
			t.Fatal("Write after a failed Close succeeded")
		}
	}
}

// failingReader returns its bytes, then err.
type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

func TestFailingSrc(t *testing.T) {
	noLeak(t)
	data, art, l, ro := tamperSetup(t, key1)
	srcErr := errs.Unavailablef("storage went away")
	for _, cut := range []int{5, l.frames[2][0] + 10, l.footOff + 3} {
		r, err := NewReader(&failingReader{bytes.NewReader(art[:cut]), srcErr}, ro)
		if cut < l.hdrLen {
			if !errs.Is(err, errs.Unavailable) {
				t.Fatalf("cut %d: NewReader %v; want unavailable", cut, err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if !errors.Is(err, srcErr) || !errs.Is(err, errs.Unavailable) {
			t.Fatalf("cut %d: %v; want the source's error", cut, err)
		}
		if !bytes.Equal(got, data[:len(got)]) || len(got) > (tamperFrames-1)*fs {
			t.Fatalf("cut %d: %d bytes of plaintext", cut, len(got))
		}
	}
}

// blockingWriter blocks every write until released.
type blockingWriter struct {
	started chan struct{}
	release chan struct{}
	n       int
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	select {
	case b.started <- struct{}{}:
	default:
	}
	<-b.release
	b.n += len(p)
	return len(p), nil
}

func TestAbort(t *testing.T) {
	noLeak(t)
	data := dumpBytes(20*fs, 4)
	var out bytes.Buffer
	w, err := NewWriter(&out, opts("ab", key1, ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data[:5*fs]); err != nil {
		t.Fatal(err)
	}
	stop := errs.New(errs.Cancelled, "job cancelled")
	w.Abort(stop)
	n := out.Len()
	if _, err := w.Write(data); !errors.Is(err, stop) {
		t.Fatalf("Write after Abort: %v", err)
	}
	if err := w.Close(); !errors.Is(err, stop) {
		t.Fatalf("Close after Abort: %v", err)
	}
	if out.Len() != n {
		t.Fatalf("%d bytes written after Abort", out.Len()-n)
	}
	if _, _, err := readAll(out.Bytes(), ropts("ab", key1)); !errs.Is(err, errs.Corrupt) {
		t.Fatalf("reading an aborted artifact: %v", err)
	}

	// Abort from another goroutine while a dst.Write blocks: it returns once that write does.
	bw := &blockingWriter{started: make(chan struct{}, 1), release: make(chan struct{})}
	w, err = NewWriter(bw, opts("ab", nil, ""))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.Write(data)
		if err == nil {
			err = w.Close()
		}
		done <- err
	}()
	<-bw.started
	aborted := make(chan struct{})
	go func() { w.Abort(nil); close(aborted) }()
	time.Sleep(20 * time.Millisecond)
	close(bw.release)
	<-aborted
	if err := <-done; !errs.Is(err, errs.Cancelled) {
		t.Fatalf("writer error after Abort: %v", err)
	}
}

func TestReaderCloseEarly(t *testing.T) {
	noLeak(t)
	_, art, _, ro := tamperSetup(t, key1)
	r, err := NewReader(bytes.NewReader(art), ro)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if _, err := r.Read(buf); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(buf); !errs.Is(err, errs.Cancelled) {
		t.Fatalf("Read after Close: %v", err)
	}
}

// TestMemoryBounded streams 256 MiB through a writer and a reader: allocations must not grow with the
// stream (beyond the index's 48 bytes per frame).
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 256 MiB")
	}
	noLeak(t)
	const total = 256 << 20
	pr, pw := io.Pipe()
	src := io.LimitReader(dumpReader(), total)
	o := Options{ArtifactID: "mem", Key: key1, FrameSize: 1 << 20, Workers: 2}
	var werr error
	var w *Writer
	written := make(chan struct{}) // the writer goroutine's results are read only after it ended
	n := allocated(func() {
		go func() {
			defer close(written)
			var err error
			w, err = NewWriter(pw, o)
			if err == nil {
				if _, err = io.Copy(w, src); err == nil {
					err = w.Close()
				}
			}
			pw.CloseWithError(err)
			werr = err
		}()
		r, err := NewReader(pr, ReadOptions{ArtifactID: "mem", Key: key1, Workers: 2})
		if err != nil {
			t.Error(err)
			return
		}
		defer r.Close()
		m, err := io.Copy(io.Discard, r)
		if err != nil || m != total {
			t.Errorf("read %d bytes: %v", m, err)
		}
		<-written
	})
	if werr != nil {
		t.Fatal(werr)
	}
	if w.nJobs > 2*2+2 {
		t.Errorf("writer allocated %d frames", w.nJobs)
	}
	t.Logf("allocated %d MiB for %d MiB through writer and reader", n>>20, total>>20)
	if n > 64<<20 {
		t.Fatalf("allocated %d MiB streaming %d MiB: memory grows with the stream", n>>20, total>>20)
	}
}
