package storagev1

// Staged uploads: a put in segments whose every acknowledged segment is durable in the strategy, so a
// client that lost the storage service mid-upload (a restart, a broken link) continues from the first byte
// storage does not hold instead of starting over. Strategies that support it: fs.
const (
	EndpointStagedBegin    = "staged_begin"
	EndpointStagedStatus   = "staged_status"
	EndpointStagedAppend   = "staged_append"
	EndpointStagedComplete = "staged_complete"
	EndpointStagedAbort    = "staged_abort"
	// EndpointStagedPurge drops every staged upload under a prefix: a cleanup for whoever owns the keys
	// (a backup's leftovers when the writer that held the token is gone), not for the writers themselves.
	EndpointStagedPurge = "staged_purge"
)

// NoStaged is in the bad_request message a strategy without staged uploads answers to staged_begin
// ("nats has no staged uploads"): a client seeing it falls back to put.
const NoStaged = "has no staged uploads"

// StagedBeginRequest starts a staged upload of Key. Key and metadata are validated as for put.
type StagedBeginRequest struct {
	Key      string            `json:"key"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// StagedUpload is the state of a staged upload: Committed bytes are durable. Token is opaque and goes back
// unchanged with every later call.
type StagedUpload struct {
	Key       string `json:"key"`
	Token     string `json:"token"`
	Committed int64  `json:"committed"`
}

// StagedRequest names a staged upload (status).
type StagedRequest struct {
	Key   string `json:"key"`
	Token string `json:"token"`
}

// StagedAppendRequest opens a stream (the reply is a PutReply) whose bytes are written at Offset, which must
// be the upload's Committed size (conflict otherwise, the message giving the committed size). The stream's
// final acknowledgement carries the StagedUpload as JSON once the bytes are durable.
type StagedAppendRequest struct {
	Key    string `json:"key"`
	Token  string `json:"token"`
	Offset int64  `json:"offset"`
}

// StagedCompleteRequest makes the staged bytes the object Key, if they are Size bytes with SHA256 (lower-case
// hex); a mismatch is corrupt and drops the upload. The reply is the stored Object.
type StagedCompleteRequest struct {
	Key    string `json:"key"`
	Token  string `json:"token"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// StagedPurgeRequest drops every staged upload whose key starts with Prefix.
type StagedPurgeRequest struct {
	Prefix string `json:"prefix"`
}

// StagedPurgeReply counts the staged uploads dropped.
type StagedPurgeReply struct {
	Aborted int `json:"aborted"`
}
