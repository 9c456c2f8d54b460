package toolexec

import (
	"slices"
	"strings"
	"testing"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

func TestResolveKeepsOnlyPresentBinaries(t *testing.T) {
	a, err := Resolve([]Def{
		{Name: "cat", Paths: []string{"/nonexistent/cat", "/usr/bin/cat", "/bin/cat"}},
		{Name: "ghost", Paths: []string{"/nonexistent/ghost"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Names(), []string{"cat"}) {
		t.Fatalf("names %v", a.Names())
	}
	if c, err := a.Lookup("cat"); err != nil || c.Path != "/usr/bin/cat" {
		t.Fatalf("cat: %+v %v", c, err)
	}
	if _, err := a.Lookup("ghost"); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("ghost: %v", err)
	}
	if _, err := a.Lookup("sh"); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("sh: %v", err)
	}
	for _, bad := range [][]Def{
		{{Name: "Cat", Paths: []string{"/usr/bin/cat"}}},
		{{Name: "cat", Paths: []string{"cat"}}},
		{{Name: "cat", Paths: []string{"/usr/bin/cat"}, Env: []string{"LD_PRELOAD"}}},
		{{Name: "cat", Paths: []string{"/usr/bin/cat"}}, {Name: "cat", Paths: []string{"/usr/bin/cat"}}},
	} {
		if _, err := Resolve(bad); !errs.Is(err, errs.BadRequest) {
			t.Errorf("%+v: want bad_request, got %v", bad, err)
		}
	}
}

func TestDefaultsCoverTheContract(t *testing.T) {
	names := map[string]Def{}
	for _, d := range Defaults("/self") {
		names[d.Name] = d
	}
	for _, n := range []string{"mariadb", "mariadb-dump", "mariadb-backup", "mariabackup", "mbstream", "mariadb-admin", "psql", "pg_dump",
		"pg_dumpall", "pg_restore", "pg_basebackup", "pg_controldata", "pg_isready", "redis-cli", "tar", "zstd", "gzip", "cat", "sha256sum", "datagen"} {
		if _, ok := names[n]; !ok {
			t.Errorf("tool %s missing from the default allow-list", n)
		}
	}
	if names["psql"].User != "postgres" || names["mariadb"].User != "" || names["redis-cli"].User != "" {
		t.Fatal("run-as users")
	}
	if !slices.Equal(names["datagen"].Paths, []string{"/self"}) || !slices.Equal(names["datagen"].Prefix, []string{"datagen"}) {
		t.Fatalf("datagen %+v", names["datagen"])
	}
	if !slices.Contains(names["pg_dump"].Env, "PGPASSWORD") || !slices.Contains(names["mariadb-dump"].Env, "MYSQL_PWD") ||
		!slices.Contains(names["redis-cli"].Env, "REDISCLI_AUTH") || len(names["tar"].Env) != 0 {
		t.Fatal("permitted env names")
	}
}

func TestEnvironIsRestricted(t *testing.T) {
	a, err := Resolve([]Def{{Name: "cat", Paths: []string{"/usr/bin/cat"}, Env: []string{"PGPASSWORD"}}})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := a.Lookup("cat")
	env, err := c.Environ(map[string]string{"PGPASSWORD": "pw"})
	if err != nil || !slices.Equal(env, []string{"PATH=" + BasePath, "HOME=/root", "LANG=C.UTF-8", "PGPASSWORD=pw"}) {
		t.Fatalf("env %v %v", env, err)
	}
	_, err = c.Environ(map[string]string{"PGPASSWORD": "a\x00b-secret"})
	if !errs.Is(err, errs.BadRequest) || strings.Contains(err.Error(), "secret") {
		t.Fatalf("NUL value: %v", err)
	}
	if err := ValidateArgs(make([]string, guestv1.MaxArgs)); err != nil {
		t.Fatal(err)
	}
	if err := ValidateArgs([]string{"\xff"}); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("invalid UTF-8: %v", err)
	}
}
