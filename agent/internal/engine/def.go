// Package engine starts, stops, checks and resets the guest's one database engine (MariaDB, PostgreSQL or
// Redis) as a child process of the agent. What is engine-specific (binaries, data dir initialisation,
// server arguments, the health query, the version) is a Def built by Define, a plain value that tests can
// inspect without the engines installed; the Manager runs it. The commands are those of the guest image's
// original entrypoint (deploy/images/guest/entrypoint.sh), run without a shell.
package engine

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

// Command is one process: an absolute binary, its arguments (without argv[0]) and the user it runs as
// ("" is root).
type Command struct {
	Path string
	Args []string
	User string
}

// Params place an engine on this host. Zero values take the guest image's defaults.
type Params struct {
	Engine     string
	DataRoot   string // the engine's data dir is DataRoot/<engine>
	ConfigRoot string // its configuration file is ConfigRoot/<file>
	RunDir     string // socket and pid dir (MariaDB /run/mysqld, PostgreSQL /run/postgresql)
	Port       int
}

// Def is an engine's recipe.
type Def struct {
	Name          string
	DataDir       string
	ConfigFile    string
	DefaultConfig string // written when the configuration file is absent and the request brings none
	RunDir        string // "" when the engine needs none
	RunDirOwner   string
	RunDirMode    fs.FileMode
	Port          int
	// DataOwner owns the data dir ("" root); InitDirMode is the mode of a new data dir.
	DataOwner   string
	InitDirMode fs.FileMode
	// InitMarker is the file (relative to the data dir) that proves it initialised; "" means the engine
	// initialises itself and only needs the directory.
	InitMarker string
	// Init are the commands that initialise a data dir at dir (DataDir + ".init", renamed when complete).
	Init func(dir string) []Command
	// PostInit edits a freshly initialised dir (PostgreSQL: the include of the agent's config file).
	PostInit func(dir string) error
	// Prepare runs before every start.
	Prepare func() error
	// Server is the server command with the caller's extra args appended.
	Server func(args []string) Command
	// Health is the trivial query; Healthy judges its exit and output.
	Health  Command
	Healthy func(exitOK bool, out string) bool
	// Version prints the server's version; ParseVersion extracts it.
	Version      Command
	ParseVersion func(out string) string
	// StopSignal asks the server to shut down cleanly (PostgreSQL: SIGINT, its fast shutdown).
	StopSignal syscall.Signal
}

// Binaries of the guest image (Debian bookworm).
const (
	PGBin          = "/usr/lib/postgresql/15/bin"
	MariaDBServer  = "/usr/sbin/mariadbd"
	MariaDBInstall = "/usr/bin/mariadb-install-db"
	MariaDBClient  = "/usr/bin/mariadb"
	RedisServer    = "/usr/bin/redis-server"
	RedisCLI       = "/usr/bin/redis-cli"
)

var versionRe = regexp.MustCompile(`\d+\.\d+(\.\d+)?`)

// firstVersion finds the first dotted version number after marker in out (anywhere when marker is "").
func firstVersion(out, marker string) string {
	if marker != "" {
		if i := strings.Index(out, marker); i >= 0 {
			out = out[i+len(marker):]
		}
	}
	return versionRe.FindString(out)
}

// Define builds the recipe of engine for p.
func Define(p Params) (*Def, error) {
	if p.DataRoot == "" || p.ConfigRoot == "" || !filepath.IsAbs(p.DataRoot) || !filepath.IsAbs(p.ConfigRoot) {
		return nil, errs.BadRequestf("engine %s: data and config roots must be absolute paths", p.Engine)
	}
	if p.Port < 0 || p.Port > 65535 {
		return nil, errs.BadRequestf("engine %s: port %d is out of range", p.Engine, p.Port)
	}
	port := func(def int) int {
		if p.Port > 0 {
			return p.Port
		}
		return def
	}
	run := func(def string) string {
		if p.RunDir != "" {
			return p.RunDir
		}
		return def
	}
	switch p.Engine {
	case guestv1.EngineMariaDB:
		return mariadb(p, port(3306), run("/run/mysqld")), nil
	case guestv1.EnginePostgreSQL:
		return postgresql(p, port(5432), run("/run/postgresql")), nil
	case guestv1.EngineRedis:
		return redis(p, port(6379)), nil
	}
	return nil, errs.BadRequestf("engine %q is not one of %s", p.Engine, strings.Join(guestv1.Engines, ", "))
}

const configHeader = "# Engine configuration of this guest: written by the trove agent from engine_start requests.\n"

