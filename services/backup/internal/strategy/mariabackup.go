package strategy

// mariabackup: MariaDB's physical backup (the engine's default), full and incremental.
//
// The agent runs `mariadb-backup --backup --stream=mbstream` on the guest and streams its stdout, framed
// and sealed, straight into the artifact "data". The checkpoint files land in an --extra-lsndir under the
// data root, which this strategy reads (LSN range, binlog position and GTID, versions) and removes.
// An incremental continues from its parent's lsn_to (--incremental-lsn). docs/strategies-mariadb.md.

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/mariadb"
	"troveng.dev/shared/errs"
)

const (
	mariabackupName = "mariabackup"
	// mariabackupTool is the allow-list's name for the binary (the "mariabackup" alias runs the same one).
	mariabackupTool = "mariadb-backup"
	// mariabackupArtifact is the mbstream of one backup.
	mariabackupArtifact = "data"
	// mariabackupMaxParallel bounds the "parallel" option.
	mariabackupMaxParallel = 64
)

func init() { Register(mariabackupStrategy{}, true) }

type mariabackupStrategy struct{}

func (mariabackupStrategy) Name() string      { return mariabackupName }
func (mariabackupStrategy) Engine() string    { return guestv1.EngineMariaDB }
func (mariabackupStrategy) Incremental() bool { return true }

// mariabackupPlan is what one backup runs, worked out before anything runs on the guest.
type mariabackupPlan struct {
	lsnDir    string // absolute: the --extra-lsndir (one level under the data root: mariadb-backup makes one level only)
	scratch   string // absolute: the --target-dir (unused by a streamed backup, but it must not default to the cwd)
	args      []string
	parentLSN uint64 // an incremental's --incremental-lsn (the parent's lsn_to)
	parentEnd uint64 // the parent's lsn_last, when recorded: the server's LSN must not be behind it now
	parallel  int
}

// mariabackupOptions are the strategy options a backup accepts (CreateRequest.Options).
var mariabackupOptions = map[string]string{
	"parallel":   "threads copying data files (1-64; default 1)",
	"checkpoint": "force an InnoDB checkpoint first, so the next incremental starts from now (true or false; default true)",
}

func planMariabackup(req Request) (mariabackupPlan, error) {
	if err := mariadbCheckOptions(mariabackupName, req.Options, mariabackupOptions); err != nil {
		return mariabackupPlan{}, err
	}
	p := mariabackupPlan{
		lsnDir:   mariadb.Abs(".trove-backup-" + req.BackupID),
		scratch:  mariadb.Abs(".trove-backup-" + req.BackupID + "-scratch"),
		parallel: 1,
	}
	if v, ok := req.Options["parallel"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > mariabackupMaxParallel {
			return mariabackupPlan{}, errs.BadRequestf("mariabackup option parallel=%q: want a whole number from 1 to %d", v, mariabackupMaxParallel)
		}
		p.parallel = n
	}
	checkpoint := true
	if v, ok := req.Options["checkpoint"]; ok {
		switch strings.ToLower(v) {
		case "true", "yes", "1":
		case "false", "no", "0":
			checkpoint = false
		default:
			return mariabackupPlan{}, errs.BadRequestf("mariabackup option checkpoint=%q: want true or false", v)
		}
	}
	p.args = append(mariadb.ClientArgs(),
		"--backup",
		"--stream=mbstream",
		"--target-dir="+p.scratch,
		"--extra-lsndir="+p.lsnDir,
		"--parallel="+strconv.Itoa(p.parallel),
	)
	if checkpoint {
		// to_lsn is the checkpoint the backup starts from; without a fresh one it can lag far behind (an idle
		// server may not checkpoint for hours), and the next incremental would copy every page since.
		p.args = append(p.args, "--innodb-log-checkpoint-now")
	}
	switch req.Type {
	case catalog.TypeFull, "":
		if req.Parent != nil {
			return mariabackupPlan{}, errs.BadRequestf("a full mariabackup backup takes no parent (got %s)", req.Parent.ID)
		}
	case catalog.TypeIncremental:
		lsn, end, err := mariabackupParent(req)
		if err != nil {
			return mariabackupPlan{}, err
		}
		p.parentLSN, p.parentEnd = lsn, end
		p.args = append(p.args, "--incremental-lsn="+strconv.FormatUint(lsn, 10))
	default:
		return mariabackupPlan{}, errs.BadRequestf("backup type %q: mariabackup makes full or incremental backups", req.Type)
	}
	return p, nil
}

