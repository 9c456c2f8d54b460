package strategy

import (
	"context"
	"slices"
	"testing"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

func TestDumpArgs(t *testing.T) {
	reg := guestv1.Registration{}
	if got, want := dumpArgs(reg, "dö b'x"), []string{"-h", "/run/postgresql", "-p", "5432", "-U", "postgres", "-Fc", "-Z", "0", "-d", `dbname='dö b\'x'`}; !slices.Equal(got, want) {
		t.Errorf("pg_dump: got %q want %q", got, want)
	}
	if got, want := dumpallGlobalsArgs(reg), []string{"-h", "/run/postgresql", "-p", "5432", "-U", "postgres", "--globals-only", "-d", "dbname='postgres'"}; !slices.Equal(got, want) {
		t.Errorf("pg_dumpall: got %q want %q", got, want)
	}
}

// The fake guest answers the database list with two hex-encoded names; the test checks the artifacts and the
// mapping recorded for the restore, not that pg_dump works (integration tests do).
func TestDumpArtifactsAndMapping(t *testing.T) {
	g := &fakeGuest{answers: pgAnswers("")}
	res, err := pgDump{}.Backup(context.Background(), fakeRequest(g, guestv1.EnginePostgreSQL))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range res.Artifacts {
		names = append(names, a.Name)
	}
	if !slices.Equal(names, []string{"globals", "db-0001", "db-0002"}) {
		t.Fatalf("artifacts %q", names)
	}
	if res.Options["databases"] != "2" || res.Options["database.db-0001"] != "postgres" || res.Options["database.db-0002"] != "dö b" {
		t.Fatalf("options %v", res.Options)
	}
	if res.Tools["pg_dump"] != "15.18" || res.Tools["pg_dumpall"] != "15.18" || res.Tools["postgresql"] != "15.18" {
		t.Fatalf("tools %v", res.Tools)
	}
	dumps := g.execsOf("pg_dump")
	if len(dumps) != 2 || dumps[1].Args[len(dumps[1].Args)-1] != "dbname='dö b'" || dumps[1].Stdout.Storage.Key != "backups/b1/db-0002" {
		t.Fatalf("pg_dump execs %+v", dumps)
	}
}

func TestDumpRefusesOlderTool(t *testing.T) {
	a := pgAnswers("")
	a["pg_dump --version"] = "pg_dump (PostgreSQL) 14.9\n"
	_, err := pgDump{}.Backup(context.Background(), fakeRequest(&fakeGuest{answers: a}, guestv1.EnginePostgreSQL))
	if !errs.Is(err, errs.Conflict) {
		t.Fatalf("got %v", err)
	}
}
