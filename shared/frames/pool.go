package frames

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"sync"
)

// Frame buffers and codec states are kept between artifacts: a Writer or Reader allocates a few frames
// and a codec state per worker, and a service handling artifact after artifact reuses them instead of
// allocating (and zeroing) tens of MiB each time.

// keyedPool is a set of sync.Pools, one per key.
type keyedPool[K comparable] struct{ m sync.Map }

func (p *keyedPool[K]) pool(k K) *sync.Pool {
	if v, ok := p.m.Load(k); ok {
		return v.(*sync.Pool)
	}
	v, _ := p.m.LoadOrStore(k, new(sync.Pool))
	return v.(*sync.Pool)
}

func (p *keyedPool[K]) get(k K) any    { return p.pool(k).Get() }
func (p *keyedPool[K]) put(k K, v any) { p.pool(k).Put(v) }

var (
	bufPool  keyedPool[int]    // by capacity: *[]byte
	compPool keyedPool[[2]int] // by codec and level
	decPool  keyedPool[[2]int] // by codec and frame size
)

// recCap is the capacity of a buffer that holds any stored frame of a frame size.
func recCap(frameSize int) int { return frameHeaderLen + maxStored(frameSize) + digestLen }

// getBuf returns an empty buffer of capacity c, reused when possible.
func getBuf(c int) []byte {
	if v := bufPool.get(c); v != nil {
		return (*(v.(*[]byte)))[:0]
	}
	return make([]byte, 0, c)
}

// tryBuf returns a pooled empty buffer of capacity c, or nil without allocating.
func tryBuf(c int) []byte {
	if v := bufPool.get(c); v != nil {
		return (*(v.(*[]byte)))[:0]
	}
	return nil
}

// putBuf keeps b for reuse if it has one of the two standard capacities of frameSize.
func putBuf(b []byte, frameSize int) {
	if c := cap(b); c == frameSize || c == recCap(frameSize) {
		b = b[:0]
		bufPool.put(c, &b)
	}
}

func getCompressor(codec byte, level int) (compressor, error) {
	if v := compPool.get([2]int{int(codec), level}); v != nil {
		return v.(compressor), nil
	}
	return newCompressor(codec, level)
}

func putCompressor(c compressor, codec byte, level int) { compPool.put([2]int{int(codec), level}, c) }

func getDecompressor(codec byte, frameSize int) (decompressor, error) {
	if v := decPool.get([2]int{int(codec), frameSize}); v != nil {
		return v.(decompressor), nil
	}
	return newDecompressor(codec, frameSize)
}

func putDecompressor(d decompressor, codec byte, frameSize int) {
	decPool.put([2]int{int(codec), frameSize}, d)
}

// nopHash stands in for the whole-artifact SHA-256 when the caller opted out (NoStoredHash).
type nopHash struct{}

func (nopHash) Write(p []byte) (int, error) { return len(p), nil }
func (nopHash) Sum(b []byte) []byte         { return b }
func (nopHash) Reset()                      {}
func (nopHash) Size() int                   { return 0 }
func (nopHash) BlockSize() int              { return 64 }

func newStoredHash(skip bool) hash.Hash {
	if skip {
		return nopHash{}
	}
	return sha256.New()
}

// storedSum is the hex digest, or "" when the hash was skipped.
func storedSum(h hash.Hash) string {
	if _, skipped := h.(nopHash); skipped {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}