// mariabackupParent checks an incremental's parent and returns the LSN to continue from.
func mariabackupParent(req Request) (lsn, end uint64, err error) {
	par := req.Parent
	if par == nil {
		return 0, 0, errs.BadRequestf("an incremental mariabackup backup needs a parent: take a full backup first")
	}
	if par.Strategy != mariabackupName || par.Engine != guestv1.EngineMariaDB {
		return 0, 0, errs.BadRequestf("parent %s was made by %s (%s); a mariabackup incremental continues only a mariabackup backup", par.ID, par.Strategy, par.Engine)
	}
	if par.State != catalog.StateCompleted {
		return 0, 0, errs.Conflictf("parent %s is %s; an incremental continues only a COMPLETED backup", par.ID, par.State)
	}
	v, ok := par.Positions["lsn_to"]
	if !ok {
		return 0, 0, errs.BadRequestf("parent %s records no lsn_to position; take a full backup instead", par.ID)
	}
	if lsn, err = mariadb.ParseLSN(v); err != nil {
		return 0, 0, errs.BadRequestf("parent %s: lsn_to: %s", par.ID, errs.From(err).Message)
	}
	if v, ok := par.Positions["lsn_last"]; ok {
		if end, err = mariadb.ParseLSN(v); err != nil {
			return 0, 0, errs.BadRequestf("parent %s: lsn_last: %s", par.ID, errs.From(err).Message)
		}
	}
	// Pages are copied by LSN: the parent must be of the same server release series as the server now.
	pv, perr := mariadb.ParseVersion(mariabackupManifestVersion(par))
	gv, gerr := mariadb.ParseVersion(mariabackupGuestVersion(req.Registration))
	if perr == nil && gerr == nil && pv.CompareSeries(gv) != 0 {
		return 0, 0, errs.Conflictf("parent %s was taken from MariaDB %s but the guest now runs %s: take a full backup after an upgrade", par.ID, pv.Series(), gv.Series())
	}
	return lsn, end, nil
}

// mariabackupManifestVersion is the server version a backup recorded.
func mariabackupManifestVersion(m *catalog.Manifest) string {
	if m.EngineVersion != "" {
		return m.EngineVersion
	}
	return m.Options["server_version"]
}

// mariabackupGuestVersion is the server version a guest's agent reports.
func mariabackupGuestVersion(r guestv1.Registration) string {
	if r.EngineVersion != "" {
		return r.EngineVersion
	}
	return r.Status.Version
}

func (mariabackupStrategy) Backup(ctx context.Context, req Request) (Result, error) {
	p, err := planMariabackup(req)
	if err != nil {
		return Result{}, err
	}
	// A retried job may find the previous attempt's files: start clean, and leave nothing behind.
	if err := mariabackupCleanup(ctx, req, p); err != nil {
		return Result{}, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = mariabackupCleanup(cctx, req, p) // best effort: the backup's outcome is already decided
	}()

	r, err := Run(ctx, req, "backup", ToStorage(req, mariabackupArtifact, mariabackupTool, p.args...))
	if err != nil {
		return Result{}, mariadbWrap(err, "mariadb-backup --backup of backup %s", req.BackupID)
	}
	prod, err := Produce(mariabackupArtifact, r)
	if err != nil {
		return Result{}, err
	}
	cp, info, err := mariabackupReadResult(ctx, req, p)
	if err != nil {
		return Result{}, err
	}
	if err := p.verify(req, cp, info); err != nil {
		return Result{}, err
	}
	res := Result{
		Artifacts: []Produced{prod},
		Positions: map[string]string{
			"lsn_from": strconv.FormatUint(cp.FromLSN, 10),
			"lsn_to":   strconv.FormatUint(cp.ToLSN, 10),
			"lsn_last": strconv.FormatUint(cp.LastLSN, 10),
		},
		Tools:   map[string]string{mariabackupTool: info.ToolVersion},
		Options: map[string]string{"server_version": info.ServerVersion, "parallel": strconv.Itoa(p.parallel), "format": "mbstream"},
	}
	if !info.Binlog.IsZero() {
		res.Positions["binlog_file"] = info.Binlog.File
		res.Positions["binlog_pos"] = strconv.FormatUint(info.Binlog.Pos, 10)
		if info.Binlog.GTID != "" {
			res.Positions["gtid"] = info.Binlog.GTID
		}
	}
	if req.Type == catalog.TypeIncremental {
		res.Options["incremental_lsn"] = strconv.FormatUint(p.parentLSN, 10)
	}
	return res, nil
}

