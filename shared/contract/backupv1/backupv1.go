// Package backupv1 is the wire contract of the backup and restore services (trove.backup.v1.<op>,
// trove.restore.v1.<op>): JSON requests and replies. Long operations are jobs (shared/jobs): their replies are
// the job record, followed by job_status / job_cancel and the job's events subject.
package backupv1

import (
	"time"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// Families and subject groups.
const (
	BackupFamily  = "backup"
	RestoreFamily = "restore"
	BackupGroup   = "trove.backup.v1"
	RestoreGroup  = "trove.restore.v1"
)

// Backup service endpoints.
const (
	OpCreate    = "create"     // CreateRequest -> jobs.Job (kind JobBackup)
	OpList      = "list"       // ListRequest -> ListReply
	OpShow      = "show"       // IDRequest -> catalog.Manifest
	OpVerify    = "verify"     // VerifyRequest -> jobs.Job (kind JobVerify)
	OpDelete    = "delete"     // DeleteRequest -> DeleteReply
	OpPrune     = "prune"      // PruneRequest -> DeleteReply
	OpJobStatus = "job_status" // IDRequest -> jobs.Job
	OpJobCancel = "job_cancel" // IDRequest -> jobs.Job
	OpJobList   = "job_list"   // {} -> []jobs.Job
)

// Restore service endpoints (job_status, job_cancel and job_list as above).
const (
	OpRestore = "restore" // RestoreRequest -> jobs.Job (kind JobRestore)
)

// Job kinds.
const (
	JobBackup  = "backup"
	JobVerify  = "verify"
	JobRestore = "restore"
)

// Subject of an endpoint of a family.
func Subject(group, op string) string { return group + "." + op }

// CreateRequest starts a backup of one guest.
type CreateRequest struct {
	Instance string `json:"instance"`
	// Strategy by name ("mariabackup", "mariadb-dump", "pg_basebackup", "pg_dump", "redis-rdb"); empty takes
	// the engine's default (the physical one).
	Strategy string `json:"strategy,omitempty"`
	// Type "full" (default) or "incremental" (strategies that support it).
	Type string `json:"type,omitempty"`
	// Parent of an incremental; empty takes the newest COMPLETED backup of the instance with the strategy.
	Parent string `json:"parent,omitempty"`
	// BackupID is an optional caller-chosen id (also the job id: submitting it again returns the same job).
	BackupID string `json:"backup_id,omitempty"`
	// Recipients are age public keys to wrap the data key for, in addition to the service's own.
	Recipients []string `json:"recipients,omitempty"`
	// Compression "zstd" (default), "gzip" or "none"; Level 0 is the codec's fast default.
	Compression string `json:"compression,omitempty"`
	Level       int    `json:"level,omitempty"`
	FrameSize   int    `json:"frame_size,omitempty"`
	// BandwidthLimit caps the job's bytes/s to storage (0: unlimited).
	BandwidthLimit int64             `json:"bandwidth_limit,omitempty"`
	Options        map[string]string `json:"options,omitempty"` // strategy options (docs/backup-strategies.md)
	Labels         map[string]string `json:"labels,omitempty"`
}

// Validate checks the ids before anything is looked up.
func (r *CreateRequest) Validate() error {
	if err := ids.Validate("instance", r.Instance); err != nil {
		return err
	}
	if r.BackupID != "" {
		if err := ids.Validate("backup", r.BackupID); err != nil {
			return err
		}
	}
	if r.Parent != "" {
		if err := ids.Validate("parent backup", r.Parent); err != nil {
			return err
		}
	}
	switch r.Type {
	case "", catalog.TypeFull, catalog.TypeIncremental:
	default:
		return errs.BadRequestf("backup type %q: want full or incremental", r.Type)
	}
	if r.Parent != "" && r.Type != catalog.TypeIncremental {
		return errs.BadRequestf("a parent is only meaningful for an incremental backup")
	}
	switch r.Compression {
	case "", "zstd", "gzip", "none":
	default:
		return errs.BadRequestf("compression %q: want zstd, gzip or none", r.Compression)
	}
	if r.BandwidthLimit < 0 {
		return errs.BadRequestf("bandwidth limit must not be negative")
	}
	return nil
}

// BackupResult is the result of a finished backup job.
type BackupResult struct {
	Backup catalog.Manifest `json:"backup"`
}

// ListRequest filters the catalog.
type ListRequest struct {
	Instance string `json:"instance,omitempty"`
	Engine   string `json:"engine,omitempty"`
	State    string `json:"state,omitempty"`
}

// ListReply lists backups oldest first; Unreadable names backups whose manifest could not be read.
type ListReply struct {
	Backups    []catalog.Manifest `json:"backups"`
	Unreadable map[string]string  `json:"unreadable,omitempty"`
}

// IDRequest names a backup or a job.
type IDRequest struct {
	ID string `json:"id"`
}

// Validate checks the id.
func (r *IDRequest) Validate() error { return ids.Validate("backup", r.ID) }

// VerifyRequest checks every frame of a backup (and with Chain, of every backup it depends on) without
// restoring: sizes, SHA-256 of every frame and of the frame index recorded in the manifest.
type VerifyRequest struct {
	ID    string `json:"id"`
	Chain bool   `json:"chain,omitempty"`
}

// Validate checks the id.
func (r *VerifyRequest) Validate() error { return ids.Validate("backup", r.ID) }

// VerifyResult is a finished verify job's result.
type VerifyResult struct {
	Verified []string `json:"verified"`
	Frames   int      `json:"frames"`
	Bytes    int64    `json:"bytes"`
}

// DeleteRequest deletes a backup; one that incrementals depend on is refused unless Cascade.
type DeleteRequest struct {
	ID      string `json:"id"`
	Cascade bool   `json:"cascade,omitempty"`
}

// Validate checks the id.
func (r *DeleteRequest) Validate() error { return ids.Validate("backup", r.ID) }

// DeleteReply lists what was deleted (or, for a dry-run prune, what would be).
type DeleteReply struct {
	Deleted []string `json:"deleted"`
	DryRun  bool     `json:"dry_run,omitempty"`
}

// PruneRequest applies a retention policy to one instance's backups (or all when Instance is empty).
type PruneRequest struct {
	Instance      string `json:"instance,omitempty"`
	KeepLast      int    `json:"keep_last,omitempty"`       // keep the newest N full chains
	KeepNewerThan string `json:"keep_newer_than,omitempty"` // Go duration ("168h"); chains with a newer backup are kept
	DryRun        bool   `json:"dry_run,omitempty"`
}

// Validate checks the policy's fields.
func (r *PruneRequest) Validate() error {
	if r.Instance != "" {
		if err := ids.Validate("instance", r.Instance); err != nil {
			return err
		}
	}
	if r.KeepLast < 0 {
		return errs.BadRequestf("keep_last must not be negative")
	}
	if r.KeepNewerThan != "" {
		if _, err := time.ParseDuration(r.KeepNewerThan); err != nil {
			return errs.BadRequestf("keep_newer_than %q is not a duration (e.g. 168h)", r.KeepNewerThan)
		}
	}
	return nil
}

// Restore modes.
const (
	ModeNew      = "new"      // the target is a fresh guest: its data dir is replaced (physical and logical)
	ModeExisting = "existing" // load a logical backup into a running instance, keeping what it has
)

// RestoreRequest restores a backup (with its whole chain) into a guest. It carries no secret: the
// identity that unwraps data keys is the restore service's own (a file or env), never a job parameter
// (job parameters are stored).
type RestoreRequest struct {
	Backup   string `json:"backup"`
	Instance string `json:"instance"`       // target guest
	Mode     string `json:"mode,omitempty"` // new (default) | existing
	JobID    string `json:"job_id,omitempty"`
	// BandwidthLimit caps the job's bytes/s from storage (0: unlimited).
	BandwidthLimit int64 `json:"bandwidth_limit,omitempty"`
}

// Validate checks the ids and the mode.
func (r *RestoreRequest) Validate() error {
	if err := ids.Validate("backup", r.Backup); err != nil {
		return err
	}
	if err := ids.Validate("instance", r.Instance); err != nil {
		return err
	}
	if r.JobID != "" {
		if err := ids.Validate("job", r.JobID); err != nil {
			return err
		}
	}
	switch r.Mode {
	case "", ModeNew, ModeExisting:
	default:
		return errs.BadRequestf("restore mode %q: want new or existing", r.Mode)
	}
	return nil
}

// RestoreResult is a finished restore job's result.
type RestoreResult struct {
	Backup   string   `json:"backup"`
	Instance string   `json:"instance"`
	Chain    []string `json:"chain"`
	Bytes    int64    `json:"bytes"`
	// Stages are busy times per stage (download, verify, decrypt, decompress, apply, prepare, start), ms.
	Stages     map[string]int64 `json:"stages,omitempty"`
	DurationMs int64            `json:"duration_ms"`
}
