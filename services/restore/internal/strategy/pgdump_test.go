package strategy

import (
	"context"
	"slices"
	"strings"
	"testing"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

func dumpManifest(pgDump string, dbs ...string) *catalog.Manifest {
	arts := []string{"globals"}
	for i := range dbs {
		arts = append(arts, "db-000"+string(rune('1'+i)))
	}
	m := pgManifest("pg_dump", map[string]string{"pg_dump": pgDump, "postgresql": pgDump}, arts...)
	m.Options["databases"] = string(rune('0' + len(dbs)))
	for i, db := range dbs {
		m.Options["database.db-000"+string(rune('1'+i))] = db
	}
	return m
}

func TestDumpCheck(t *testing.T) {
	m := dumpManifest("15.18", "postgres", "dö b")
	for _, c := range []struct {
		dump, target, mode string
		code               errs.Code
	}{
		{"15.18", "15.18", "", ""},
		{"15.18", "15.18", backupv1.ModeExisting, ""},
		{"14.10", "15.18", "", ""},
		{"16.1", "15.18", "", errs.BadRequest},
		{"15.18", "16.1", "", ""},
	} {
		m := dumpManifest(c.dump, "postgres")
		if err := (pgDumpRestore{}).Check(pgRequest(m, "postgresql", c.target, c.mode, nil)); errs.CodeOf(err) != c.code {
			t.Errorf("%s onto %s (%q): %v", c.dump, c.target, c.mode, err)
		}
	}
	if err := (pgDumpRestore{}).Check(pgRequest(m, "mariadb", "10.11.6", "", nil)); !errs.Is(err, errs.BadRequest) {
		t.Errorf("wrong engine: %v", err)
	}
	r := pgRequest(m, "postgresql", "15.18", "", nil)
	r.Registration.Tools = []string{"psql"}
	if err := (pgDumpRestore{}).Check(r); !errs.Is(err, errs.Unavailable) {
		t.Errorf("no pg_restore on the guest: %v", err)
	}
}

func TestDumpLayout(t *testing.T) {
	l, err := pgDumpLayoutOf(dumpManifest("15.18", "postgres", "dö b"))
	if err != nil || !slices.Equal(l.artifacts, []string{"db-0001", "db-0002"}) || !slices.Equal(l.databases, []string{"postgres", "dö b"}) {
		t.Fatalf("got %+v %v", l, err)
	}
	broken := []func(m *catalog.Manifest){
		func(m *catalog.Manifest) { delete(m.Options, "databases") },
		func(m *catalog.Manifest) { m.Options["databases"] = "3" },
		func(m *catalog.Manifest) { m.Options["database.db-0002"] = "postgres" },
		func(m *catalog.Manifest) { m.Artifacts = m.Artifacts[1:] },
		func(m *catalog.Manifest) { m.Artifacts = m.Artifacts[:2] },
	}
	for i, b := range broken {
		m := dumpManifest("15.18", "postgres", "dö b")
		b(m)
		if _, err := pgDumpLayoutOf(m); !errs.Is(err, errs.BadRequest) {
			t.Errorf("broken manifest %d: %v", i, err)
		}
	}
}

func TestRestoreArgs(t *testing.T) {
	reg := guestv1.Registration{}
	conn := []string{"-h", "/run/postgresql", "-p", "5432", "-U", "postgres"}
	if got, want := pgRestoreArgs(reg, "new db", true), append(slices.Clone(conn), "--exit-on-error", "--no-password", "--create", "-d", "dbname='postgres'"); !slices.Equal(got, want) {
		t.Errorf("create: %q", got)
	}
	if got, want := pgRestoreArgs(reg, "postgres", false), append(slices.Clone(conn), "--exit-on-error", "--no-password", "--single-transaction", "-d", "dbname='postgres'"); !slices.Equal(got, want) {
		t.Errorf("into existing: %q", got)
	}
	if got := globalsArgs(reg); !slices.Contains(got, "ON_ERROR_STOP=0") || !slices.Contains(got, "VERBOSITY=verbose") || got[len(got)-1] != "-" {
		t.Errorf("globals: %q", got)
	}
}

// The fake answers the target's database list and one emptiness count per database.
func dumpGuest(empty map[string]string) *pgFakeGuest {
	a := map[string]string{
		"pg_restore --version":       "pg_restore (PostgreSQL) 15.18\n",
		"select encode(convert_to(d": "706f737467726573\n74656d706c61746531\n64c3b62062\n", // postgres, template1, dö b
	}
	for db, n := range empty {
		a["dbname='"+db+"' -c select (select count(*) from pg_namespace"] = n + "\n"
	}
	return &pgFakeGuest{answers: a, execs: map[string]guestv1.ExecResult{}}
}

func TestDumpRefusesNonEmptyDatabases(t *testing.T) {
	m := dumpManifest("15.18", "postgres", "dö b", "fresh")
	g := dumpGuest(map[string]string{"postgres": "0", "dö b": "12"})
	err := pgDumpRestore{}.Restore(context.Background(), pgRequest(m, "postgresql", "15.18", backupv1.ModeExisting, g))
	if !errs.Is(err, errs.Conflict) || !strings.Contains(err.Error(), `"dö b"`) || strings.Contains(err.Error(), `"postgres"`) {
		t.Fatalf("got %v", err)
	}
	for _, r := range g.ran {
		if r.Tool == "pg_restore" && r.Stdin.Mode == guestv1.StdinStorage || r.Tool == "psql" && r.Stdin.Mode == guestv1.StdinStorage {
			t.Fatalf("loaded %s although the plan was refused", r.Tool)
		}
	}
}

func TestDumpRestoreCreatesOrLoads(t *testing.T) {
	m := dumpManifest("15.18", "postgres", "fresh")
	g := dumpGuest(map[string]string{"postgres": "0"})
	g.execs["psql"] = guestv1.ExecResult{Done: true, StderrTail: "psql:<stdin>:18: ERROR:  42710: role \"postgres\" already exists\nLOCATION:  CreateRole, user.c:308\n"}
	if err := (pgDumpRestore{}).Restore(context.Background(), pgRequest(m, "postgresql", "15.18", "", g)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(g.calls, ","); got != "reset,start" {
		t.Errorf("engine calls %s", got)
	}
	var loads []string
	for _, r := range g.ran {
		if r.Stdin.Mode == guestv1.StdinStorage {
			loads = append(loads, r.Tool+" "+r.Stdin.Storage.Key+" "+r.Args[len(r.Args)-1])
		}
	}
	want := []string{"psql backups/b1/globals -", "pg_restore backups/b1/db-0001 dbname='postgres'", "pg_restore backups/b1/db-0002 dbname='postgres'"}
	if !slices.Equal(loads, want) {
		t.Fatalf("loads %q", loads)
	}
	if !slices.Contains(g.ran[len(g.ran)-2].Args, "--single-transaction") || !slices.Contains(g.ran[len(g.ran)-1].Args, "--create") {
		t.Fatalf("existing database not loaded in place / new one not created: %q %q", g.ran[len(g.ran)-2].Args, g.ran[len(g.ran)-1].Args)
	}
}

func TestDumpGlobalsErrors(t *testing.T) {
	m := dumpManifest("15.18", "postgres")
	g := dumpGuest(map[string]string{"postgres": "0"})
	g.execs["psql"] = guestv1.ExecResult{Done: true, StderrTail: "psql:<stdin>:18: ERROR:  42710: role \"postgres\" already exists\n" +
		"psql:<stdin>:30: ERROR:  58P01: could not set permissions on directory \"/srv/ts\": No such file or directory\n" +
		"psql:<stdin>:31: ERROR:  42601: syntax error at or near \"x\"\nLINE 1: ALTER ROLE a PASSWORD 'SCRAM-SHA-256$4096:secret' x\n"}
	err := pgDumpRestore{}.Restore(context.Background(), pgRequest(m, "postgresql", "15.18", "", g))
	if err == nil || !strings.Contains(err.Error(), "58P01") || !strings.Contains(err.Error(), "42601") || strings.Contains(err.Error(), "42710") || strings.Contains(err.Error(), "SCRAM") {
		t.Fatalf("got %v", err)
	}
	for _, r := range g.ran {
		if r.Tool == "pg_restore" && r.Stdin.Mode == guestv1.StdinStorage {
			t.Fatal("databases loaded after the globals failed")
		}
	}
}

func TestDumpDropsHalfCreatedDatabase(t *testing.T) {
	m := dumpManifest("15.18", "fresh")
	g := dumpGuest(nil)
	g.execs["pg_restore"] = guestv1.ExecResult{Done: true, ExitCode: 1, StderrTail: "pg_restore: error: could not execute query: ERROR:  value 'secret' bad\n"}
	err := pgDumpRestore{}.Restore(context.Background(), pgRequest(m, "postgresql", "15.18", backupv1.ModeExisting, g))
	if err == nil || strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), `"fresh"`) {
		t.Fatalf("got %v", err)
	}
	last := g.ran[len(g.ran)-1]
	if last.Tool != "psql" || !slices.Contains(last.Args, "db=fresh") || string(last.Stdin.Data) != dropDatabaseScript {
		t.Fatalf("no drop of the half-created database: %+v", last)
	}
}

func TestDumpRefusesNewerArchiveThanTool(t *testing.T) {
	m := dumpManifest("15.18", "postgres")
	g := dumpGuest(nil)
	g.answers["pg_restore --version"] = "pg_restore (PostgreSQL) 14.10\n"
	if err := (pgDumpRestore{}).Restore(context.Background(), pgRequest(m, "postgresql", "15.18", "", g)); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("got %v", err)
	}
	if len(g.calls) != 0 {
		t.Fatalf("the target was touched: %v", g.calls)
	}
}