// mariabackupReadResult reads the checkpoint and info files of the finished backup from its extra-lsndir.
func mariabackupReadResult(ctx context.Context, req Request, p mariabackupPlan) (mariadb.Checkpoints, mariadb.Info, error) {
	dir, err := mariadb.Rel(p.lsnDir)
	if err != nil {
		return mariadb.Checkpoints{}, mariadb.Info{}, err
	}
	cf, err := req.Guest.ReadFile(ctx, dir+"/"+mariadb.CheckpointsFile)
	if err != nil {
		return mariadb.Checkpoints{}, mariadb.Info{}, mariadbWrap(err, "read %s of backup %s", mariadb.CheckpointsFile, req.BackupID)
	}
	cp, err := mariadb.ParseCheckpoints(cf.Data)
	if err != nil {
		return mariadb.Checkpoints{}, mariadb.Info{}, err
	}
	inf, err := req.Guest.ReadFile(ctx, dir+"/"+mariadb.InfoFile)
	if err != nil {
		return mariadb.Checkpoints{}, mariadb.Info{}, mariadbWrap(err, "read %s of backup %s", mariadb.InfoFile, req.BackupID)
	}
	info, err := mariadb.ParseInfo(inf.Data)
	if err != nil {
		return mariadb.Checkpoints{}, mariadb.Info{}, err
	}
	return cp, info, nil
}

// verify checks the tool made the backup that was asked for, continuing the parent where it should.
func (p mariabackupPlan) verify(req Request, cp mariadb.Checkpoints, info mariadb.Info) error {
	if req.Type == catalog.TypeIncremental {
		if cp.BackupType != mariadb.BackupTypeIncremental || !info.Incremental {
			return errs.Internalf("backup %s: mariadb-backup wrote a %s backup, not the incremental asked for", req.BackupID, cp.BackupType)
		}
		if cp.FromLSN != p.parentLSN {
			return errs.Internalf("backup %s starts at LSN %d, but its parent ends at %d", req.BackupID, cp.FromLSN, p.parentLSN)
		}
		if cp.LastLSN < p.parentEnd {
			return errs.Conflictf("the server's LSN (%d) is behind the parent backup's end (%d): the instance was restored or re-created since; take a full backup", cp.LastLSN, p.parentEnd)
		}
		return nil
	}
	if cp.BackupType != mariadb.BackupTypeFull || info.Incremental {
		return errs.Internalf("backup %s: mariadb-backup wrote a %s backup, not the full backup asked for", req.BackupID, cp.BackupType)
	}
	return nil
}

// mariabackupCleanup removes the backup's extra-lsndir and scratch dir (absent is fine).
func mariabackupCleanup(ctx context.Context, req Request, p mariabackupPlan) error {
	for _, d := range []string{p.lsnDir, p.scratch} {
		rel, err := mariadb.Rel(d)
		if err != nil {
			return err
		}
		if _, err := req.Guest.Remove(ctx, guestv1.FileRemoveRequest{Path: rel, Recursive: true}); err != nil && !errs.Is(err, errs.NotFound) {
			return mariadbWrap(err, "remove %s on the guest", rel)
		}
	}
	return nil
}

// mariadbCheckOptions refuses strategy options the strategy does not know, naming the ones it does.
func mariadbCheckOptions(strategy string, got, known map[string]string) error {
	for k := range got {
		if _, ok := known[k]; !ok {
			names := make([]string, 0, len(known))
			for n, what := range known {
				names = append(names, n+" ("+what+")")
			}
			sort.Strings(names)
			list := strings.Join(names, ", ")
			if list == "" {
				list = "none"
			}
			return errs.BadRequestf("%s has no option %q; its options: %s", strategy, k, list)
		}
	}
	return nil
}

// mariadbWrap puts what was being done in front of err's message, keeping its code and redacting any
// credentials a client may have quoted.
func mariadbWrap(err error, format string, args ...any) error {
	e := errs.From(mariadb.RedactError(err))
	return errs.New(e.Code, "%s: %s", fmt.Sprintf(format, args...), e.Message)
}
