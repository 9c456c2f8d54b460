package strategy

import (
	"context"
	"strconv"
	"strings"
	"time"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/postgresql"
	"troveng.dev/shared/errs"
)

// pgDumpRestore loads a pg_dump backup: the globals (roles, memberships, tablespaces) with psql, then each
// database with pg_restore, into a new guest or into an existing instance (docs/strategies-postgresql.md).
type pgDumpRestore struct{}

func init() { Register(pgDumpRestore{}) }

func (pgDumpRestore) Name() string   { return "pg_dump" }
func (pgDumpRestore) Engine() string { return guestv1.EnginePostgreSQL }

// pgDumpLayout is a pg_dump backup's artifacts: the database held by each archive, in artifact order.
type pgDumpLayout struct {
	artifacts []string
	databases []string
}

// pgDumpLayoutOf reads the layout from the manifest and checks every artifact it names is there.
func pgDumpLayoutOf(m *catalog.Manifest) (pgDumpLayout, error) {
	if _, ok := m.Artifact(postgresql.DumpGlobalsArtifact); !ok {
		return pgDumpLayout{}, errs.BadRequestf("backup %s has no %q artifact", m.ID, postgresql.DumpGlobalsArtifact)
	}
	n, err := strconv.Atoi(m.Options[postgresql.DumpDatabasesOption])
	if err != nil || n < 0 {
		return pgDumpLayout{}, errs.BadRequestf("backup %s: option %s=%q is not a count of databases", m.ID, postgresql.DumpDatabasesOption, m.Options[postgresql.DumpDatabasesOption])
	}
	var l pgDumpLayout
	seen := map[string]bool{}
	for i := 1; i <= n; i++ {
		a, db := postgresql.DumpDatabaseArtifact(i), m.Options[postgresql.DumpDatabaseOption(i)]
		if db == "" {
			return pgDumpLayout{}, errs.BadRequestf("backup %s names no database for artifact %s (option %s)", m.ID, a, postgresql.DumpDatabaseOption(i))
		}
		if seen[db] {
			return pgDumpLayout{}, errs.BadRequestf("backup %s names database %q twice", m.ID, db)
		}
		seen[db] = true
		if _, ok := m.Artifact(a); !ok {
			return pgDumpLayout{}, errs.BadRequestf("backup %s has no artifact %s for database %q", m.ID, a, db)
		}
		l.artifacts = append(l.artifacts, a)
		l.databases = append(l.databases, db)
	}
	return l, nil
}

// pgDumpVersion is the pg_dump that wrote the archives (its archive format is what pg_restore must read).
func pgDumpVersion(m *catalog.Manifest) (postgresql.Version, error) {
	if s := m.Tools["pg_dump"]; s != "" {
		return postgresql.ParseVersion(s)
	}
	return pgBackupServer(m)
}

// pgDumpCompatible refuses archives from a newer pg_dump than the target's pg_restore: pg_restore reads the
// archive formats of its own and older releases only ("unsupported version in file header").
func pgDumpCompatible(m *catalog.Manifest, dump, restore postgresql.Version, instance, what string) error {
	if postgresql.CompareMajor(dump, restore) > 0 {
		return errs.BadRequestf("backup %s was written by pg_dump %s; guest %s has %s %s, which cannot read a newer major version's archives: restore onto PostgreSQL %s or newer",
			m.ID, dump, instance, what, restore, dump.MajorString())
	}
	return nil
}

// Check: modes new and existing; the target's PostgreSQL (and so its pg_restore, from the same packages)
// must be at least the backup's pg_dump major version. Restore checks the real pg_restore again.
func (s pgDumpRestore) Check(req Request) error {
	if err := pgCheckCommon(s.Name(), req, []string{backupv1.ModeNew, backupv1.ModeExisting}, "psql", "pg_restore"); err != nil {
		return err
	}
	m := req.Target()
	if _, err := pgDumpLayoutOf(m); err != nil {
		return err
	}
	dump, err := pgDumpVersion(m)
	if err != nil {
		return err
	}
	t, err := pgTargetServer(req.Registration)
	if err != nil {
		return err
	}
	return pgDumpCompatible(m, dump, t, req.Registration.Instance, "PostgreSQL")
}

