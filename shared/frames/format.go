// Package frames implements the framed artifact format: a byte stream cut into frames that are compressed
// independently, sealed with AES-256-GCM under a per-artifact data key, and hashed, followed by an index and
// a fixed-size footer. docs/frame-format.md specifies the byte layout; this file is its only encoder and
// decoder of fixed structures.
//
// Frames are compressed and sealed in parallel by a Writer and opened and decompressed in parallel by a
// Reader, with output strictly in order and memory bounded by a few frames per worker. A Reader consumes
// its source sequentially (no seeking) and fails fast: the first bad frame stops it with an errs.Corrupt
// error naming the frame, and io.EOF is returned only after the index and footer have been checked.
package frames

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"

	"troveng.dev/shared/errs"
)

// DefaultFrameSize is the raw bytes per frame when Options.FrameSize is 0.
const DefaultFrameSize = 4 << 20

// MaxFrameSize is the largest frame size a writer accepts and a reader believes.
const MaxFrameSize = 64 << 20

// MinFrameSize is the smallest frame size a writer accepts and a reader believes.
const MinFrameSize = 64 << 10

// MaxArtifactIDLen is the longest artifact id.
const MaxArtifactIDLen = 200

// Version is the format version written and read.
const Version = 1

// Codec numbers in the file header.
const (
	codecNone = 0
	codecZstd = 1
	codecGzip = 2
)

var codecNames = map[byte]string{codecNone: "none", codecZstd: "zstd", codecGzip: "gzip"}

// Sizes of the fixed structures (see docs/frame-format.md).
const (
	fileMagic      = "TRVFRAME"
	fileFixedLen   = 16 // magic, version, codec, flags, id length, frame size
	keyCheckLen    = 16 // GCM tag over the empty message, in sealed headers only
	frameMagic     = "TVFR"
	frameHeaderLen = 24
	digestLen      = sha256.Size
	indexMagic     = "TVIX"
	indexHeaderLen = 16
	indexEntryLen  = 48
	footerMagic    = "TVFT"
	footerEndMagic = "TVFRMEND"
	footerLen      = 64
	tagLen         = 16
	maxFrames      = 1 << 32 // frame numbers stay far below the key-check nonce
)

// Flag bits.
const (
	headerSealed = 1 << 0
	frameFinal   = 1 << 0
)

// maxStored bounds a frame's stored body for a frame size: the worst-case expansion of zstd and deflate on
// incompressible input is well under 1/64 plus a few hundred bytes, and a seal adds the 16-byte tag.
func maxStored(frameSize int) int { return frameSize + frameSize/64 + 4096 + tagLen }

// fileHeader is the decoded file header.
type fileHeader struct {
	codec     byte
	sealed    bool
	frameSize int
	id        string
	digest    [digestLen]byte // SHA-256 of the header bytes before it; bound into every frame
	keyCheck  [keyCheckLen]byte
	raw       []byte // the encoded header, as stored
}

// encode builds the header; seal (nil when unsealed) makes the key check tag over the bytes before it.
func (h *fileHeader) encode(seal func(prefix []byte) []byte) {
	b := make([]byte, 0, fileFixedLen+len(h.id)+keyCheckLen+digestLen)
	b = append(b, fileMagic...)
	var flags byte
	if h.sealed {
		flags |= headerSealed
	}
	b = append(b, Version, h.codec, flags, byte(len(h.id)))
	b = binary.BigEndian.AppendUint32(b, uint32(h.frameSize))
	b = append(b, h.id...)
	if h.sealed {
		copy(h.keyCheck[:], seal(b))
		b = append(b, h.keyCheck[:]...)
	}
	h.digest = sha256.Sum256(b)
	h.raw = append(b, h.digest[:]...)
}

