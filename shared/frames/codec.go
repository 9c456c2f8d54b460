package frames

import (
	"bytes"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"troveng.dev/shared/errs"
)

// compressor appends the compressed form of src to dst. One per worker: not safe for concurrent use.
type compressor interface {
	compress(dst, src []byte) ([]byte, error)
}

// decompressor decodes src into dst[:0] (cap(dst) >= raw) and fails unless exactly raw bytes come out.
type decompressor interface {
	decompress(dst, src []byte, raw int) ([]byte, error)
	// reset drops references to the last frame, so a pooled state pins no buffer.
	reset()
}

func newCompressor(codec byte, level int) (compressor, error) {
	switch codec {
	case codecZstd:
		lvl := zstd.SpeedFastest
		if level > 0 {
			lvl = zstd.EncoderLevelFromZstd(level)
		}
		// One goroutine per encoder: the workers, not the codec, provide parallelism. No zstd checksum: the
		// frame's SHA-256 (and GCM tag when sealed) already covers the bytes.
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(lvl), zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(false), zstd.WithLowerEncoderMem(true))
		if err != nil {
			return nil, errs.Wrap(errs.Internal, err, "creating a zstd encoder")
		}
		return zstdCompressor{enc}, nil
	case codecGzip:
		if level == 0 {
			level = gzip.BestSpeed
		}
		w, err := gzip.NewWriterLevel(io.Discard, level)
		if err != nil {
			return nil, errs.Wrap(errs.Internal, err, "creating a gzip encoder")
		}
		return &gzipCompressor{w: w}, nil
	default:
		return noneCodec{}, nil
	}
}

func newDecompressor(codec byte, frameSize int) (decompressor, error) {
	switch codec {
	case codecZstd:
		// Decoded size is limited to the frame size and to cap(dst), so a hostile frame claiming a huge
		// content size is refused instead of allocated.
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(frameSize)),
			zstd.WithDecoderMaxWindow(uint64(max(frameSize, zstd.MinWindowSize))), zstd.WithDecodeAllCapLimit(true))
		if err != nil {
			return nil, errs.Wrap(errs.Internal, err, "creating a zstd decoder")
		}
		return zstdDecompressor{dec}, nil
	case codecGzip:
		return &gzipDecompressor{}, nil
	default:
		return noneCodec{}, nil
	}
}

type zstdCompressor struct{ enc *zstd.Encoder }

func (z zstdCompressor) compress(dst, src []byte) ([]byte, error) {
	return z.enc.EncodeAll(src, dst), nil
}

type zstdDecompressor struct{ dec *zstd.Decoder }

func (z zstdDecompressor) decompress(dst, src []byte, raw int) ([]byte, error) {
	out, err := z.dec.DecodeAll(src, dst[:0:raw])
	if err != nil {
		return nil, err
	}
	if len(out) != raw {
		return nil, errs.New(errs.Corrupt, "decoded %d bytes, the frame header says %d", len(out), raw)
	}
	return out, nil
}
func (z zstdDecompressor) reset() {} // DecodeAll keeps no reference to its input

// appendWriter is an io.Writer appending to a slice.
type appendWriter struct{ b []byte }

func (a *appendWriter) Write(p []byte) (int, error) { a.b = append(a.b, p...); return len(p), nil }

type gzipCompressor struct {
	w   *gzip.Writer
	out appendWriter
}

func (g *gzipCompressor) compress(dst, src []byte) ([]byte, error) {
	g.out.b = dst
	g.w.Reset(&g.out)
	if _, err := g.w.Write(src); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "gzip")
	}
	if err := g.w.Close(); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "gzip")
	}
	b := g.out.b
	g.out.b = nil
	return b, nil
}

type gzipDecompressor struct {
	r  *gzip.Reader
	br bytes.Reader
}

func (g *gzipDecompressor) decompress(dst, src []byte, raw int) ([]byte, error) {
	g.br.Reset(src)
	if g.r == nil {
		r, err := gzip.NewReader(&g.br)
		if err != nil {
			return nil, err
		}
		g.r = r
	} else if err := g.r.Reset(&g.br); err != nil {
		return nil, err
	}
	g.r.Multistream(false)
	out := dst[:raw]
	if _, err := io.ReadFull(g.r, out); err != nil {
		return nil, err
	}
	// Exactly raw bytes: one more byte, or trailing data after the gzip member, is an error.
	var one [1]byte
	if n, err := g.r.Read(one[:]); n != 0 || err != io.EOF {
		return nil, errs.New(errs.Corrupt, "decodes to more than the %d bytes the frame header says", raw)
	}
	if g.br.Len() != 0 {
		return nil, errs.New(errs.Corrupt, "has %d bytes after the gzip data", g.br.Len())
	}
	return out, nil
}
func (g *gzipDecompressor) reset() {
	g.br.Reset(nil) // drop the reference to the last frame before the state is pooled
	if g.r != nil {
		_ = g.r.Reset(&g.br)
	}
}

type noneCodec struct{}

func (noneCodec) compress(dst, src []byte) ([]byte, error) { return append(dst, src...), nil }
func (noneCodec) decompress(dst, src []byte, raw int) ([]byte, error) {
	if len(src) != raw {
		return nil, errs.New(errs.Corrupt, "holds %d bytes, the frame header says %d", len(src), raw)
	}
	return append(dst[:0], src...), nil
}
func (noneCodec) reset() {}
