// Package mariadb holds what the MariaDB strategies (backup, restore, replication) share about the engine
// and its tools: where things live in the guest image, version parsing and comparison, and the parsing of
// the files mariadb-backup writes (xtrabackup_checkpoints, xtrabackup_info, xtrabackup_binlog_info).
// It runs nothing itself: strategies drive the guest's agent and hand file contents and tool output here.
package mariadb

import (
	"path"
	"regexp"
	"strconv"
	"strings"

	"troveng.dev/shared/errs"
)

// Guest image layout (deploy/images/guest, docs/guest-image.md).
const (
	// DataRoot is the absolute path of the agent's "data" file root.
	DataRoot = "/var/lib/trove"
	// DataDir is MariaDB's data dir, inside DataRoot.
	DataDir = DataRoot + "/mariadb"
	// Socket is the server's unix socket; root authenticates on it by unix_socket (no password).
	// mariadb-backup needs it absolute.
	Socket = "/run/mysqld/mysqld.sock"
	// User is the account the strategies connect as.
	User = "root"
)

// ClientArgs are the first arguments of every client tool (mariadb, mariadb-dump, mariadb-backup --backup):
// no option files (Debian's /etc/mysql would point at /var/lib/mysql), root over the local socket.
func ClientArgs() []string {
	return []string{"--no-defaults", "--user=" + User, "--socket=" + Socket}
}

// Abs is the absolute guest path of rel, a path under the data root ("data/..." or a bare relative path).
func Abs(rel string) string {
	rel = strings.TrimPrefix(rel, "data/")
	return path.Join(DataRoot, rel)
}

// Rel is the agent file path ("data/...") of an absolute path under DataRoot.
func Rel(abs string) (string, error) {
	clean := path.Clean(abs)
	if !strings.HasPrefix(clean, DataRoot+"/") {
		return "", errs.BadRequestf("path %q is not under the guest's data root %s", abs, DataRoot)
	}
	return "data/" + strings.TrimPrefix(clean, DataRoot+"/"), nil
}

// Version is a MariaDB release number.
type Version struct {
	Major, Minor, Patch int
}

func (v Version) String() string {
	return strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) + "." + strconv.Itoa(v.Patch)
}

// Series is the release series ("10.11"): MariaDB's on-disk formats and mariadb-backup are tied to it.
func (v Version) Series() string { return strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) }

// IsZero reports an unset version.
func (v Version) IsZero() bool { return v == Version{} }

// Compare returns -1, 0 or 1 as v is older than, equal to or newer than w (patch included).
func (v Version) Compare(w Version) int {
	for _, d := range [][2]int{{v.Major, w.Major}, {v.Minor, w.Minor}, {v.Patch, w.Patch}} {
		if d[0] < d[1] {
			return -1
		}
		if d[0] > d[1] {
			return 1
		}
	}
	return 0
}

// CompareSeries compares major.minor only.
func (v Version) CompareSeries(w Version) int {
	return Version{v.Major, v.Minor, 0}.Compare(Version{w.Major, w.Minor, 0})
}

var versionRe = regexp.MustCompile(`(\d+)\.(\d+)(?:\.(\d+))?`)

// ParseVersion reads a server version as the server or the agent reports it: "10.11.18-MariaDB-0+deb12u1",
// "10.11.18-MariaDB-0+deb12u1-log", "10.11.18". The first x.y[.z] wins.
func ParseVersion(s string) (Version, error) {
	m := versionRe.FindStringSubmatch(s)
	if m == nil {
		return Version{}, errs.BadRequestf("no MariaDB version number in %q", clip(s))
	}
	return versionOf(m[1:]), nil
}

// distribRe finds the server release a client tool was built from: "Distrib 10.11.18-MariaDB" (mariadb,
// mariadb-dump) or "based on MariaDB server 10.11.18-MariaDB" (mariadb-backup). The tool's own number
// ("Ver 10.19") is not the release.
var distribRe = regexp.MustCompile(`(?:Distrib|MariaDB server)\s+(\d+)\.(\d+)(?:\.(\d+))?`)

// ParseToolVersion reads the release of a tool from its --version output (stdout or stderr).
func ParseToolVersion(out string) (Version, error) {
	if m := distribRe.FindStringSubmatch(out); m != nil {
		return versionOf(m[1:]), nil
	}
	return Version{}, errs.Internalf("cannot read a MariaDB release from the tool's version output %q", clip(out))
}

// versionOf reads the three groups of versionRe or distribRe (the patch may be empty).
func versionOf(m []string) Version {
	n := func(s string) int {
		i, _ := strconv.Atoi(s) // the regexp matched digits; an absurd length gives 0, compared as such
		return i
	}
	return Version{Major: n(m[0]), Minor: n(m[1]), Patch: n(m[2])}
}

func clip(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return strings.ToValidUTF8(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s), "?")
}

var gtidRe = regexp.MustCompile(`^\d+-\d+-\d+$`)

// ValidGTID checks a GTID position: a comma-separated list of domain-server-sequence ("0-1-42,1-2-7"),
// or empty (no binary log, or nothing logged yet).
func ValidGTID(s string) bool {
	if s == "" {
		return true
	}
	for _, p := range strings.Split(s, ",") {
		if !gtidRe.MatchString(strings.TrimSpace(p)) {
			return false
		}
	}
	return true
}

// secretRe finds the quoted strings of SQL that carry credentials: IDENTIFIED BY 'pw', PASSWORD 'hash',
// PASSWORD('pw'), USING 'hash', and MASTER_PASSWORD='pw'.
var secretRe = regexp.MustCompile(`(?i)((?:IDENTIFIED\s+BY(?:\s+PASSWORD)?|PASSWORD\s*\(?|USING|MASTER_PASSWORD\s*=)\s*)(?:'(?:[^'\\]|\\.|'')*'?|"(?:[^"\\]|\\.|"")*"?)`)

// Redact replaces credentials in SQL (a client's error message quoting a statement, a stderr tail) by
// '<redacted>', so a failed load's error never carries a password or its hash.
func Redact(s string) string {
	return secretRe.ReplaceAllString(s, "$1'<redacted>'")
}

// RedactError returns err with Redact applied to its message, keeping its code.
func RedactError(err error) error {
	if err == nil {
		return nil
	}
	e := errs.From(err)
	msg := Redact(e.Message)
	if msg == e.Message {
		return err
	}
	return errs.New(e.Code, "%s", msg)
}

// ParseRow reads the single row `mariadb -N -B -e "SELECT ..."` printed (tab-separated, one line) and
// checks it has n columns. Batch mode escapes tabs and newlines inside values, so splitting is exact.
func ParseRow(out string, n int) ([]string, error) {
	line := strings.TrimRight(out, "\r\n")
	if strings.Contains(line, "\n") {
		return nil, errs.Internalf("the query returned more than one row: %q", clip(out))
	}
	f := strings.Split(line, "\t")
	if len(f) != n {
		return nil, errs.Internalf("the query returned %d columns, want %d: %q", len(f), n, clip(out))
	}
	return f, nil
}