// parseFixed checks the first fileFixedLen bytes and returns the length of the rest of the header.
func (h *fileHeader) parseFixed(b []byte) (int, error) {
	if string(b[:8]) != fileMagic {
		return 0, errs.New(errs.Corrupt, "not a framed artifact: the file header's magic is %q, want %q", printable(b[:8]), fileMagic)
	}
	if b[8] != Version {
		return 0, errs.New(errs.Corrupt, "the file header says format version %d; this reader reads version %d (the artifact is damaged or was written by a newer troveng)", b[8], Version)
	}
	if _, ok := codecNames[b[9]]; !ok {
		return 0, errs.New(errs.Corrupt, "the file header names unknown codec %d", b[9])
	}
	h.codec = b[9]
	if b[10]&^headerSealed != 0 {
		return 0, errs.New(errs.Corrupt, "the file header has unknown flags %#x", b[10])
	}
	h.sealed = b[10]&headerSealed != 0
	idLen := int(b[11])
	if idLen == 0 || idLen > MaxArtifactIDLen {
		return 0, errs.New(errs.Corrupt, "the file header's artifact id length %d is outside 1..%d", idLen, MaxArtifactIDLen)
	}
	fs := binary.BigEndian.Uint32(b[12:16])
	if fs < MinFrameSize || fs > MaxFrameSize {
		return 0, errs.New(errs.Corrupt, "the file header's frame size %d is outside %d..%d", fs, MinFrameSize, MaxFrameSize)
	}
	h.frameSize = int(fs)
	n := idLen + digestLen
	if h.sealed {
		n += keyCheckLen
	}
	return n, nil
}

// parseRest checks the variable part (id, key check, digest); all is the whole header as read.
func (h *fileHeader) parseRest(all []byte) error {
	end := len(all) - digestLen
	sum := sha256.Sum256(all[:end])
	if !bytes.Equal(sum[:], all[end:]) {
		return errs.New(errs.Corrupt, "the file header fails its SHA-256 check: it was altered or damaged")
	}
	idLen := int(all[11])
	id := all[fileFixedLen : fileFixedLen+idLen]
	if err := validateID(string(id)); err != nil {
		return errs.New(errs.Corrupt, "the file header's artifact id is malformed")
	}
	h.id = string(id)
	h.digest = sum
	if h.sealed {
		copy(h.keyCheck[:], all[fileFixedLen+idLen:])
	}
	h.raw = all
	return nil
}

// keyCheckAAD is the part of the header the key check tag covers.
func (h *fileHeader) keyCheckAAD() []byte { return h.raw[:fileFixedLen+len(h.id)] }

func (h *fileHeader) codecName() string { return codecNames[h.codec] }

// frameHeader is the plaintext header in front of every frame body.
type frameHeader struct {
	number uint64
	raw    int // raw (uncompressed, plaintext) bytes
	stored int // body bytes as stored (compressed, plus the GCM tag when sealed)
	final  bool
}

func (f frameHeader) put(b []byte) {
	copy(b[0:4], frameMagic)
	binary.BigEndian.PutUint64(b[4:12], f.number)
	binary.BigEndian.PutUint32(b[12:16], uint32(f.raw))
	binary.BigEndian.PutUint32(b[16:20], uint32(f.stored))
	var flags byte
	if f.final {
		flags = frameFinal
	}
	b[20], b[21], b[22], b[23] = flags, 0, 0, 0
}

// parseFrameHeader decodes and bounds a frame header read from the stream, expecting frame number want.
func parseFrameHeader(b []byte, want uint64, h *fileHeader) (frameHeader, error) {
	if want >= maxFrames {
		return frameHeader{}, errs.New(errs.Corrupt, "frame %d: more frames than the format allows (%d)", want, uint64(maxFrames))
	}
	if string(b[0:4]) != frameMagic {
		return frameHeader{}, errs.New(errs.Corrupt, "frame %d: no frame header here (magic %q): frames are missing, out of place or damaged", want, printable(b[0:4]))
	}
	f := frameHeader{number: binary.BigEndian.Uint64(b[4:12])}
	if f.number != want {
		return frameHeader{}, errs.New(errs.Corrupt, "frame %d: found frame number %d here: frames were dropped, reordered or duplicated", want, f.number)
	}
	raw, stored := binary.BigEndian.Uint32(b[12:16]), binary.BigEndian.Uint32(b[16:20])
	if b[20]&^frameFinal != 0 || b[21]|b[22]|b[23] != 0 {
		return frameHeader{}, errs.New(errs.Corrupt, "frame %d: the frame header has unknown flags", want)
	}
	f.final = b[20]&frameFinal != 0
	if raw > uint32(h.frameSize) {
		return frameHeader{}, errs.New(errs.Corrupt, "frame %d claims %d raw bytes; frames of this artifact hold at most %d", want, raw, h.frameSize)
	}
	if !f.final && raw != uint32(h.frameSize) {
		return frameHeader{}, errs.New(errs.Corrupt, "frame %d is not final but holds %d raw bytes instead of the frame size %d", want, raw, h.frameSize)
	}
	if stored > uint32(maxStored(h.frameSize)) {
		return frameHeader{}, errs.New(errs.Corrupt, "frame %d claims %d stored bytes; the bound for this frame size is %d", want, stored, maxStored(h.frameSize))
	}
	if h.sealed && stored < tagLen {
		return frameHeader{}, errs.New(errs.Corrupt, "frame %d claims %d stored bytes, fewer than a sealed frame's tag", want, stored)
	}
	f.raw, f.stored = int(raw), int(stored)
	return f, nil
}

