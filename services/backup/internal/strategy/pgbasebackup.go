package strategy

import (
	"context"
	"strconv"
	"strings"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/postgresql"
	"troveng.dev/shared/errs"
)

// PostgreSQL in the guest image: the tools run as the postgres OS user (the agent's allow-list) and reach the
// server over its unix socket, where peer authentication lets that user in as the postgres role.
const (
	pgSocketDir   = "/run/postgresql"
	pgDefaultPort = 5432
	pgUser        = "postgres"
)

// pgConn is the connection options every PostgreSQL tool gets: the socket dir, the port the agent reports
// (5432 by default) and the superuser.
func pgConn(reg guestv1.Registration) []string {
	port := reg.Status.Port
	if port == 0 {
		port = pgDefaultPort
	}
	return []string{"-h", pgSocketDir, "-p", strconv.Itoa(port), "-U", pgUser}
}

// psqlArgs is a psql call that runs each query with -c and prints bare values (-A -t), ignoring any psqlrc
// (-X), stopping at the first error, on database "postgres".
func psqlArgs(reg guestv1.Registration, queries ...string) []string {
	args := append(pgConn(reg), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", postgresql.ConnDB("postgres"))
	for _, q := range queries {
		args = append(args, "-c", q)
	}
	return args
}

// pgServer is what a PostgreSQL backup records about the server.
type pgServer struct {
	Version postgresql.Version
	Display string // server_version as the server shows it ("15.18 (Debian 15.18-0+deb12u1)")
}

// pgServerVersion asks the server its version.
func pgServerVersion(ctx context.Context, req Request, extra ...string) (pgServer, []string, error) {
	out, err := Capture(ctx, req, "psql", psqlArgs(req.Registration, append([]string{"show server_version_num", "show server_version"}, extra...)...)...)
	if err != nil {
		return pgServer{}, nil, errs.Wrap(errs.CodeOf(err), err, "asking PostgreSQL its version")
	}
	// One line per query; a query may answer an empty line (no tablespaces), so only the final newline goes.
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) < 2+len(extra) {
		return pgServer{}, nil, errs.Internalf("psql answered %d lines to %d queries", len(lines), 2+len(extra))
	}
	v, err := postgresql.ParseVersion(lines[0])
	if err != nil {
		return pgServer{}, nil, err
	}
	return pgServer{Version: v, Display: strings.TrimSpace(lines[1])}, lines[2:], nil
}

// pgToolVersion runs `tool --version` on the guest ("pg_basebackup (PostgreSQL) 15.18 (Debian ...)").
func pgToolVersion(ctx context.Context, req Request, tool string) (postgresql.Version, error) {
	out, err := Capture(ctx, req, tool, "--version")
	if err != nil {
		return postgresql.Version{}, errs.Wrap(errs.CodeOf(err), err, "asking %s its version", tool)
	}
	return postgresql.ParseVersion(out)
}

// pgBasebackup is a physical full backup: the whole cluster as one tar with the WAL that makes it
// consistent (docs/strategies-postgresql.md).
type pgBasebackup struct{}

func init() { Register(pgBasebackup{}, true) }

func (pgBasebackup) Name() string      { return "pg_basebackup" }
func (pgBasebackup) Engine() string    { return guestv1.EnginePostgreSQL }
func (pgBasebackup) Incremental() bool { return false }

// tablespacesSQL lists the tablespaces outside the data dir (hex names, comma-separated).
var tablespacesSQL = "select coalesce(string_agg(" + postgresql.HexNamesSQL("spcname") + ", ',' order by spcname), '') " +
	"from pg_tablespace where spcname not in ('pg_default', 'pg_global')"

// basebackupArgs is the pg_basebackup call: the data dir as a tar on stdout (-D - -F tar; only one tablespace
// fits), the WAL written during the backup fetched at its end into the same tar (-X fetch), an immediate
// checkpoint instead of waiting for the next scheduled one (-c fast), and --verbose for the WAL positions.
func basebackupArgs(reg guestv1.Registration) []string {
	return append(pgConn(reg), "-D", "-", "-F", "tar", "-X", "fetch", "-c", "fast", "--verbose")
}

func (s pgBasebackup) Backup(ctx context.Context, req Request) (Result, error) {
	if err := fullOnly(s.Name(), req); err != nil {
		return Result{}, err
	}
	srv, rest, err := pgServerVersion(ctx, req, tablespacesSQL)
	if err != nil {
		return Result{}, err
	}
	spaces, err := postgresql.ParseHexList(rest[0])
	if err != nil {
		return Result{}, err
	}
	if len(spaces) > 0 {
		return Result{}, errs.Conflictf("the instance has %d tablespace(s) outside the data dir (%s); pg_basebackup streamed to storage carries one tablespace only: move their objects to pg_default (ALTER TABLE ... SET TABLESPACE pg_default) and drop them, or back up with the pg_dump strategy",
			len(spaces), pgQuoteList(spaces))
	}
	tool, err := pgToolVersion(ctx, req, "pg_basebackup")
	if err != nil {
		return Result{}, err
	}
	if postgresql.CompareMajor(tool, srv.Version) != 0 {
		return Result{}, errs.Conflictf("the guest's pg_basebackup is %s but its server is %s: a physical backup needs the tool of the server's major version", tool, srv.Version)
	}
	r, err := Run(ctx, req, postgresql.BasebackupArtifact, ToStorage(req, postgresql.BasebackupArtifact, "pg_basebackup", basebackupArgs(req.Registration)...))
	if err != nil {
		return Result{}, err
	}
	p, err := Produce(postgresql.BasebackupArtifact, r)
	if err != nil {
		return Result{}, err
	}
	pos, err := postgresql.ParseBasebackupVerbose(r.StderrTail)
	if err != nil {
		return Result{}, err
	}
	return Result{
		Artifacts: []Produced{p},
		Positions: map[string]string{
			"wal_start": pos.Start.String(),
			"wal_end":   pos.End.String(),
			"timeline":  strconv.Itoa(pos.Timeline),
		},
		Tools: map[string]string{"pg_basebackup": tool.String(), "postgresql": srv.Version.String()},
		Options: map[string]string{
			"server_version":     srv.Display,
			"server_version_num": strconv.Itoa(srv.Version.Num),
			"wal_method":         "fetch",
			"format":             "tar",
		},
	}, nil
}

// pgQuoteList shows names for a message, quoted (names may hold spaces or newlines), at most 10.
func pgQuoteList(names []string) string {
	var b strings.Builder
	for i, n := range names {
		if i == 10 {
			b.WriteString(", …")
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(n))
	}
	return b.String()
}

// fullOnly refuses what a full-only strategy without options cannot do: an incremental, a parent, options.
func fullOnly(strategy string, req Request) error {
	if req.Type == catalog.TypeIncremental || req.Parent != nil {
		return errs.BadRequestf("%s makes full backups only; leave the type empty or full", strategy)
	}
	for k := range req.Options {
		return errs.BadRequestf("%s has no option %q; it takes no options", strategy, k)
	}
	return nil
}