// pgEmptySQL counts what a database holds beyond a fresh one: schemas other than public, relations,
// functions, enums and domains outside the system schemas, extensions other than plpgsql, large objects.
const pgEmptySQL = "select " +
	"(select count(*) from pg_namespace where nspname not in ('pg_catalog', 'information_schema', 'public', 'pg_toast') and nspname !~ '^pg_(temp|toast_temp)_')" +
	" + (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') and n.nspname !~ '^pg_(temp|toast_temp)_')" +
	" + (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname not in ('pg_catalog', 'information_schema'))" +
	" + (select count(*) from pg_type t join pg_namespace n on n.oid = t.typnamespace where t.typtype in ('d', 'e') and n.nspname not in ('pg_catalog', 'information_schema'))" +
	" + (select count(*) from pg_extension where extname <> 'plpgsql')" +
	" + (select count(*) from pg_largeobject_metadata)"

// globalsArgs replays pg_dumpall --globals-only on stdin. Errors do not stop it (ON_ERROR_STOP=0): the
// target's own roles (at least postgres) already exist and their CREATE ROLE fails with 42710, while the
// ALTER ROLE after it still sets the backup's attributes. VERBOSITY=verbose puts the SQLSTATE in every error
// line, so exactly that class can be told apart from the rest.
func globalsArgs(reg guestv1.Registration) []string {
	return append(pgConn(reg), "-X", "-q", "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=verbose", "-d", postgresql.ConnDB("postgres"), "-f", "-")
}

// pgRestoreArgs loads one archive from stdin. A database the target lacks is created from the archive
// (--create, connecting to postgres first, so its encoding, locale, owner, ACL and settings come along); one
// that exists (and is empty) is loaded into, in one transaction. The first error stops the load.
func pgRestoreArgs(reg guestv1.Registration, db string, create bool) []string {
	args := append(pgConn(reg), "--exit-on-error", "--no-password")
	if create {
		return append(args, "--create", "-d", postgresql.ConnDB("postgres"))
	}
	return append(args, "--single-transaction", "-d", postgresql.ConnDB(db))
}

// dropDatabaseScript drops the database named by the psql variable db (quoted by psql itself: any name).
const dropDatabaseScript = `DROP DATABASE IF EXISTS :"db" WITH (FORCE);` + "\n"

func (s pgDumpRestore) Restore(ctx context.Context, req Request) error {
	if err := s.Check(req); err != nil {
		return err
	}
	m := req.Target()
	l, err := pgDumpLayoutOf(m)
	if err != nil {
		return err
	}
	dump, err := pgDumpVersion(m)
	if err != nil {
		return err
	}
	out, err := Capture(ctx, req, "pg_restore", "--version")
	if err != nil {
		return pgWrap(err, "asking the target's pg_restore its version")
	}
	pr, err := postgresql.ParseVersion(out)
	if err != nil {
		return err
	}
	if err := pgDumpCompatible(m, dump, pr, req.Registration.Instance, "pg_restore"); err != nil {
		return err
	}

	if req.Mode == backupv1.ModeExisting {
		st, err := req.Guest.EngineStatus(ctx)
		if err != nil {
			return pgWrap(err, "asking guest %s for its engine's state", req.Registration.Instance)
		}
		if st.State != guestv1.EngineRunning || !st.Healthy {
			return errs.Unavailablef("PostgreSQL on guest %s is %s (healthy %v): an existing-mode restore loads into a running instance; start it first", req.Registration.Instance, st.State, st.Healthy)
		}
	} else {
		// A new guest: whatever it holds is replaced by a freshly initialised cluster.
		if _, err := req.Guest.EngineReset(ctx, guestv1.EngineRequest{}); err != nil {
			return pgWrap(err, "resetting PostgreSQL on guest %s", req.Registration.Instance)
		}
		st, err := req.Guest.EngineStart(ctx, guestv1.EngineRequest{WaitMs: pgStartWait.Milliseconds()})
		if err := pgStarted(st, err, "on a fresh data dir"); err != nil {
			return err
		}
	}

	exists, err := s.plan(ctx, req, l)
	if err != nil {
		return err
	}
	if err := s.globals(ctx, req, m); err != nil {
		return err
	}
	for i, db := range l.databases {
		if err := s.database(ctx, req, m, l.artifacts[i], db, !exists[db]); err != nil {
			return err
		}
	}
	return nil
}

