// Package storagev1 is the wire contract of the storage service, version 1: subjects and the JSON documents
// of each request and reply. Fields are only ever added in v1; a breaking change is a v2 package and subject space.
package storagev1

import (
	"time"

	"troveng.dev/shared/errs"
)

// Subject prefix of every storage endpoint.
const Group = "trove.storage.v1"

// Endpoint names; the subject of each is Group + "." + name.
const (
	EndpointPut       = "put"
	EndpointGet       = "get"
	EndpointStat      = "stat"
	EndpointList      = "list"
	EndpointDelete    = "delete"
	EndpointCopy      = "copy"
	EndpointVerify    = "verify"
	EndpointJobStatus = "job_status"
	EndpointJobCancel = "job_cancel"
	EndpointJobList   = "job_list"

	// Direct transfers: the client moves the bytes straight to and from object storage through presigned
	// URLs; the service only orchestrates and verifies (strategies that support it: s3).
	EndpointPutDirect      = "put_direct"
	EndpointPresignParts   = "presign_parts"
	EndpointCompleteDirect = "complete_direct"
	EndpointAbortDirect    = "abort_direct"
	EndpointGetDirect      = "get_direct"
)

// NoDirect is in the bad_request message a strategy without direct transfers answers to the direct
// endpoints ("fs has no direct transfers; use put"): a client seeing it falls back to put/get.
const NoDirect = "has no direct transfers"

// Subject returns the full subject of an endpoint.
func Subject(endpoint string) string { return Group + "." + endpoint }

// Object describes a stored object.
type Object struct {
	Key      string            `json:"key"`
	Size     int64             `json:"size"`
	SHA256   string            `json:"sha256"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Modified time.Time         `json:"modified"`
	// Verified is when the storage service last read the whole object back and found the recorded size
	// and SHA-256 (a direct upload's completion does); absent if it never did.
	Verified time.Time `json:"verified,omitzero"`
}

// PutRequest opens an upload. The reply names the stream subject the client sends the bytes to (shared/stream);
// the stream's final acknowledgement carries the stored Object as JSON once it is durably written.
type PutRequest struct {
	Key      string            `json:"key"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// PutReply tells the client where to send the bytes.
type PutReply struct {
	Stream    string `json:"stream"`
	ChunkSize int    `json:"chunk_size"`
}

// GetRequest asks for an object's bytes (or a range) to be streamed to Stream, a receiver the client listens on.
// Length < 0 or 0 with Offset 0 means to the end (0 reads to the end too; an empty range is not useful).
type GetRequest struct {
	Key    string `json:"key"`
	Offset int64  `json:"offset,omitempty"`
	Length int64  `json:"length,omitempty"`
	Stream string `json:"stream"`
}

// GetReply is sent before the bytes start flowing; Length is how many bytes the stream will carry.
type GetReply struct {
	Object Object `json:"object"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
}

// KeyRequest names one object (stat, delete).
type KeyRequest struct {
	Key string `json:"key"`
}

// DeleteReply confirms a delete.
type DeleteReply struct {
	Deleted string `json:"deleted"`
}

// ListRequest lists objects whose keys start with Prefix, after StartAfter (a previous reply's Next).
type ListRequest struct {
	Prefix     string `json:"prefix,omitempty"`
	StartAfter string `json:"start_after,omitempty"`
	Limit      int    `json:"limit,omitempty"` // default DefaultListLimit, at most MaxListLimit
}

// Listing limits.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// ListReply is one page; Next is empty on the last page.
type ListReply struct {
	Objects []Object `json:"objects"`
	Next    string   `json:"next,omitempty"`
}

// CopyRequest starts a job that copies an object to a new key, re-reading and re-hashing every byte.
type CopyRequest struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	JobID       string `json:"job_id,omitempty"` // optional caller-chosen id: submitting it again returns the same job
}

// VerifyRequest starts a job that reads an object end to end and checks its recorded size and SHA-256.
type VerifyRequest struct {
	Key   string `json:"key"`
	JobID string `json:"job_id,omitempty"`
}

// VerifyResult is the result of a finished verify job.
type VerifyResult struct {
	Key    string `json:"key"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	OK     bool   `json:"ok"`
}

// JobRequest names a job (status, cancel).
type JobRequest struct {
	ID string `json:"id"`
}

// Job kinds of the storage service.
const (
	JobCopy   = "copy"
	JobVerify = "verify"
)

// PutDirectRequest starts a direct upload: a multipart upload of a new data object that stays invisible
// until complete_direct verifies it. Key and metadata are validated as for put.
type PutDirectRequest struct {
	Key      string            `json:"key"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// PutDirectReply names the upload. Every part but the last must be exactly PartSize bytes; Token is opaque
// and goes back unchanged with every later call.
type PutDirectReply struct {
	Key      string `json:"key"`
	Token    string `json:"token"`
	PartSize int64  `json:"part_size"`
	MaxParts int32  `json:"max_parts"`
}

// PresignPartsRequest asks for upload URLs of part numbers (1..MaxParts, at most MaxPresignBatch at a time).
type PresignPartsRequest struct {
	Key   string  `json:"key"`
	Token string  `json:"token"`
	Parts []int32 `json:"parts"`
}

// MaxPresignBatch bounds the parts of one presign_parts request.
const MaxPresignBatch = 1000

// PresignedRequest is one presigned HTTP request. The URL is a bearer secret until Expires: send it only to
// the object store, never log it.
type PresignedRequest struct {
	Part    int32               `json:"part,omitempty"`
	Method  string              `json:"method"`
	URL     string              `json:"url"`
	Header  map[string][]string `json:"header,omitempty"` // signed headers to send unchanged
	Expires time.Time           `json:"expires"`
}

// PresignPartsReply holds one request per asked part, in the asked order.
type PresignPartsReply struct {
	Parts []PresignedRequest `json:"parts"`
}

// CompletedPart is an uploaded part: its number and the ETag the object store answered.
type CompletedPart struct {
	Number int32  `json:"number"`
	ETag   string `json:"etag"`
}

// CompleteDirectRequest finishes a direct upload. Size and SHA256 are what the client sent; the service
// reads the data back and stores the object only if both match (corrupt otherwise, and nothing visible).
// Verification takes time proportional to the size, so the service answers at once with an empty reply and
// publishes the outcome to Reply (an _INBOX. subject the client subscribes to first) as a CompleteDirectResult.
type CompleteDirectRequest struct {
	Key    string          `json:"key"`
	Token  string          `json:"token"`
	Parts  []CompletedPart `json:"parts"`
	Size   int64           `json:"size"`
	SHA256 string          `json:"sha256"`
	Reply  string          `json:"reply"`
}

// CompleteDirectResult is the outcome of complete_direct: the stored object, or a coded error in the
// same JSON body form as error replies ({"error":{"code":..., "message":...}}).
type CompleteDirectResult struct {
	Object *Object     `json:"object,omitempty"`
	Error  *errs.Error `json:"error,omitempty"`
}

// AbortDirectRequest abandons a direct upload.
type AbortDirectRequest struct {
	Key   string `json:"key"`
	Token string `json:"token"`
}

// GetDirectReply answers get_direct ({key} as KeyRequest): the object's info and a GET URL of its bytes,
// which the client may read with Range headers. A whole-object read should be checked against
// Object.Size and Object.SHA256.
type GetDirectReply struct {
	Object  Object           `json:"object"`
	Request PresignedRequest `json:"request"`
}
