package strategy

// mariadb-dump: MariaDB's logical backup, full only. One consistent `mariadb-dump --single-transaction`
// of every user database (routines, triggers, events, views) and of the accounts and grants
// (--system=users), streamed by the agent straight into the artifact "dump". docs/strategies-mariadb.md.

import (
	"context"
	"strings"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/mariadb"
	"troveng.dev/shared/errs"
)

const (
	mariadbDumpName     = "mariadb-dump"
	mariadbDumpTool     = "mariadb-dump"
	mariadbClientTool   = "mariadb"
	mariadbDumpArtifact = "dump"
)

func init() { Register(mariadbDumpStrategy{}, false) }

type mariadbDumpStrategy struct{}

func (mariadbDumpStrategy) Name() string      { return mariadbDumpName }
func (mariadbDumpStrategy) Engine() string    { return guestv1.EngineMariaDB }
func (mariadbDumpStrategy) Incremental() bool { return false }

// mariadbDumpOptions are the strategy options a dump accepts.
var mariadbDumpOptions = map[string]string{
	"users": "dump accounts, roles and grants with --system=users (true or false; default true)",
}

// mariadbServerQuery reads what the dump's arguments and the manifest depend on, in one round trip.
const mariadbServerQuery = "SELECT @@version, @@log_bin, @@gtid_binlog_pos"

// mariadbServer is the state of the server before the dump.
type mariadbServer struct {
	version string
	logBin  bool
	gtid    string
}

func parseMariadbServer(out string) (mariadbServer, error) {
	f, err := mariadb.ParseRow(out, 3)
	if err != nil {
		return mariadbServer{}, errs.Internalf("reading the server's version and binlog state: %s", errs.From(err).Message)
	}
	s := mariadbServer{version: f[0], logBin: f[1] == "1", gtid: f[2]}
	if _, err := mariadb.ParseVersion(s.version); err != nil {
		return mariadbServer{}, errs.Internalf("the server reports version %q, which is not a MariaDB version", s.version)
	}
	if !mariadb.ValidGTID(s.gtid) {
		return mariadbServer{}, errs.Internalf("the server reports gtid_binlog_pos %q, which is not a GTID list", s.gtid)
	}
	return s, nil
}

// mariadbDumpArgs is the dump's argument vector.
//
// Every database but the system ones (-A skips information_schema, performance_schema and sys; mysql is
// ignored: its accounts travel as portable CREATE USER/GRANT statements from --system=users instead).
// --insert-ignore makes those CREATE USER IF NOT EXISTS (the target's root and system accounts exist
// already); for table rows it changes nothing, since every table is dropped and re-created first.
// With a binary log, the exact position at the snapshot goes into the dump as a comment (--master-data=2
// --gtid): a replica seeded from it can read it there.
func mariadbDumpArgs(srv mariadbServer, users bool) []string {
	args := append(mariadb.ClientArgs(),
		"--all-databases",
		"--ignore-database=mysql",
		"--single-transaction",
		"--routines",
		"--triggers",
		"--events",
		"--hex-blob",
		"--default-character-set=utf8mb4",
		"--max-allowed-packet=1073741824",
		"--quick",
		"--skip-dump-date",
	)
	if users {
		args = append(args, "--system=users", "--insert-ignore")
	}
	if srv.logBin {
		args = append(args, "--master-data=2", "--gtid")
	}
	return args
}

func (mariadbDumpStrategy) Backup(ctx context.Context, req Request) (Result, error) {
	if err := mariadbCheckOptions(mariadbDumpName, req.Options, mariadbDumpOptions); err != nil {
		return Result{}, err
	}
	if req.Type != catalog.TypeFull && req.Type != "" {
		return Result{}, errs.BadRequestf("mariadb-dump makes full backups only; use mariabackup for incremental backups")
	}
	users := true
	if v, ok := req.Options["users"]; ok {
		switch strings.ToLower(v) {
		case "true", "yes", "1":
		case "false", "no", "0":
			users = false
		default:
			return Result{}, errs.BadRequestf("mariadb-dump option users=%q: want true or false", v)
		}
	}
	out, err := Capture(ctx, req, mariadbClientTool, append(mariadb.ClientArgs(), "-N", "-B", "-e", mariadbServerQuery)...)
	if err != nil {
		return Result{}, mariadbWrap(err, "query the server before the dump")
	}
	srv, err := parseMariadbServer(out)
	if err != nil {
		return Result{}, err
	}
	verOut, err := Capture(ctx, req, mariadbDumpTool, "--version")
	if err != nil {
		return Result{}, mariadbWrap(err, "mariadb-dump --version")
	}
	toolVer, err := mariadb.ParseToolVersion(verOut)
	if err != nil {
		return Result{}, err
	}

	r, err := Run(ctx, req, "dump", ToStorage(req, mariadbDumpArtifact, mariadbDumpTool, mariadbDumpArgs(srv, users)...))
	if err != nil {
		return Result{}, mariadbWrap(err, "mariadb-dump of backup %s", req.BackupID)
	}
	prod, err := Produce(mariadbDumpArtifact, r)
	if err != nil {
		return Result{}, err
	}
	res := Result{
		Artifacts: []Produced{prod},
		Positions: map[string]string{},
		Tools:     map[string]string{mariadbDumpTool: toolVer.String()},
		Options:   map[string]string{"server_version": srv.version, "format": "sql", "users": mariadbBool(users)},
	}
	if srv.logBin && srv.gtid != "" {
		// Read just before the snapshot: a lower bound. The exact position is in the dump's header.
		res.Positions["gtid"] = srv.gtid
		res.Options["gtid_exact_in_dump"] = "true"
	}
	return res, nil
}

func mariadbBool(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
