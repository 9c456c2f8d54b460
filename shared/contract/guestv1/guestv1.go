// Package guestv1 is the wire contract of the guest agent (trove.guest.<instance>.<operation>): the thin
// relay on every database host. The agent carries no engine knowledge beyond how to start its engine; every
// strategy service drives guests through these messages only.
//
// All requests and replies are JSON. Errors travel as coded errors (shared/errs) in the micro error headers.
package guestv1

import (
	"time"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// Family is the subject family: subjects are trove.guest.<instance>.<operation>.
const Family = "guest"

// Version of the contract and of the agent (SemVer; shown in $SRV INFO and in the registration).
const Version = "1.0.0"

// RegistryBucket is the JetStream KV bucket holding one Registration per guest (key = instance id).
const RegistryBucket = "trove_guests"

// Operations (micro endpoint names; no dots).
const (
	OpInfo         = "info"          // Info reply: the registration as the agent sees it now
	OpExec         = "exec"          // ExecRequest -> ExecStarted (at once; the tool runs on)
	OpExecWait     = "exec_wait"     // ExecWaitRequest -> ExecResult (long poll, bounded by WaitMs)
	OpExecCancel   = "exec_cancel"   // ExecRef -> ExecResult (Done false while the tool is being stopped)
	OpFileRead     = "file_read"     // FileRequest -> FileData (small files) ; large files: exec cat to a stream
	OpFileWrite    = "file_write"    // FileWriteRequest -> FileInfo (atomic: temp, fsync, rename)
	OpFileStat     = "file_stat"     // FileRequest -> FileInfo
	OpFileList     = "file_list"     // FileRequest -> FileList
	OpFileRemove   = "file_remove"   // FileRemoveRequest -> FileInfo of what was removed
	OpFileExtract  = "file_extract"  // ExtractRequest -> ExtractResult (tar from a stream or from storage)
	OpEngineStart  = "engine_start"  // EngineRequest -> EngineStatus (initialises the data dir on first start)
	OpEngineStop   = "engine_stop"   // EngineRequest -> EngineStatus
	OpEngineStatus = "engine_status" // EngineRequest -> EngineStatus
	OpEngineReset  = "engine_reset"  // EngineRequest -> EngineStatus: engine stopped, data dir emptied (restore target)
)

// Ops lists every operation (capabilities, permissions, docs).
var Ops = []string{OpInfo, OpExec, OpExecWait, OpExecCancel, OpFileRead, OpFileWrite, OpFileStat, OpFileList,
	OpFileRemove, OpFileExtract, OpEngineStart, OpEngineStop, OpEngineStatus, OpEngineReset}

// Group is the micro group of one guest's endpoints.
func Group(instance string) string { return "trove.guest." + instance }

// Subject is the subject of one operation on one guest. instance must have passed ids.Validate.
func Subject(instance, op string) string { return Group(instance) + "." + op }

// ValidateInstance checks an instance id before it becomes a subject token or a KV key.
func ValidateInstance(instance string) error { return ids.Validate("instance", instance) }

// Engines the guest image carries.
const (
	EngineMariaDB    = "mariadb"
	EnginePostgreSQL = "postgresql"
	EngineRedis      = "redis"
)

// Engines lists the engine names.
var Engines = []string{EngineMariaDB, EnginePostgreSQL, EngineRedis}

// Engine states.
const (
	EngineRunning = "running"
	EngineStopped = "stopped"
	EngineFailed  = "failed" // exited on its own, or never became healthy
)

// EngineStatus is the state of the guest's engine.
type EngineStatus struct {
	Engine  string `json:"engine"`
	Version string `json:"version,omitempty"` // e.g. "10.11.6" (the server binary's own version)
	State   string `json:"state"`
	Healthy bool   `json:"healthy"` // answers a trivial query on its local socket
	PID     int    `json:"pid,omitempty"`
	// DataDir is the engine's data dir inside the guest (the "data" root holds it).
	DataDir string `json:"data_dir,omitempty"`
	// Port the engine listens on; Address is the guest's own network address (for replicas, clients).
	Port    int    `json:"port,omitempty"`
	Message string `json:"message,omitempty"` // why it failed, from the engine's log tail
}

// EngineRequest starts, stops or resets the engine.
type EngineRequest struct {
	// Config is the engine's configuration file content, written to the config root before start
	// (my.cnf, postgresql.conf, redis.conf); empty keeps what is there (or the agent's minimal default).
	Config string `json:"config,omitempty"`
	// Args are extra server arguments from the caller, as an argument vector (validated like exec args).
	Args []string `json:"args,omitempty"`
	// WaitMs bounds how long start waits for the engine to be healthy (default 60 s), and stop for it to exit.
	WaitMs int64 `json:"wait_ms,omitempty"`
	// Init: on start, initialise the data dir if it is empty (default true; false starts only on existing data).
	NoInit bool `json:"no_init,omitempty"`
}

// Registration is a guest's record in RegistryBucket, rewritten on every heartbeat.
type Registration struct {
	Instance      string       `json:"instance"`
	Engine        string       `json:"engine"`
	EngineVersion string       `json:"engine_version"`
	AgentVersion  string       `json:"agent_version"`
	Address       string       `json:"address,omitempty"` // the guest's IP address as the agent sees it
	Capabilities  []string     `json:"capabilities"`      // operations, transforms ("frames", "zstd", "gzip", "aes-256-gcm")
	Tools         []string     `json:"tools"`             // the exec allow-list's tool names
	Roots         []string     `json:"roots"`             // file roots ("data", "config")
	Status        EngineStatus `json:"status"`
	Started       time.Time    `json:"started"`
	Heartbeat     time.Time    `json:"heartbeat"`
	// HeartbeatMs is the agent's heartbeat interval; a record older than StaleAfter() is stale.
	HeartbeatMs int64 `json:"heartbeat_ms"`
}

// StaleBeats is how many missed heartbeats make a guest stale.
const StaleBeats = 3

// StaleAfter is the age past which the record no longer proves the agent alive.
func (r Registration) StaleAfter() time.Duration {
	return time.Duration(r.HeartbeatMs) * time.Millisecond * StaleBeats
}

// Age is the time since the last heartbeat.
func (r Registration) Age(now time.Time) time.Duration { return now.Sub(r.Heartbeat) }

// Stale reports whether the agent missed StaleBeats heartbeats.
func (r Registration) Stale(now time.Time) bool { return r.Age(now) > r.StaleAfter() }

// Stdin modes of an exec.
const (
	StdinNone    = "none"    // /dev/null (default)
	StdinData    = "data"    // StdinSpec.Data (small, inline)
	StdinStream  = "stream"  // the caller Dials ExecStarted.StdinSubject (shared/stream) and writes
	StdinStorage = "storage" // the agent reads StdinSpec.Storage from the storage service (frames decoded)
)

// Stdout modes of an exec.
const (
	StdoutDiscard = "discard" // default
	StdoutCapture = "capture" // kept (at most MaxCapture bytes) and returned in ExecResult.Stdout
	StdoutStream  = "stream"  // the agent Dials StdoutSpec.StreamSubject (the caller's stream.Receiver)
	StdoutStorage = "storage" // the agent writes StdoutSpec.Storage to the storage service (frames encoded)
)

// Limits of the agent's requests.
const (
	MaxCapture     = 4 << 20  // captured stdout
	MaxStderrTail  = 16 << 10 // stderr kept (the tail)
	MaxInlineData  = 4 << 20  // StdinData, FileWriteRequest.Data, FileData.Data
	MaxRequestSize = 8 << 20  // any request body
	MaxArgs        = 256
	MaxArgLen      = 8 << 10
)

// ExecRequest runs one allow-listed tool. There is no shell: Args is the argument vector as is.
type ExecRequest struct {
	Tool string   `json:"tool"` // a name from the allow-list (Registration.Tools), not a path
	Args []string `json:"args,omitempty"`
	// Env adds variables whose names the tool's allow-list entry permits (e.g. MYSQL_PWD, PGPASSWORD,
	// REDISCLI_AUTH); the agent logs their names only, never their values.
	Env    map[string]string `json:"env,omitempty"`
	Stdin  StdinSpec         `json:"stdin"`
	Stdout StdoutSpec        `json:"stdout"`
	// Dir is a working directory under a root ("data/..." or "config/..."); default the data root.
	Dir string `json:"dir,omitempty"`
	// TimeoutMs ends the tool (SIGTERM to its process group, SIGKILL 5 s later) after this long; default none.
	TimeoutMs int64 `json:"timeout_ms,omitempty"`
	// BandwidthLimit caps the bytes/s moved to or from the storage service (0: unlimited).
	BandwidthLimit int64 `json:"bandwidth_limit,omitempty"`
}

// StdinSpec says where the tool's stdin comes from.
type StdinSpec struct {
	Mode    string      `json:"mode,omitempty"`
	Data    []byte      `json:"data,omitempty"`
	Storage *StorageRef `json:"storage,omitempty"`
}

// StdoutSpec says where the tool's stdout goes.
type StdoutSpec struct {
	Mode          string      `json:"mode,omitempty"`
	StreamSubject string      `json:"stream_subject,omitempty"`
	Storage       *StorageRef `json:"storage,omitempty"`
}

// StorageRef names an artifact in the storage service and how its bytes are framed.
type StorageRef struct {
	Key string `json:"key"` // storage object key (ids.ValidateKey)
	// Frames: the framed format (shared/frames). nil stores/reads the raw bytes.
	Frames *FrameSpec `json:"frames,omitempty"`
	// Meta is user metadata stored with the object (put only).
	Meta map[string]string `json:"meta,omitempty"`
	// Direct asks for direct transfers (presigned parts) where the storage strategy has them.
	Direct bool `json:"direct,omitempty"`
}

// FrameSpec parameterises the framed transform for one artifact.
type FrameSpec struct {
	Codec     string `json:"codec"`                // "zstd" (default), "gzip", "none"
	Level     int    `json:"level,omitempty"`      // codec level; 0 = the codec's fast default (zstd ~1, gzip 1)
	FrameSize int    `json:"frame_size,omitempty"` // raw bytes per frame; default shared/frames.DefaultFrameSize
	Workers   int    `json:"workers,omitempty"`    // parallel compressors; default GOMAXPROCS
	// ArtifactID is bound into every frame's authentication (frames of another artifact are refused).
	ArtifactID string `json:"artifact_id"`
	// Key is the 32-byte AES-256-GCM data key for this artifact only. The agent never stores or logs it.
	// nil leaves frames unencrypted (hashed only).
	Key []byte `json:"key,omitempty"`
	// IndexSHA256 (reading only): the frame index's SHA-256 the manifest recorded; the read fails as corrupt
	// if the stored index differs (frames swapped or replaced as a whole). Empty skips the check.
	IndexSHA256 string `json:"index_sha256,omitempty"`
}

// ExecStarted is the reply to exec.
type ExecStarted struct {
	ExecID string `json:"exec_id"`
	// StdinSubject is the agent's stream receiver when Stdin.Mode is "stream": Dial it and write stdin.
	StdinSubject string `json:"stdin_subject,omitempty"`
}

// ExecRef names a running or finished exec.
type ExecRef struct {
	ExecID string `json:"exec_id"`
}

// ExecWaitRequest waits for an exec to end.
type ExecWaitRequest struct {
	ExecID string `json:"exec_id"`
	// WaitMs is how long to wait at most before replying Done=false (default 10 s, at most 60 s).
	WaitMs int64 `json:"wait_ms,omitempty"`
}

// ExecResult is the outcome of an exec (Done false: still running). The agent keeps finished results for a
// while (ResultRetention) so a caller whose wait was cut can ask again.
type ExecResult struct {
	ExecID   string `json:"exec_id"`
	Tool     string `json:"tool"`
	Done     bool   `json:"done"`
	ExitCode int    `json:"exit_code"`        // -1 when killed by a signal or never started
	Signal   string `json:"signal,omitempty"` // e.g. "killed", when ended by a signal
	// StderrTail is the last MaxStderrTail bytes of stderr.
	StderrTail string `json:"stderr_tail,omitempty"`
	Stdout     []byte `json:"stdout,omitempty"` // capture mode
	// StdoutBytes and StdinBytes count the tool's own bytes (raw, before framing).
	StdoutBytes int64 `json:"stdout_bytes"`
	StdinBytes  int64 `json:"stdin_bytes"`
	// Artifact describes what a storage stdout wrote (nil otherwise, and nil when the exec failed: a failed
	// exec leaves no artifact behind).
	Artifact *Artifact `json:"artifact,omitempty"`
	// Error is the agent-side failure (the stream, storage, a frame that failed verification, cancel,
	// timeout); nil when the tool ran to its own exit. A non-zero ExitCode alone is not an Error.
	Error      *errs.Error `json:"error,omitempty"`
	Started    time.Time   `json:"started"`
	DurationMs int64       `json:"duration_ms"`
	// Extracted is set for a file_extract that finished.
	Extracted *ExtractResult `json:"extracted,omitempty"`
	// Stages are per-stage busy times of a storage transfer (read, compress, encrypt, hash, upload ...), ms.
	Stages map[string]int64 `json:"stages,omitempty"`
}

// OK reports whether the tool ran and exited 0 with no agent-side error.
func (r ExecResult) OK() bool { return r.Done && r.Error == nil && r.ExitCode == 0 }

// ResultRetention is how long the agent keeps a finished exec's result.
const ResultRetention = 10 * time.Minute

// Artifact is an object written by a storage stdout.
type Artifact struct {
	Key     string `json:"key"`
	Size    int64  `json:"size"`   // stored bytes
	SHA256  string `json:"sha256"` // of the stored bytes (hex), as the storage service recorded it
	RawSize int64  `json:"raw_size"`
	// Frame details (framed artifacts only).
	Codec  string `json:"codec,omitempty"`
	Frames int    `json:"frames,omitempty"`
	// IndexSHA256 is the SHA-256 of the frame index (hex): a manifest that records it can later prove the
	// stored frames are the ones written, without trusting the object.
	IndexSHA256 string `json:"index_sha256,omitempty"`
	// Resumes counts how often the upload continued after the storage service or the link to it failed.
	Resumes int `json:"resumes,omitempty"`
}

// File roots.
const (
	RootData   = "data"   // the engine's data dir parent: /var/lib/trove in the guest image
	RootConfig = "config" // engine configuration: /etc/trove in the guest image
)

// FileRequest names a path under a root: "data/mariadb/xtrabackup_checkpoints". Paths are slash-separated,
// relative to the root, with no "..", no leading "/", no control characters.
type FileRequest struct {
	Path string `json:"path"`
}

// FileWriteRequest writes a whole file atomically.
type FileWriteRequest struct {
	Path string `json:"path"`
	Data []byte `json:"data"`
	Mode uint32 `json:"mode,omitempty"` // default 0o640
	// Owner is "" (root) or the engine's user ("mysql", "postgres", "redis") the file must belong to.
	Owner string `json:"owner,omitempty"`
}

// FileRemoveRequest removes a file or, with Recursive, a directory tree.
type FileRemoveRequest struct {
	Path      string `json:"path"`
	Recursive bool   `json:"recursive,omitempty"`
}

// FileInfo describes one entry.
type FileInfo struct {
	Path    string    `json:"path"`
	Size    int64     `json:"size"`
	Mode    uint32    `json:"mode"`
	Dir     bool      `json:"dir,omitempty"`
	ModTime time.Time `json:"mod_time"`
}

// FileData is a read file.
type FileData struct {
	FileInfo
	Data []byte `json:"data"`
}

// FileList lists a directory (not recursive).
type FileList struct {
	Path    string     `json:"path"`
	Entries []FileInfo `json:"entries"`
}

// ExtractRequest unpacks a tar archive under a root, all or nothing: entries go to a temp dir beside the
// destination and are moved into place only when the whole archive was read. Entries that escape the
// destination (absolute, "..", through symlinks, hard links out, devices) fail the request and nothing is
// moved. Extract runs like an exec: the reply is ExecStarted (StdinSubject set for a "stream" source) and
// exec_wait returns the outcome, with ExecResult.Extracted.
type ExtractRequest struct {
	Path string `json:"path"` // destination dir under a root ("data/postgresql")
	// Source is "stream" (the caller Dials ExecStarted.StdinSubject and writes the tar) or "storage".
	Source  string      `json:"source"`
	Storage *StorageRef `json:"storage,omitempty"`
	// Replace empties the destination (inside the same all-or-nothing move); otherwise it must be empty
	// or absent.
	Replace bool   `json:"replace,omitempty"`
	Owner   string `json:"owner,omitempty"` // chown every entry to this engine user
	// Decompress names the codec the tar itself is compressed in (raw, unframed): "", "zstd" or "gzip".
	Decompress     string `json:"decompress,omitempty"`
	BandwidthLimit int64  `json:"bandwidth_limit,omitempty"`
}

// Extract sources.
const (
	SourceStream  = "stream"
	SourceStorage = "storage"
)

// ExtractResult is what an extract laid down.
type ExtractResult struct {
	Path    string `json:"path"`
	Entries int    `json:"entries"`
	Bytes   int64  `json:"bytes"`
}
