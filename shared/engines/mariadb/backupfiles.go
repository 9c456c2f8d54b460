package mariadb

import (
	"regexp"
	"strconv"
	"strings"

	"troveng.dev/shared/errs"
)

// Files mariadb-backup writes: into its --extra-lsndir (checkpoints and info) and into the backup itself.
const (
	CheckpointsFile = "xtrabackup_checkpoints"
	InfoFile        = "xtrabackup_info"
	BinlogInfoFile  = "xtrabackup_binlog_info"
)

// Backup types in xtrabackup_checkpoints.
const (
	BackupTypeFull        = "full-backuped"
	BackupTypeIncremental = "incremental"
	BackupTypeLogApplied  = "log-applied" // after --prepare
)

// Checkpoints is xtrabackup_checkpoints: which LSN range a backup holds. An incremental backup continues
// from its parent's ToLSN (mariadb-backup's own --incremental-basedir reads the same field).
type Checkpoints struct {
	BackupType string
	FromLSN    uint64 // 0 for a full backup
	ToLSN      uint64 // the checkpoint the data files are consistent from
	LastLSN    uint64 // the end of the copied redo log
}

// ParseCheckpoints reads xtrabackup_checkpoints ("key = value" lines).
func ParseCheckpoints(data []byte) (Checkpoints, error) {
	kv := parseKV(string(data))
	c := Checkpoints{BackupType: kv["backup_type"]}
	switch c.BackupType {
	case BackupTypeFull, BackupTypeIncremental, BackupTypeLogApplied:
	case "":
		return Checkpoints{}, errs.Internalf("%s names no backup_type: mariadb-backup did not finish writing it", CheckpointsFile)
	default:
		return Checkpoints{}, errs.Internalf("%s has unknown backup_type %q", CheckpointsFile, clip(c.BackupType))
	}
	for _, f := range []struct {
		key string
		dst *uint64
	}{{"from_lsn", &c.FromLSN}, {"to_lsn", &c.ToLSN}, {"last_lsn", &c.LastLSN}} {
		v, ok := kv[f.key]
		if !ok {
			return Checkpoints{}, errs.Internalf("%s has no %s", CheckpointsFile, f.key)
		}
		n, err := ParseLSN(v)
		if err != nil {
			return Checkpoints{}, errs.Internalf("%s: %s: %s", CheckpointsFile, f.key, errs.From(err).Message)
		}
		*f.dst = n
	}
	if c.ToLSN < c.FromLSN || c.LastLSN < c.ToLSN {
		return Checkpoints{}, errs.Internalf("%s is inconsistent: from_lsn %d, to_lsn %d, last_lsn %d", CheckpointsFile, c.FromLSN, c.ToLSN, c.LastLSN)
	}
	return c, nil
}

// ParseLSN reads a log sequence number as the manifest and xtrabackup_checkpoints write it (decimal).
func ParseLSN(s string) (uint64, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, errs.BadRequestf("LSN %q is not a decimal number", clip(s))
	}
	return n, nil
}

// Info is what the strategies use of xtrabackup_info.
type Info struct {
	ToolName      string // "mariadb-backup"
	ToolVersion   string // "10.11.18-MariaDB"
	ServerVersion string // "10.11.18-MariaDB-0+deb12u1-log"
	// Binlog is the server's binary log position at the backup's consistent point (zero without a binlog).
	Binlog      BinlogPosition
	Incremental bool
}

// ParseInfo reads xtrabackup_info.
func ParseInfo(data []byte) (Info, error) {
	kv := parseKV(string(data))
	in := Info{ToolName: kv["tool_name"], ToolVersion: kv["tool_version"], ServerVersion: kv["server_version"], Incremental: kv["incremental"] == "Y"}
	if in.ToolVersion == "" || in.ServerVersion == "" {
		return Info{}, errs.Internalf("%s names no tool_version or server_version: mariadb-backup did not finish writing it", InfoFile)
	}
	if bp := kv["binlog_pos"]; bp != "" {
		p, err := parseInfoBinlogPos(bp)
		if err != nil {
			return Info{}, err
		}
		in.Binlog = p
	}
	return in, nil
}

// BinlogPosition is a binary log position: file and offset, and the GTID of the last change.
type BinlogPosition struct {
	File string
	Pos  uint64
	GTID string
}

// IsZero reports that no position was recorded (the server had no binary log).
func (p BinlogPosition) IsZero() bool { return p == BinlogPosition{} }

// xtrabackup_info's binlog_pos: "filename 'mysql-bin.000001', position '780', GTID of the last change '0-1-3'"
// (the GTID part is missing when nothing was logged with a GTID).
var infoBinlogRe = regexp.MustCompile(`^filename '([^']*)', position '(\d+)'(?:, GTID of the last change '([^']*)')?`)

func parseInfoBinlogPos(s string) (BinlogPosition, error) {
	m := infoBinlogRe.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return BinlogPosition{}, errs.Internalf("%s: binlog_pos %q is not in the form mariadb-backup writes", InfoFile, clip(s))
	}
	return binlogPosition(m[1], m[2], m[3], InfoFile)
}

// ParseBinlogInfo reads xtrabackup_binlog_info as it is in the backup: "file<TAB>position[<TAB>gtid]".
func ParseBinlogInfo(data []byte) (BinlogPosition, error) {
	line := strings.TrimSpace(string(data))
	if line == "" {
		return BinlogPosition{}, nil
	}
	f := strings.Split(line, "\t")
	if len(f) < 2 || len(f) > 3 {
		return BinlogPosition{}, errs.Internalf("%s %q: want file, position and GTID separated by tabs", BinlogInfoFile, clip(line))
	}
	gtid := ""
	if len(f) == 3 {
		gtid = f[2]
	}
	return binlogPosition(f[0], f[1], gtid, BinlogInfoFile)
}

func binlogPosition(file, pos, gtid, from string) (BinlogPosition, error) {
	n, err := strconv.ParseUint(pos, 10, 64)
	if err != nil {
		return BinlogPosition{}, errs.Internalf("%s: binlog position %q is not a number", from, clip(pos))
	}
	if file == "" || strings.ContainsAny(file, "/\\") {
		return BinlogPosition{}, errs.Internalf("%s: binlog file %q is not a plain file name", from, clip(file))
	}
	if !ValidGTID(gtid) {
		return BinlogPosition{}, errs.Internalf("%s: GTID %q is not a domain-server-sequence list", from, clip(gtid))
	}
	return BinlogPosition{File: file, Pos: n, GTID: gtid}, nil
}

// parseKV reads "key = value" lines; values keep inner spaces; later keys win.
func parseKV(s string) map[string]string {
	kv := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return kv
}
