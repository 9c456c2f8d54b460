// Package toolexec is the agent's allow-list of local tools and the way it starts one: an absolute binary,
// an argument vector (never a shell), a restricted environment, the tool's own user, and a process group of
// its own so that cancelling kills every process the tool started.
package toolexec

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"troveng.dev/agent/internal/osuser"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

// Def declares one allow-listed tool: where its binary may be, what runs it, what it may receive.
type Def struct {
	Name string
	// Paths are absolute candidate paths of the binary; the first that is an executable regular file wins.
	Paths []string
	// Prefix are arguments put before the caller's (e.g. the agent's own "datagen" subcommand).
	Prefix []string
	// User runs the tool ("" or "root": root; "postgres" for PostgreSQL's tools).
	User string
	// Env are the names of the environment variables the caller may pass (e.g. PGPASSWORD).
	Env []string
}

// Tool is an allow-listed tool whose binary exists on this host.
type Tool struct {
	Def
	Path string // the resolved binary
	user osuser.Identity
}

// Identity is the user the tool runs as.
func (t Tool) Identity() osuser.Identity { return t.user }

// PostgreSQL's client and backup tools live in the version's bin dir (Debian's /usr/bin wrappers are Perl
// scripts that pick a cluster; the agent calls the binaries directly).
const pgBin = "/usr/lib/postgresql/15/bin/"

var (
	mariadbEnv = []string{"MYSQL_PWD"}
	pgEnv      = []string{"PGPASSWORD", "PGUSER", "PGDATABASE", "PGHOST", "PGPORT", "PGSSLMODE", "PGAPPNAME", "PGOPTIONS", "PGCONNECT_TIMEOUT"}
	redisEnv   = []string{"REDISCLI_AUTH"}
)

// Defaults is the guest image's allow-list. self is the agent's own binary (for the datagen tool).
func Defaults(self string) []Def {
	usr := func(names ...string) []string {
		var out []string
		for _, n := range names {
			out = append(out, "/usr/bin/"+n, "/bin/"+n)
		}
		return out
	}
	defs := []Def{
		{Name: "mariadb", Paths: usr("mariadb"), Env: mariadbEnv},
		{Name: "mariadb-dump", Paths: usr("mariadb-dump"), Env: mariadbEnv},
		{Name: "mariadb-backup", Paths: usr("mariadb-backup"), Env: mariadbEnv},
		{Name: "mariabackup", Paths: usr("mariabackup", "mariadb-backup"), Env: mariadbEnv},
		{Name: "mbstream", Paths: usr("mbstream")},
		{Name: "mariadb-admin", Paths: usr("mariadb-admin"), Env: mariadbEnv},
		{Name: "redis-cli", Paths: usr("redis-cli"), Env: redisEnv},
		{Name: "tar", Paths: usr("tar")},
		{Name: "zstd", Paths: usr("zstd")},
		{Name: "gzip", Paths: usr("gzip")},
		{Name: "cat", Paths: usr("cat")},
		{Name: "sha256sum", Paths: usr("sha256sum")},
	}
	for _, n := range []string{"psql", "pg_dump", "pg_dumpall", "pg_restore", "pg_basebackup", "pg_controldata", "pg_isready"} {
		defs = append(defs, Def{Name: n, Paths: []string{pgBin + n}, User: "postgres", Env: pgEnv})
	}
	if self != "" {
		defs = append(defs, Def{Name: "datagen", Paths: []string{self}, Prefix: []string{"datagen"}})
	}
	sort.Slice(defs, func(i, j int) bool { return defs[i].Name < defs[j].Name })
	return defs
}

// AllowList is the set of tools a guest runs.
type AllowList struct {
	tools  map[string]Tool
	absent map[string]string // allowed, but no binary (or no user) on this host: why
}

var (
	toolNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)
	envNameRe  = regexp.MustCompile(`^[A-Z_][A-Z0-9_]{0,127}$`)
)

