package strategy

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/postgresql"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
)

// PostgreSQL in the guest image (see the backup strategies): tools run as the postgres OS user over the
// unix socket; the data dir is data/postgresql under the agent's data root.
const (
	pgSocketDir   = "/run/postgresql"
	pgDefaultPort = 5432
	pgUser        = "postgres"
	pgOwner       = "postgres"       // the OS user owning the data dir
	pgDataRoot    = "/var/lib/trove" // the agent's "data" root in the guest image
	pgDefaultData = guestv1.RootData + "/postgresql"
	// pgStartWait bounds the engine's start after a restore (crash recovery replays the backup's WAL).
	pgStartWait = 10 * time.Minute
)

func pgConn(reg guestv1.Registration) []string {
	port := reg.Status.Port
	if port == 0 {
		port = pgDefaultPort
	}
	return []string{"-h", pgSocketDir, "-p", strconv.Itoa(port), "-U", pgUser}
}

// pgPsql is a psql call printing bare values, ignoring psqlrc, stopping at the first error, on database db.
func pgPsql(reg guestv1.Registration, db string, queries ...string) []string {
	args := append(pgConn(reg), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", postgresql.ConnDB(db))
	for _, q := range queries {
		args = append(args, "-c", q)
	}
	return args
}

// pgDataDir is the target's data dir as an agent path ("data/postgresql"): the agent's report, else the image's.
func pgDataDir(reg guestv1.Registration) (string, error) {
	d := reg.Status.DataDir
	if d == "" {
		return pgDefaultData, nil
	}
	rel, ok := strings.CutPrefix(path.Clean(d), pgDataRoot+"/")
	if !ok || rel == "" {
		return "", errs.Internalf("guest %s reports the data dir %q, outside the data root %s", reg.Instance, d, pgDataRoot)
	}
	return guestv1.RootData + "/" + rel, nil
}

// pgCheckCommon refuses what no PostgreSQL restore strategy can do: another engine, a chain (both strategies
// make full backups only), a mode the strategy lacks, a guest without the tools the strategy runs.
func pgCheckCommon(name string, req Request, modes []string, tools ...string) error {
	if len(req.Chain) != 1 {
		return errs.BadRequestf("a %s backup is a full backup; got a chain of %d", name, len(req.Chain))
	}
	m := req.Target()
	if m.Strategy != name {
		return errs.BadRequestf("backup %s was made by %s, not %s", m.ID, m.Strategy, name)
	}
	if m.Engine != guestv1.EnginePostgreSQL {
		return errs.BadRequestf("backup %s is of engine %s, not postgresql", m.ID, m.Engine)
	}
	if req.Registration.Engine != guestv1.EnginePostgreSQL {
		return errs.BadRequestf("backup %s is a PostgreSQL backup but guest %s runs %s (wrong engine): restore into a postgresql guest", m.ID, req.Registration.Instance, req.Registration.Engine)
	}
	if len(req.Registration.Tools) > 0 {
		for _, t := range tools {
			if !slices.Contains(req.Registration.Tools, t) {
				return errs.Unavailablef("guest %s cannot run %s (its agent's tools: %v)", req.Registration.Instance, t, req.Registration.Tools)
			}
		}
	}
	mode := req.Mode
	if mode == "" {
		mode = backupv1.ModeNew
	}
	for _, ok := range modes {
		if mode == ok {
			return nil
		}
	}
	return errs.BadRequestf("%s backups restore in mode %s only, not %s", name, strings.Join(modes, " or "), mode)
}

// pgBackupServer is the server version a backup was made from, as the backup strategy recorded it.
func pgBackupServer(m *catalog.Manifest) (postgresql.Version, error) {
	for _, s := range []string{m.Tools["postgresql"], m.Options["server_version_num"], m.EngineVersion} {
		if s != "" {
			return postgresql.ParseVersion(s)
		}
	}
	return postgresql.Version{}, errs.BadRequestf("backup %s records no PostgreSQL version; it cannot be checked against the target", m.ID)
}

// pgTargetServer is the target guest's server version as its agent registered it.
func pgTargetServer(reg guestv1.Registration) (postgresql.Version, error) {
	for _, s := range []string{reg.EngineVersion, reg.Status.Version} {
		if s != "" {
			return postgresql.ParseVersion(s)
		}
	}
	return postgresql.Version{}, errs.Unavailablef("guest %s has not reported its PostgreSQL version yet; retry once it has registered", reg.Instance)
}

// pgWrap puts what was being done in front of err's message, keeping its code and redacting statements and
// literals the tools quoted.
func pgWrap(err error, format string, args ...any) error {
	e := errs.From(err)
	return errs.New(e.Code, "%s: %s", fmt.Sprintf(format, args...), postgresql.RedactOutput(e.Message))
}

// pgStarted checks an engine start's outcome.
func pgStarted(st guestv1.EngineStatus, err error, what string) error {
	if err != nil {
		return pgWrap(err, "starting PostgreSQL %s", what)
	}
	if st.State != guestv1.EngineRunning || !st.Healthy {
		return errs.Internalf("PostgreSQL did not come up healthy %s (state %s): %s", what, st.State, postgresql.RedactOutput(st.Message))
	}
	return nil
}

// pgBasebackupRestore lays a pg_basebackup tar down as the guest's data dir and starts the server, which
// replays the WAL in the tar up to the backup's end point (docs/strategies-postgresql.md).
type pgBasebackupRestore struct{}

func init() { Register(pgBasebackupRestore{}) }

func (pgBasebackupRestore) Name() string { return "pg_basebackup" }

func (pgBasebackupRestore) Engine() string { return guestv1.EnginePostgreSQL }

// StagesChain: the extract replaces the data dir all or nothing, after the last frame and the index were checked.
func (pgBasebackupRestore) StagesChain() bool { return true }

// Check: a physical backup only restores onto a new guest whose server has the backup's major version (the
// on-disk format changes between major versions; minor versions share it).
func (s pgBasebackupRestore) Check(req Request) error {
	if err := pgCheckCommon(s.Name(), req, []string{backupv1.ModeNew}, "psql"); err != nil {
		return err
	}
	m := req.Target()
	if _, ok := m.Artifact(postgresql.BasebackupArtifact); !ok {
		return errs.BadRequestf("backup %s has no %q artifact", m.ID, postgresql.BasebackupArtifact)
	}
	b, err := pgBackupServer(m)
	if err != nil {
		return err
	}
	t, err := pgTargetServer(req.Registration)
	if err != nil {
		return err
	}
	if postgresql.CompareMajor(b, t) != 0 {
		return errs.BadRequestf("backup %s is a physical backup of PostgreSQL %s; guest %s runs PostgreSQL %s: a physical backup restores only onto the same major version (%s); use a guest with PostgreSQL %s, or a pg_dump backup",
			m.ID, b, req.Registration.Instance, t, b.MajorString(), b.MajorString())
	}
	return nil
}

func (s pgBasebackupRestore) Restore(ctx context.Context, req Request) error {
	if err := s.Check(req); err != nil {
		return err
	}
	m := req.Target()
	dataDir, err := pgDataDir(req.Registration)
	if err != nil {
		return err
	}
	src, err := req.Source(m, postgresql.BasebackupArtifact)
	if err != nil {
		return err
	}
	// Stopped, not reset: the extract below replaces the data dir all or nothing, so a failed download (a
	// bad frame, a cancelled job, storage gone) leaves the guest's data as it was, and PostgreSQL is started
	// again on it: the target is left as the restore found it.
	before, err := req.Guest.EngineStatus(ctx)
	if err != nil {
		return pgWrap(err, "asking PostgreSQL's state before the restore")
	}
	if _, err := req.Guest.EngineStop(ctx, guestv1.EngineRequest{}); err != nil {
		return pgWrap(err, "stopping PostgreSQL before the restore")
	}
	r, err := req.Guest.Extract(ctx, guestv1.ExtractRequest{
		Path:           dataDir,
		Source:         guestv1.SourceStorage,
		Storage:        src,
		Replace:        true,
		Owner:          pgOwner,
		BandwidthLimit: req.BandwidthLimit,
	}, nil)
	if err == nil {
		err = guestclient.Check(r)
	}
	if err != nil {
		err = pgWrap(err, "laying down the base backup in %s", dataDir)
		if before.State == guestv1.EngineRunning {
			if rerr := restartUntouched(ctx, req, "PostgreSQL", err); rerr != err {
				return errs.New(errs.CodeOf(rerr), "%s", postgresql.RedactOutput(errs.From(rerr).Message))
			}
		}
		return err
	}
	if req.Progress != nil && r.Extracted != nil {
		req.Progress(postgresql.BasebackupArtifact, r.Extracted.Bytes)
	}
	fi, err := req.Guest.Stat(ctx, dataDir)
	if err != nil {
		return pgWrap(err, "checking %s", dataDir)
	}
	if perm := fi.Mode & 0o777; perm&0o027 != 0 {
		return errs.Internalf("the agent laid %s down with mode %04o; PostgreSQL refuses a data dir that is not 0700 or 0750 (the agent's extract must create the destination with mode 0700)", dataDir, perm)
	}
	st, err := req.Guest.EngineStart(ctx, guestv1.EngineRequest{NoInit: true, WaitMs: pgStartWait.Milliseconds()})
	if err := pgStarted(st, err, "on the restored data dir"); err != nil {
		return err
	}
	out, err := Capture(ctx, req, "psql", pgPsql(req.Registration, "postgres", "select pg_is_in_recovery()", "show server_version_num")...)
	if err != nil {
		return pgWrap(err, "querying the restored server")
	}
	lines := strings.Fields(out)
	if len(lines) != 2 {
		return errs.Internalf("psql answered %q to two queries", out)
	}
	if lines[0] != "f" {
		return errs.Internalf("the restored server is still in recovery; it should have finished at the backup's end point %s", m.Positions["wal_end"])
	}
	return nil
}