func mariadb(p Params, port int, runDir string) *Def {
	data := filepath.Join(p.DataRoot, guestv1.EngineMariaDB)
	conf := filepath.Join(p.ConfigRoot, "mariadb.cnf")
	// The socket path is absolute: mariadb-backup fails with a relative one. It is Debian's client default,
	// so `mariadb` on the guest connects as root by unix_socket authentication.
	socket := filepath.Join(runDir, "mysqld.sock")
	return &Def{
		Name: guestv1.EngineMariaDB, DataDir: data, ConfigFile: conf, DefaultConfig: configHeader + "[mysqld]\n",
		RunDir: runDir, RunDirMode: 0o755, Port: port, InitDirMode: 0o755, InitMarker: "mysql",
		Init: func(dir string) []Command {
			// --no-defaults: the system tables are made the same way whatever the configuration says.
			return []Command{{Path: MariaDBInstall, Args: []string{"--no-defaults", "--user=root", "--datadir=" + dir,
				"--auth-root-authentication-method=socket", "--skip-test-db"}}}
		},
		Server: func(args []string) Command {
			// --defaults-file must come first; Debian's /etc/mysql is never read.
			return Command{Path: MariaDBServer, Args: append([]string{"--defaults-file=" + conf, "--user=root", "--datadir=" + data,
				"--port=" + strconv.Itoa(port), "--bind-address=0.0.0.0", "--socket=" + socket,
				"--pid-file=" + filepath.Join(runDir, "mysqld.pid")}, args...)}
		},
		Health:       Command{Path: MariaDBClient, Args: []string{"--no-defaults", "--socket=" + socket, "--connect-timeout=2", "-N", "-e", "select 1"}},
		Healthy:      func(ok bool, _ string) bool { return ok },
		Version:      Command{Path: MariaDBServer, Args: []string{"--version"}},
		ParseVersion: func(out string) string { return firstVersion(out, "Ver ") },
		StopSignal:   syscall.SIGTERM,
	}
}

// pgInclude is the line of the data dir's postgresql.conf that reads the agent's configuration file.
func pgInclude(conf string) string {
	return "include_if_exists = '" + conf + "'\t# trove agent: engine_start configuration\n"
}

func postgresql(p Params, port int, runDir string) *Def {
	data := filepath.Join(p.DataRoot, guestv1.EnginePostgreSQL)
	conf := filepath.Join(p.ConfigRoot, "postgresql.conf")
	include := pgInclude(conf)
	ensureInclude := func(dir string) error {
		f := filepath.Join(dir, "postgresql.conf")
		b, err := os.ReadFile(f)
		if err != nil {
			return errs.Wrap(errs.Conflict, err, "PostgreSQL data dir has no readable postgresql.conf")
		}
		if strings.Contains(string(b), include) {
			return nil
		}
		fh, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return errs.Wrap(errs.Internal, err, "add the agent's include to postgresql.conf")
		}
		_, werr := fh.WriteString("\n" + include)
		if cerr := fh.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return errs.Wrap(errs.Internal, werr, "add the agent's include to postgresql.conf")
		}
		return nil
	}
	return &Def{
		Name: guestv1.EnginePostgreSQL, DataDir: data, ConfigFile: conf, DefaultConfig: configHeader,
		RunDir: runDir, RunDirOwner: "postgres", RunDirMode: 0o775 | fs.ModeSetgid, Port: port,
		DataOwner: "postgres", InitDirMode: 0o700, InitMarker: "PG_VERSION",
		Init: func(dir string) []Command {
			// initdb and postgres refuse to run as root.
			return []Command{{Path: PGBin + "/initdb", User: "postgres", Args: []string{"-D", dir, "-U", "postgres", "-E", "UTF8",
				"--locale=C.UTF-8", "--auth-local=peer", "--auth-host=scram-sha-256"}}}
		},
		PostInit: ensureInclude,
		Prepare: func() error {
			// A data dir restored from elsewhere may lack the include: add it, so the configuration applies.
			if _, err := os.Stat(filepath.Join(data, "postgresql.conf")); err != nil {
				return nil
			}
			return ensureInclude(data)
		},
		Server: func(args []string) Command {
			return Command{Path: PGBin + "/postgres", User: "postgres", Args: append([]string{"-D", data, "-p", strconv.Itoa(port),
				"-c", "listen_addresses=*", "-c", "unix_socket_directories=" + runDir}, args...)}
		},
		Health: Command{Path: PGBin + "/psql", User: "postgres", Args: []string{"-X", "-q", "-t", "-h", runDir, "-p", strconv.Itoa(port),
			"-d", "postgres", "-c", "select 1"}},
		Healthy:      func(ok bool, _ string) bool { return ok },
		Version:      Command{Path: PGBin + "/postgres", Args: []string{"--version"}},
		ParseVersion: func(out string) string { return firstVersion(out, "(PostgreSQL)") },
		StopSignal:   syscall.SIGINT,
	}
}

func redis(p Params, port int) *Def {
	data := filepath.Join(p.DataRoot, guestv1.EngineRedis)
	conf := filepath.Join(p.ConfigRoot, "redis.conf")
	return &Def{
		Name: guestv1.EngineRedis, DataDir: data, ConfigFile: conf, DefaultConfig: configHeader, Port: port, InitDirMode: 0o755,
		Server: func(args []string) Command {
			// The configuration file is the first argument; the options after it win over it.
			// repl-diskless-sync-delay 0: a replica or `redis-cli --rdb` gets its snapshot at once, not after 5 s.
			return Command{Path: RedisServer, Args: append([]string{conf, "--port", strconv.Itoa(port), "--dir", data,
				"--dbfilename", "dump.rdb", "--daemonize", "no", "--repl-diskless-sync-delay", "0"}, args...)}
		},
		Health: Command{Path: RedisCLI, Args: []string{"-p", strconv.Itoa(port), "ping"}},
		// A server that requires a password answers NOAUTH: it is up, and the agent holds no password.
		Healthy: func(_ bool, out string) bool {
			return strings.Contains(out, "PONG") || strings.Contains(out, "NOAUTH")
		},
		Version:      Command{Path: RedisServer, Args: []string{"--version"}},
		ParseVersion: func(out string) string { return firstVersion(out, "v=") },
		StopSignal:   syscall.SIGTERM,
	}
}
