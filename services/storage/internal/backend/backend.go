// Package backend holds the storage strategies: where the storage service keeps artifacts. Each strategy
// (fs, s3, nats) implements Backend and registers a Factory under its name; the service opens one by name
// with string configuration (from flags or environment). docs/storage-strategies.md describes each one's
// configuration keys, layout and limits.
package backend

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key      string            `json:"key"`
	Size     int64             `json:"size"`
	SHA256   string            `json:"sha256"`             // lower-case hex of the whole object, recorded at put
	Metadata map[string]string `json:"metadata,omitempty"` // user metadata, see ValidateMetadata
	Modified time.Time         `json:"modified"`
	// Verified is when the storage service read the whole stored object back and found the recorded size
	// and SHA-256 (a direct upload's completion does, before recording it); zero if it never did. A put
	// over the key writes a new record, so it always refers to the bytes stored now.
	Verified time.Time `json:"verified,omitzero"`
}

// Backend is one storage strategy. Implementations are safe for concurrent use.
type Backend interface {
	// Put stores r's bytes under key atomically: nothing is visible under key until all bytes are durably
	// written and the size+SHA-256 (which Put computes itself while streaming) are recorded. If r returns an
	// error or ctx ends, nothing is visible and temporary data is removed. Overwrite of an existing key
	// replaces it atomically.
	Put(ctx context.Context, key string, r io.Reader, meta map[string]string) (ObjectInfo, error)
	// Get returns a reader of [offset, offset+length) (length < 0: to the end) and the object's info.
	// Range beyond the end -> errs.BadRequest ("range not satisfiable"); missing key -> errs.NotFound.
	// A length reaching past the end is cut at the end. ctx governs the reader too (reads fail once it
	// ends). The caller must Close the reader.
	Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, ObjectInfo, error)
	// Stat returns the info of key; missing key -> errs.NotFound.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List returns up to limit objects whose key starts with prefix and sorts after startAfter, in key order,
	// and a continuation token (the last key) when more exist. limit <= 0 means DefaultListLimit; larger
	// limits are cut to MaxListLimit.
	List(ctx context.Context, prefix, startAfter string, limit int) ([]ObjectInfo, string, error)
	// Delete removes key; missing key -> errs.NotFound.
	Delete(ctx context.Context, key string) error
	// Ping reports whether the backend is reachable (readiness).
	Ping(ctx context.Context) error
	// Close releases the backend's resources.
	Close() error
}

// DirectUpload is a multipart upload of a new data object that the client fills itself through presigned
// part URLs. Token names the upload (data object and upload id); the client hands it back unchanged.
type DirectUpload struct {
	Key      string
	Token    string
	PartSize int64 // every part but the last must have exactly this many bytes
	MaxParts int32 // highest part number
}

// PresignedRequest is a presigned HTTP request: a bearer secret that lets whoever holds it do one thing
// (upload one part, read one object) until Expires. Never log it or put it in an error.
type PresignedRequest struct {
	Part    int32               // part number (uploads), 0 for a get
	Method  string              // PUT or GET
	URL     string              // the secret
	Header  map[string][]string // headers the signature covers, to send unchanged (may be empty)
	Expires time.Time
}

// CompletedPart is a part the client uploaded: its number and the ETag the object store answered.
type CompletedPart struct {
	Number int32
	ETag   string
}

// Direct is implemented by strategies whose clients can move bytes straight to and from the object store
// (presigned multipart uploads and GETs), while the service only orchestrates and verifies.
type Direct interface {
	// CreateDirectUpload starts a multipart upload of a new data object for key (nothing becomes visible
	// until CompleteDirectUpload).
	CreateDirectUpload(ctx context.Context, key string, meta map[string]string) (DirectUpload, error)
	// PresignParts returns PUT URLs for the given part numbers (1..MaxParts). A token that does not name
	// an upload of key is errs.BadRequest.
	PresignParts(ctx context.Context, key, token string, parts []int32) ([]PresignedRequest, error)
	// CompleteDirectUpload completes the upload, reads the data object back and checks it has size bytes
	// with the given SHA-256 (lower-case hex); on mismatch it deletes the data and returns errs.Corrupt.
	// Only a verified object gets its record (the same as Put writes), replacing any previous one.
	CompleteDirectUpload(ctx context.Context, key, token string, parts []CompletedPart, size int64, sha256 string) (ObjectInfo, error)
	// AbortDirectUpload abandons the upload and frees its parts.
	AbortDirectUpload(ctx context.Context, key, token string) error
	// PresignGet returns a GET URL of key's current bytes (the client may send Range headers) and its info.
	PresignGet(ctx context.Context, key string) (PresignedRequest, ObjectInfo, error)
}

// StagedUpload is the state of a staged upload: Committed bytes are durable.
type StagedUpload struct {
	Key       string
	Token     string
	Committed int64
}

