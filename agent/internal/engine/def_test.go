package engine

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

func define(t *testing.T, engine string) *Def {
	t.Helper()
	d, err := Define(Params{Engine: engine, DataRoot: "/var/lib/trove", ConfigRoot: "/etc/trove"})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// The guest image's commands, as the original entrypoint ran them (deploy/images/guest/entrypoint.sh).
func TestMariaDBCommands(t *testing.T) {
	d := define(t, guestv1.EngineMariaDB)
	if d.DataDir != "/var/lib/trove/mariadb" || d.ConfigFile != "/etc/trove/mariadb.cnf" || d.Port != 3306 || d.InitMarker != "mysql" {
		t.Fatalf("def %+v", d)
	}
	init := d.Init("/var/lib/trove/mariadb.init")
	if len(init) != 1 || init[0].Path != MariaDBInstall || !slices.Equal(init[0].Args, []string{"--no-defaults", "--user=root",
		"--datadir=/var/lib/trove/mariadb.init", "--auth-root-authentication-method=socket", "--skip-test-db"}) {
		t.Fatalf("init %+v", init)
	}
	s := d.Server([]string{"--server-id=7"})
	want := []string{"--defaults-file=/etc/trove/mariadb.cnf", "--user=root", "--datadir=/var/lib/trove/mariadb", "--port=3306",
		"--bind-address=0.0.0.0", "--socket=/run/mysqld/mysqld.sock", "--pid-file=/run/mysqld/mysqld.pid", "--server-id=7"}
	if s.Path != MariaDBServer || s.User != "" || !slices.Equal(s.Args, want) {
		t.Fatalf("server %+v", s)
	}
	if !slices.Contains(d.Health.Args, "--socket=/run/mysqld/mysqld.sock") || d.Health.Path != MariaDBClient || !d.Healthy(true, "1") || d.Healthy(false, "") {
		t.Fatalf("health %+v", d.Health)
	}
	if v := d.ParseVersion("mariadbd  Ver 10.11.6-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)"); v != "10.11.6" {
		t.Fatalf("version %q", v)
	}
	if d.StopSignal != syscall.SIGTERM {
		t.Fatal("stop signal")
	}
}

func TestPostgreSQLCommands(t *testing.T) {
	d := define(t, guestv1.EnginePostgreSQL)
	if d.DataDir != "/var/lib/trove/postgresql" || d.DataOwner != "postgres" || d.InitDirMode != 0o700 || d.InitMarker != "PG_VERSION" {
		t.Fatalf("def %+v", d)
	}
	init := d.Init("/x.init")
	if init[0].User != "postgres" || init[0].Path != PGBin+"/initdb" || !slices.Equal(init[0].Args, []string{"-D", "/x.init", "-U", "postgres", "-E", "UTF8",
		"--locale=C.UTF-8", "--auth-local=peer", "--auth-host=scram-sha-256"}) {
		t.Fatalf("init %+v", init)
	}
	s := d.Server([]string{"-c", "max_connections=50"})
	if s.User != "postgres" || s.Path != PGBin+"/postgres" || !slices.Equal(s.Args, []string{"-D", "/var/lib/trove/postgresql", "-p", "5432",
		"-c", "listen_addresses=*", "-c", "unix_socket_directories=/run/postgresql", "-c", "max_connections=50"}) {
		t.Fatalf("server %+v", s)
	}
	if d.Health.User != "postgres" || !slices.Contains(d.Health.Args, "/run/postgresql") || !slices.Contains(d.Health.Args, "select 1") {
		t.Fatalf("health %+v", d.Health)
	}
	if v := d.ParseVersion("postgres (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)"); v != "15.10" {
		t.Fatalf("version %q", v)
	}
	if d.StopSignal != syscall.SIGINT || d.RunDirOwner != "postgres" {
		t.Fatal("stop signal or run dir owner")
	}
	// PostInit adds the include of the config root's file, once.
	dir := t.TempDir()
	conf := filepath.Join(dir, "postgresql.conf")
	if err := os.WriteFile(conf, []byte("# initdb's\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := d.PostInit(dir); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(conf)
	if strings.Count(string(b), "include_if_exists = '/etc/trove/postgresql.conf'") != 1 {
		t.Fatalf("postgresql.conf:\n%s", b)
	}
}

func TestRedisCommands(t *testing.T) {
	d, err := Define(Params{Engine: guestv1.EngineRedis, DataRoot: "/d", ConfigRoot: "/c", Port: 7000})
	if err != nil {
		t.Fatal(err)
	}
	s := d.Server(nil)
	if s.Path != RedisServer || !slices.Equal(s.Args, []string{"/c/redis.conf", "--port", "7000", "--dir", "/d/redis", "--dbfilename", "dump.rdb",
		"--daemonize", "no", "--repl-diskless-sync-delay", "0"}) {
		t.Fatalf("server %+v", s)
	}
	if !slices.Equal(d.Health.Args, []string{"-p", "7000", "ping"}) || !d.Healthy(true, "PONG\n") || !d.Healthy(false, "NOAUTH Authentication required.") || d.Healthy(true, "") {
		t.Fatalf("health %+v", d.Health)
	}
	if v := d.ParseVersion("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=1"); v != "7.0.15" {
		t.Fatalf("version %q", v)
	}
	if d.InitMarker != "" || d.RunDir != "" {
		t.Fatal("redis needs no init marker or run dir")
	}
}

func TestDefineRefusals(t *testing.T) {
	for _, p := range []Params{
		{Engine: "mysql", DataRoot: "/d", ConfigRoot: "/c"},
		{Engine: "redis", DataRoot: "d", ConfigRoot: "/c"},
		{Engine: "redis", DataRoot: "/d", ConfigRoot: "/c", Port: 70000},
	} {
		if _, err := Define(p); !errs.Is(err, errs.BadRequest) {
			t.Errorf("%+v: want bad_request, got %v", p, err)
		}
	}
}

func TestLastLines(t *testing.T) {
	if got := lastLines("a\nb\nc\n", 100); got != "a | b | c" {
		t.Fatalf("%q", got)
	}
	if got := lastLines(strings.Repeat("x", 50)+"\nlast line", 12); got != "last line" {
		t.Fatalf("%q", got)
	}
	if got := lastLines("", 10); got != "(no output)" {
		t.Fatalf("%q", got)
	}
}
