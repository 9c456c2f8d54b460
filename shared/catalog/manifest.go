// Package catalog is the backup catalog: each backup's self-describing manifest, stored next to its data in
// the storage service, and the operations over the set of them (list, chains, dependents, retention). The
// catalog is the storage: services keep no local state, so any replica can answer for any backup.
package catalog

import (
	"strings"
	"time"

	"troveng.dev/shared/datakey"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// ManifestVersion is the manifest format this package writes and reads.
const ManifestVersion = 1

// Backup states. A backup is COMPLETED only after its data and manifest are written and the stored
// checksums verified; RUNNING marks one in progress (or abandoned, for cleanup); FAILED keeps the reason.
const (
	StateRunning   = "RUNNING"
	StateCompleted = "COMPLETED"
	StateFailed    = "FAILED"
)

// Backup types.
const (
	TypeFull        = "full"
	TypeIncremental = "incremental"
)

// Prefix is where every backup lives in the storage service: backups/<id>/manifest.json and its artifacts.
const Prefix = "backups/"

// ManifestKey is the storage key of a backup's manifest.
func ManifestKey(id string) string { return Prefix + id + "/manifest.json" }

// ArtifactKey is the storage key of one of a backup's artifacts.
func ArtifactKey(id, name string) string { return Prefix + id + "/" + name }

// Manifest describes one backup completely: enough to verify and restore it with nothing else but an
// identity for its data key.
type Manifest struct {
	ManifestVersion int    `json:"manifest_version"`
	ID              string `json:"id"`
	Instance        string `json:"instance"`
	Engine          string `json:"engine"`
	EngineVersion   string `json:"engine_version,omitempty"`
	Strategy        string `json:"strategy"`
	Type            string `json:"type"`             // full | incremental
	Parent          string `json:"parent,omitempty"` // an incremental's parent backup id
	State           string `json:"state"`
	// Error is why a FAILED backup failed (a coded error, never with secrets).
	Error *errs.Error `json:"error,omitempty"`
	// Positions are the engine's positions at the backup: "lsn_from", "lsn_to" (mariabackup), "gtid",
	// "wal_start", "wal_end", "timeline" (PostgreSQL), "repl_offset" (Redis).
	Positions map[string]string `json:"positions,omitempty"`
	Artifacts []Artifact        `json:"artifacts"`
	// DataKey is the per-backup data key wrapped for age recipients.
	DataKey *datakey.Wrapped `json:"data_key,omitempty"`
	// Tools are the versions of the tools that made it ("mariabackup": "10.11.6"); restore refuses a
	// backup a target's tools can't read before any byte moves.
	Tools map[string]string `json:"tools,omitempty"`
	// Options are the strategy options the backup ran with (compression, frame size, bandwidth ...).
	Options map[string]string `json:"options,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Created time.Time         `json:"created"`
	Ended   time.Time         `json:"ended,omitzero"`
	// Stages are busy times per pipeline stage (read, compress, encrypt, hash, upload), ms.
	Stages map[string]int64 `json:"stages,omitempty"`
	// RawSize and StoredSize total the artifacts.
	RawSize    int64 `json:"raw_size"`
	StoredSize int64 `json:"stored_size"`
}

// Artifact is one stored object of a backup (a physical backup may have several: data, WAL ...).
type Artifact struct {
	Name        string `json:"name"` // e.g. "data", "wal"; the key is ArtifactKey(id, name)
	Key         string `json:"key"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
	RawSize     int64  `json:"raw_size"`
	Codec       string `json:"codec,omitempty"`
	Frames      int    `json:"frames,omitempty"`
	FrameSize   int    `json:"frame_size,omitempty"`
	IndexSHA256 string `json:"index_sha256,omitempty"`
	// ArtifactID is the id bound into every frame (the frames of another artifact are refused).
	ArtifactID string `json:"artifact_id,omitempty"`
	// Resumes counts how often the upload continued after storage went away mid-backup.
	Resumes int `json:"resumes,omitempty"`
}

// Validate checks a manifest read from storage or about to be written.
func (m *Manifest) Validate() error {
	if m.ManifestVersion != ManifestVersion {
		return errs.BadRequestf("backup %s has manifest version %d; this build reads version %d", m.ID, m.ManifestVersion, ManifestVersion)
	}
	if err := ids.Validate("backup", m.ID); err != nil {
		return err
	}
	if err := ids.Validate("instance", m.Instance); err != nil {
		return err
	}
	if m.Engine == "" || m.Strategy == "" {
		return errs.BadRequestf("backup %s: manifest names no engine or strategy", m.ID)
	}
	switch m.State {
	case StateRunning, StateCompleted, StateFailed:
	default:
		return errs.BadRequestf("backup %s: unknown state %q", m.ID, m.State)
	}
	switch m.Type {
	case TypeFull:
		if m.Parent != "" {
			return errs.BadRequestf("backup %s is full but names parent %s", m.ID, m.Parent)
		}
	case TypeIncremental:
		if err := ids.Validate("parent backup", m.Parent); err != nil {
			return err
		}
		if m.Parent == m.ID {
			return errs.BadRequestf("backup %s names itself as parent", m.ID)
		}
	default:
		return errs.BadRequestf("backup %s: unknown type %q (want full or incremental)", m.ID, m.Type)
	}
	for _, a := range m.Artifacts {
		if a.Name == "" || strings.ContainsAny(a.Name, "/\\") {
			return errs.BadRequestf("backup %s: artifact name %q is not a plain name", m.ID, a.Name)
		}
		if a.Key != ArtifactKey(m.ID, a.Name) {
			return errs.BadRequestf("backup %s: artifact %s is stored outside the backup (%s)", m.ID, a.Name, a.Key)
		}
	}
	if m.State == StateCompleted && len(m.Artifacts) == 0 {
		return errs.BadRequestf("backup %s is marked COMPLETED but has no artifacts", m.ID)
	}
	return nil
}

// Artifact returns the named artifact.
func (m *Manifest) Artifact(name string) (Artifact, bool) {
	for _, a := range m.Artifacts {
		if a.Name == name {
			return a, true
		}
	}
	return Artifact{}, false
}
