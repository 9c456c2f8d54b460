package strategy

import (
	"context"
	"strconv"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/postgresql"
	"troveng.dev/shared/errs"
)

// pgDump is a logical backup of a whole instance: the roles and tablespaces (pg_dumpall --globals-only) and
// every database that is not a template, each in pg_dump's custom format (docs/strategies-postgresql.md).
type pgDump struct{}

func init() { Register(pgDump{}, false) }

func (pgDump) Name() string      { return "pg_dump" }
func (pgDump) Engine() string    { return guestv1.EnginePostgreSQL }
func (pgDump) Incremental() bool { return false }

// databasesSQL lists the databases to dump: every one that is not a template and accepts connections, in
// name order, as hex of their UTF-8 names (one per line).
var databasesSQL = "select " + postgresql.HexNamesSQL("datname") + " from pg_database where not datistemplate and datallowconn order by datname"

// dumpallGlobalsArgs dumps roles (with their password hashes), role memberships and tablespaces.
func dumpallGlobalsArgs(reg guestv1.Registration) []string {
	return append(pgConn(reg), "--globals-only", "-d", postgresql.ConnDB("postgres"))
}

// dumpArgs dumps one database in the custom format (-Fc: compressed by our frames, not by pg_dump: -Z0),
// with its large objects (the default for a whole-database dump), in one consistent snapshot.
func dumpArgs(reg guestv1.Registration, db string) []string {
	return append(pgConn(reg), "-Fc", "-Z", "0", "-d", postgresql.ConnDB(db))
}

func (s pgDump) Backup(ctx context.Context, req Request) (Result, error) {
	if err := fullOnly(s.Name(), req); err != nil {
		return Result{}, err
	}
	srv, _, err := pgServerVersion(ctx, req)
	if err != nil {
		return Result{}, err
	}
	tools := map[string]string{"postgresql": srv.Version.String()}
	for _, t := range []string{"pg_dump", "pg_dumpall"} {
		v, err := pgToolVersion(ctx, req, t)
		if err != nil {
			return Result{}, err
		}
		if postgresql.CompareMajor(v, srv.Version) < 0 {
			return Result{}, errs.Conflictf("the guest's %s is %s, older than its server %s: %s cannot dump a newer server", t, v, srv.Version, t)
		}
		tools[t] = v.String()
	}
	out, err := Capture(ctx, req, "psql", psqlArgs(req.Registration, databasesSQL)...)
	if err != nil {
		return Result{}, errs.Wrap(errs.CodeOf(err), err, "listing the databases")
	}
	dbs, err := postgresql.ParseHexLines(out)
	if err != nil {
		return Result{}, err
	}

	res := Result{
		Tools: tools,
		Options: map[string]string{
			"server_version":               srv.Display,
			"server_version_num":           strconv.Itoa(srv.Version.Num),
			"format":                       "custom",
			postgresql.DumpDatabasesOption: strconv.Itoa(len(dbs)),
		},
	}
	r, err := Run(ctx, req, postgresql.DumpGlobalsArtifact, ToStorage(req, postgresql.DumpGlobalsArtifact, "pg_dumpall", dumpallGlobalsArgs(req.Registration)...))
	if err != nil {
		return Result{}, errs.Wrap(errs.CodeOf(err), err, "dumping roles and tablespaces")
	}
	p, err := Produce(postgresql.DumpGlobalsArtifact, r)
	if err != nil {
		return Result{}, err
	}
	res.Artifacts = append(res.Artifacts, p)
	for i, db := range dbs {
		name := postgresql.DumpDatabaseArtifact(i + 1)
		r, err := Run(ctx, req, name, ToStorage(req, name, "pg_dump", dumpArgs(req.Registration, db)...))
		if err != nil {
			return Result{}, errs.Wrap(errs.CodeOf(err), err, "dumping database %q", db)
		}
		p, err := Produce(name, r)
		if err != nil {
			return Result{}, err
		}
		res.Artifacts = append(res.Artifacts, p)
		res.Options[postgresql.DumpDatabaseOption(i+1)] = db
	}
	return res, nil
}