// Staged is implemented by strategies that keep a partial upload across the service's own restart: a
// client appends segments, each durable when AppendStaged returns, and after an interruption asks
// StagedStatus where to continue. Nothing is visible under the key until CompleteStaged.
type Staged interface {
	// BeginStaged starts a staged upload of key with meta.
	BeginStaged(ctx context.Context, key string, meta map[string]string) (StagedUpload, error)
	// StagedStatus returns the upload's state; a token that does not name an upload of key is
	// errs.NotFound.
	StagedStatus(ctx context.Context, key, token string) (StagedUpload, error)
	// AppendStaged writes r's bytes at offset, which must be the committed size (errs.Conflict
	// otherwise), and returns once they are durable. If r fails or ctx ends, the upload stays at its
	// previous committed size.
	AppendStaged(ctx context.Context, key, token string, offset int64, r io.Reader) (StagedUpload, error)
	// CompleteStaged makes the staged bytes the object key (atomically, as Put does), if they are size
	// bytes hashing to sha256; on mismatch the upload is dropped and the error is errs.Corrupt.
	CompleteStaged(ctx context.Context, key, token string, size int64, sha256 string) (ObjectInfo, error)
	// AbortStaged drops the upload (missing: errs.NotFound).
	AbortStaged(ctx context.Context, key, token string) error
	// AbortStagedPrefix drops every staged upload whose key starts with prefix and returns how many.
	AbortStagedPrefix(ctx context.Context, prefix string) (int, error)
}

// List limits shared by all strategies.
const (
	DefaultListLimit = 1000
	MaxListLimit     = 1000
)

// Metadata limits. Keys are restricted to characters that survive every strategy's encoding and an HTTP
// header name, so metadata can be shown or relayed unchanged.
const (
	MaxMetadataKeyLen = 128
	MaxMetadataBytes  = 8 << 10 // sum of len(key)+len(value) over all entries
)

// ValidateMetadata checks user metadata: keys of 1..128 characters [A-Za-z0-9._-], values valid UTF-8
// without control characters, at most MaxMetadataBytes in total.
func ValidateMetadata(meta map[string]string) error {
	total := 0
	for k, v := range meta {
		if k == "" {
			return errs.BadRequestf("metadata key is empty")
		}
		if len(k) > MaxMetadataKeyLen {
			return errs.BadRequestf("metadata key %.40q... is %d bytes long; the limit is %d", k, len(k), MaxMetadataKeyLen)
		}
		for i := 0; i < len(k); i++ {
			c := k[i]
			if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '.' && c != '_' && c != '-' {
				return errs.BadRequestf("metadata key %q has %q at position %d; use letters, digits, '.', '_' and '-'", strings.ToValidUTF8(k, "?"), rune(c), i)
			}
		}
		if !utf8.ValidString(v) {
			return errs.BadRequestf("metadata value of %q is not valid UTF-8", k)
		}
		for _, r := range v {
			if r < 0x20 || r == 0x7f {
				return errs.BadRequestf("metadata value of %q contains a control character", k)
			}
		}
		total += len(k) + len(v)
	}
	if total > MaxMetadataBytes {
		return errs.BadRequestf("metadata is %d bytes; the limit is %d", total, MaxMetadataBytes)
	}
	return nil
}

// copyMetadata returns a copy of meta, nil when empty (so empty metadata round-trips as nil everywhere).
func copyMetadata(meta map[string]string) map[string]string {
	if len(meta) == 0 {
		return nil
	}
	out := make(map[string]string, len(meta))
	for k, v := range meta {
		out[k] = v
	}
	return out
}

// resolveRange checks a requested range against an object of size bytes and returns the number of bytes to
// deliver. offset must lie inside the object (offset == 0 is always allowed, so an empty object can be read
// whole); length < 0 means to the end, and a length reaching past the end is cut at the end.
func resolveRange(key string, size, offset, length int64) (int64, error) {
	if offset < 0 {
		return 0, errs.BadRequestf("range of %q: offset %d is negative", key, offset)
	}
	if offset > 0 && offset >= size {
		return 0, errs.BadRequestf("range not satisfiable: offset %d is beyond the end of %q (%d bytes)", offset, key, size)
	}
	n := size - offset
	if length >= 0 && length < n {
		n = length
	}
	return n, nil
}

// normalizeLimit applies the list limit rules.
func normalizeLimit(limit int) int {
	if limit <= 0 {
		return DefaultListLimit
	}
	if limit > MaxListLimit {
		return MaxListLimit
	}
	return limit
}

// checkPut validates the arguments every Put receives.
func checkPut(key string, r io.Reader, meta map[string]string) error {
	if err := ids.ValidateKey(key); err != nil {
		return err
	}
	if r == nil {
		return errs.BadRequestf("put %q: no data reader", key)
	}
	return ValidateMetadata(meta)
}

// readerError marks an error returned by the caller's reader, so it is reported as the caller's problem
// (with the reader's own code if it has one) and not as a backend failure.
type readerError struct{ err error }

func (e *readerError) Error() string { return "reading the data to store: " + e.err.Error() }
func (e *readerError) Unwrap() error { return e.err }

// sourceReader wraps the caller's reader: ends reading when ctx ends and marks the reader's errors.
type sourceReader struct {
	ctx context.Context
	r   io.Reader
}

func (s sourceReader) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		return n, &readerError{err}
	}
	return n, err
}

// putError codes an error that ended a Put: the caller's context wins, then the reader's own failure, then
// the backend's (already coded) failure.
func putError(ctx context.Context, key string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return errs.Wrap(errs.CodeOfContext(ctx), context.Cause(ctx), "put %q abandoned, nothing stored", key)
	}
	var re *readerError
	if errors.As(err, &re) {
		code := errs.CodeOf(re.err)
		if code == errs.Internal {
			// A reader that fails without a code is the caller's input breaking off.
			code = errs.BadRequest
		}
		return errs.Wrap(code, re.err, "put %q: reading the data failed, nothing stored", key)
	}
	return err
}
