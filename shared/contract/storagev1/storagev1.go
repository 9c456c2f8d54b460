// Package storagev1 is the wire contract of the storage service, version 1: subjects and the JSON documents
// of each request and reply. Fields are only ever added in v1; a breaking change is a v2 package and subject space.
package storagev1

import "time"

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
)

// Subject returns the full subject of an endpoint.
func Subject(endpoint string) string { return Group + "." + endpoint }

// Object describes a stored object.
type Object struct {
	Key      string            `json:"key"`
	Size     int64             `json:"size"`
	SHA256   string            `json:"sha256"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Modified time.Time         `json:"modified"`
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