// plan finds which of the backup's databases exist on the target, and refuses (before anything is loaded)
// when one of them holds anything: a restore never merges into or overwrites a database with data.
func (pgDumpRestore) plan(ctx context.Context, req Request, l pgDumpLayout) (map[string]bool, error) {
	out, err := Capture(ctx, req, "psql", pgPsql(req.Registration, "postgres", "select "+postgresql.HexNamesSQL("datname")+" from pg_database")...)
	if err != nil {
		return nil, pgWrap(err, "listing the target's databases")
	}
	names, err := postgresql.ParseHexLines(out)
	if err != nil {
		return nil, err
	}
	exists := map[string]bool{}
	for _, n := range names {
		exists[n] = true
	}
	var busy []string
	for _, db := range l.databases {
		if !exists[db] {
			continue
		}
		out, err := Capture(ctx, req, "psql", pgPsql(req.Registration, db, pgEmptySQL)...)
		if err != nil {
			return nil, pgWrap(err, "checking whether database %q on the target is empty", db)
		}
		if n, err := strconv.Atoi(strings.TrimSpace(out)); err != nil || n != 0 {
			busy = append(busy, strconv.Quote(db))
		}
	}
	if len(busy) > 0 {
		return nil, errs.Conflictf("database(s) %s exist on guest %s and are not empty; nothing was restored: drop or rename them first, or restore into a new guest (mode new)",
			strings.Join(busy, ", "), req.Registration.Instance)
	}
	return exists, nil
}

// globals replays the roles and tablespaces, tolerating only "already exists" (42710).
func (pgDumpRestore) globals(ctx context.Context, req Request, m *catalog.Manifest) error {
	src, err := req.Source(m, postgresql.DumpGlobalsArtifact)
	if err != nil {
		return err
	}
	r, err := Run(ctx, req, postgresql.DumpGlobalsArtifact, FromStorage(src, "psql", globalsArgs(req.Registration)...))
	if err != nil {
		return pgWrap(err, "replaying roles and tablespaces")
	}
	var bad []string
	for _, e := range postgresql.ParsePsqlErrors(r.StderrTail) {
		if e.SQLState != postgresql.SQLStateDuplicateObject {
			bad = append(bad, e.String())
		}
	}
	if len(bad) > 0 {
		more := ""
		if len(bad) > 10 {
			bad, more = bad[:10], " …"
		}
		return errs.Internalf("replaying roles and tablespaces failed on %d statement(s) (only \"already exists\" is tolerated): %s%s; fix the cause (e.g. create a tablespace's directory) and restore again",
			len(bad), strings.Join(bad, "; "), more)
	}
	if len(r.StderrTail) >= guestv1.MaxStderrTail {
		return errs.Internalf("replaying roles and tablespaces wrote more than %d bytes of errors; only the tail could be checked: restore again into a new guest", guestv1.MaxStderrTail)
	}
	return nil
}

// database loads one archive; a database it created is dropped again when the load fails, so a failed
// restore leaves no half-loaded database behind.
func (pgDumpRestore) database(ctx context.Context, req Request, m *catalog.Manifest, artifact, db string, create bool) error {
	src, err := req.Source(m, artifact)
	if err != nil {
		return err
	}
	_, err = Run(ctx, req, artifact, FromStorage(src, "pg_restore", pgRestoreArgs(req.Registration, db, create)...))
	if err == nil {
		return nil
	}
	err = pgWrap(err, "restoring database %q from %s", db, artifact)
	if create {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		drop := guestv1.ExecRequest{
			Tool:   "psql",
			Args:   append(pgConn(req.Registration), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "db="+db, "-d", postgresql.ConnDB("postgres"), "-f", "-"),
			Stdin:  guestv1.StdinSpec{Mode: guestv1.StdinData, Data: []byte(dropDatabaseScript)},
			Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutDiscard},
		}
		if _, derr := Run(cctx, req, "cleanup", drop); derr != nil {
			return errs.New(errs.CodeOf(err), "%s; dropping the half-restored database failed too (drop it by hand): %s", errs.From(err).Message, postgresql.RedactOutput(errs.From(derr).Message))
		}
	}
	return err
}
