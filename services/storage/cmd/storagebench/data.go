package main

import (
	"hash"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"strconv"
)

// castagnoli is CRC-32C: hardware-accelerated, so checking every byte of every transfer costs almost nothing
// next to the transfers themselves (SHA-256 would take a noticeable share of the 2 cores).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// source yields size bytes of ChaCha8 output. The same seed gives the same bytes however the reads are cut
// (ChaCha8.Read keeps its position mid-word), so both paths of a comparison move identical, incompressible
// data that never touches the disk. It also checksums what it hands out.
type source struct {
	rng  *rand.ChaCha8
	left int64
	sum  hash.Hash32
}

func newSource(seed uint64, size int64) *source {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	return &source{rng: rand.NewChaCha8(key), left: size, sum: crc32.New(castagnoli)}
}

func (s *source) Read(p []byte) (int, error) {
	if s.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	_, _ = s.rng.Read(p) // never fails
	_, _ = s.sum.Write(p)
	s.left -= int64(len(p))
	return len(p), nil
}

// CRC is the CRC-32C of the bytes read so far.
func (s *source) CRC() uint32 { return s.sum.Sum32() }

// sink discards what it is given, counting and checksumming it.
type sink struct {
	n   int64
	sum hash.Hash32
}

func newSink() *sink { return &sink{sum: crc32.New(castagnoli)} }

func (s *sink) Write(p []byte) (int, error) {
	_, _ = s.sum.Write(p)
	s.n += int64(len(p))
	return len(p), nil
}

func (s *sink) CRC() uint32 { return s.sum.Sum32() }

// formatSize prints a size the way the flags take it.
func formatSize(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + " GiB"
	case n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	default:
		return strconv.FormatInt(n, 10) + " B"
	}
}