// nonce is the GCM nonce of a frame: its number and final flag. Deterministic nonces are safe only because
// every artifact is sealed under its own fresh random data key, so (key, nonce) never repeats.
func nonce(number uint64, final bool) [12]byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[0:8], number)
	if final {
		n[11] = 1
	}
	return n
}

// keyCheckNonce is reserved for the header's key check; no frame can have it (frame numbers < 2^32).
var keyCheckNonce = [12]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// aad is the additional data of a frame: the header digest (binding codec, frame size, sealing and the
// artifact id) followed by the frame header (binding number, sizes and the final flag).
func aad(dst []byte, h *fileHeader, fh []byte) []byte {
	dst = append(dst[:0], h.digest[:]...)
	return append(dst, fh[:frameHeaderLen]...)
}

// indexEntry describes one frame in the index.
type indexEntry struct {
	offset uint64 // of the frame header, from the start of the artifact
	stored uint32
	raw    uint32
	digest [digestLen]byte
}

func (e *indexEntry) put(b []byte) {
	binary.BigEndian.PutUint64(b[0:8], e.offset)
	binary.BigEndian.PutUint32(b[8:12], e.stored)
	binary.BigEndian.PutUint32(b[12:16], e.raw)
	copy(b[16:48], e.digest[:])
}

func indexHeader(frames int) []byte {
	b := make([]byte, indexHeaderLen)
	copy(b, indexMagic)
	binary.BigEndian.PutUint64(b[8:16], uint64(frames))
	return b
}

func indexLen(frames int) int64 { return indexHeaderLen + int64(frames)*indexEntryLen }

type footer struct {
	indexOffset uint64
	indexLength uint64
	indexSHA256 [digestLen]byte
}

func (f *footer) encode() []byte {
	b := make([]byte, footerLen)
	copy(b[0:4], footerMagic)
	b[4] = Version
	binary.BigEndian.PutUint64(b[8:16], f.indexOffset)
	binary.BigEndian.PutUint64(b[16:24], f.indexLength)
	copy(b[24:56], f.indexSHA256[:])
	copy(b[56:64], footerEndMagic)
	return b
}

// checkFooter compares a footer read from the stream with the one the reader expects from what it saw.
func checkFooter(b []byte, want *footer) error {
	if string(b[0:4]) != footerMagic || string(b[56:64]) != footerEndMagic {
		return errs.New(errs.Corrupt, "the footer's magic is wrong: the footer is damaged or missing")
	}
	if b[4] != Version || b[5]|b[6]|b[7] != 0 {
		return errs.New(errs.Corrupt, "the footer's version or reserved bytes are wrong: the footer is damaged")
	}
	if binary.BigEndian.Uint64(b[8:16]) != want.indexOffset || binary.BigEndian.Uint64(b[16:24]) != want.indexLength {
		return errs.New(errs.Corrupt, "the footer places the index at %d+%d but it is at %d+%d: the footer is damaged",
			binary.BigEndian.Uint64(b[8:16]), binary.BigEndian.Uint64(b[16:24]), want.indexOffset, want.indexLength)
	}
	if !bytes.Equal(b[24:56], want.indexSHA256[:]) {
		return errs.New(errs.Corrupt, "the footer's index SHA-256 does not match the index: the footer or index is damaged")
	}
	return nil
}

// validateID checks an artifact id: 1..200 characters of [A-Za-z0-9._/-].
func validateID(id string) error {
	if id == "" {
		return errs.BadRequestf("artifact id is empty")
	}
	if len(id) > MaxArtifactIDLen {
		return errs.BadRequestf("artifact id is %d characters long; the limit is %d", len(id), MaxArtifactIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '/' || c == '-'
		if !ok {
			return errs.BadRequestf("artifact id %q has %q at position %d; use letters, digits and . _ / -", printable([]byte(id)), rune(c), i)
		}
	}
	return nil
}

// printable makes untrusted bytes safe to put into a message.
func printable(b []byte) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c < 0x20 || c >= 0x7f {
			c = '?'
		}
		out = append(out, c)
	}
	if len(out) > 64 {
		out = append(out[:64], "..."...)
	}
	return string(out)
}