// Resolve checks defs and keeps the tools whose binary (and user) exist on this host.
func Resolve(defs []Def) (*AllowList, error) {
	a := &AllowList{tools: map[string]Tool{}, absent: map[string]string{}}
	for _, d := range defs {
		if !toolNameRe.MatchString(d.Name) {
			return nil, errs.BadRequestf("allow-list: tool name %q must be lower-case letters, digits, '.', '_' or '-'", d.Name)
		}
		if _, dup := a.tools[d.Name]; dup {
			return nil, errs.BadRequestf("allow-list: tool %q is declared twice", d.Name)
		}
		for _, e := range d.Env {
			if !envNameRe.MatchString(e) || reservedEnv(e) {
				return nil, errs.BadRequestf("allow-list: tool %q: %q cannot be a permitted environment variable", d.Name, e)
			}
		}
		if err := ValidateArgs(d.Prefix); err != nil {
			return nil, errs.BadRequestf("allow-list: tool %q: %s", d.Name, errs.From(err).Message)
		}
		id, err := osuser.Lookup(d.User)
		if err != nil {
			a.absent[d.Name] = errs.From(err).Message
			continue
		}
		path := ""
		for _, p := range d.Paths {
			if !filepath.IsAbs(p) {
				return nil, errs.BadRequestf("allow-list: tool %q: binary path %q is not absolute", d.Name, p)
			}
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
				path = p
				break
			}
		}
		if path == "" {
			a.absent[d.Name] = "its binary is not installed (looked at " + strings.Join(d.Paths, ", ") + ")"
			continue
		}
		a.tools[d.Name] = Tool{Def: d, Path: path, user: id}
	}
	return a, nil
}

// Names lists the tools available here, sorted (Registration.Tools).
func (a *AllowList) Names() []string {
	out := make([]string, 0, len(a.tools))
	for n := range a.tools {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Lookup returns the named tool. A name not on the allow-list is a bad request; an allowed tool this host
// lacks is Unavailable.
func (a *AllowList) Lookup(name string) (Tool, error) {
	if t, ok := a.tools[name]; ok {
		return t, nil
	}
	if why, ok := a.absent[name]; ok {
		return Tool{}, errs.Unavailablef("tool %q is allowed but cannot run on this guest: %s", name, why)
	}
	return Tool{}, errs.BadRequestf("tool %q is not on this guest's allow-list (tools are named, not paths; allowed: %s)", printable(name), strings.Join(a.Names(), ", "))
}

// reservedEnv are the names the agent sets itself.
func reservedEnv(name string) bool {
	return name == "PATH" || name == "HOME" || name == "LANG" || strings.HasPrefix(name, "LD_") || name == "TROVE_DATA_KEY"
}

// ValidateArgs checks an argument vector against the contract's limits: at most MaxArgs arguments of at
// most MaxArgLen bytes, valid UTF-8, no NUL (which would cut an argument short in exec).
func ValidateArgs(args []string) error {
	if len(args) > guestv1.MaxArgs {
		return errs.BadRequestf("%d arguments; the limit is %d", len(args), guestv1.MaxArgs)
	}
	for i, a := range args {
		if len(a) > guestv1.MaxArgLen {
			return errs.BadRequestf("argument %d is %d bytes long; the limit is %d", i, len(a), guestv1.MaxArgLen)
		}
		if strings.IndexByte(a, 0) >= 0 {
			return errs.BadRequestf("argument %d contains a NUL byte", i)
		}
		if !utf8.ValidString(a) {
			return errs.BadRequestf("argument %d is not valid UTF-8", i)
		}
	}
	return nil
}

// BasePath is the PATH every tool gets.
const BasePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Environ builds the tool's whole environment: PATH, HOME (the run-as user's), LANG=C.UTF-8, and the
// caller's variables whose names the tool permits. Values are checked but never put in an error.
func (t Tool) Environ(extra map[string]string) ([]string, error) {
	env := []string{"PATH=" + BasePath, "HOME=" + t.user.Home, "LANG=C.UTF-8"}
	names := make([]string, 0, len(extra))
	for n := range extra {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !slices.Contains(t.Env, n) {
			permitted := "none"
			if len(t.Env) > 0 {
				permitted = strings.Join(t.Env, ", ")
			}
			return nil, errs.BadRequestf("tool %s may not receive environment variable %q (permitted: %s)", t.Name, printable(n), permitted)
		}
		v := extra[n]
		if strings.IndexByte(v, 0) >= 0 || len(v) > guestv1.MaxArgLen {
			return nil, errs.BadRequestf("environment variable %s has a NUL byte or is longer than %d bytes (value not shown)", n, guestv1.MaxArgLen)
		}
		env = append(env, n+"="+v)
	}
	return env, nil
}

// EnvNames lists the names of env (for logs: never the values).
func EnvNames(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for n := range env {
		out = append(out, printable(n))
	}
	sort.Strings(out)
	return out
}

func printable(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strings.ToValidUTF8(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s), "?")
}
