// Package postgresql holds what the strategy services know about PostgreSQL's tools that is not strategy
// logic: parsing versions and tool output, LSNs, and quoting for connection strings. It runs nothing.
package postgresql

import (
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"troveng.dev/shared/errs"
)

// Version is a PostgreSQL version in server_version_num form: 150018 for 15.18, 90624 for 9.6.24.
type Version struct {
	Num int
}

var versionRE = regexp.MustCompile(`(\d+)(?:\.(\d+))?(?:\.(\d+))?`)

// ParseVersion reads a version as PostgreSQL and its tools print it: "15.18", "15.18 (Debian 15.18-0+deb12u1)",
// "pg_dump (PostgreSQL) 15.18 (Debian ...)", "16beta2", "9.6.24", or a server_version_num such as "150018".
func ParseVersion(s string) (Version, error) {
	s = strings.TrimSpace(s)
	if i := strings.Index(s, "(PostgreSQL)"); i >= 0 {
		s = strings.TrimSpace(s[i+len("(PostgreSQL)"):])
	}
	if s != "" && len(s) >= 5 && allDigits(s) {
		n, err := strconv.Atoi(s)
		if err == nil && n >= 90000 {
			return Version{Num: n}, nil
		}
	}
	m := versionRE.FindStringSubmatch(s)
	if m == nil || versionRE.FindStringIndex(s)[0] != 0 {
		return Version{}, errs.BadRequestf("cannot read a PostgreSQL version from %q", clip(s))
	}
	a, _ := strconv.Atoi(m[1])
	b, _ := strconv.Atoi(zero(m[2]))
	c, _ := strconv.Atoi(zero(m[3]))
	switch {
	case a >= 10: // 15.18: major 15, minor 18
		return Version{Num: a*10000 + b}, nil
	case a >= 7: // 9.6.24: major 9.6, minor 24
		return Version{Num: a*10000 + b*100 + c}, nil
	}
	return Version{}, errs.BadRequestf("cannot read a PostgreSQL version from %q", clip(s))
}

// Major is the major version as a comparable number: 1500 for 15.x, 906 for 9.6.x (9.6 < 10 < 15).
func (v Version) Major() int { return v.Num / 100 }

// MajorString is the major version as people write it: "15", "9.6".
func (v Version) MajorString() string {
	if v.Num >= 100000 {
		return strconv.Itoa(v.Num / 10000)
	}
	return fmt.Sprintf("%d.%d", v.Num/10000, v.Num/100%100)
}

// String is "15.18" or "9.6.24".
func (v Version) String() string {
	if v.Num >= 100000 {
		return fmt.Sprintf("%d.%d", v.Num/10000, v.Num%10000)
	}
	return fmt.Sprintf("%d.%d.%d", v.Num/10000, v.Num/100%100, v.Num%100)
}

// CompareMajor is -1, 0 or 1 as a's major version is older than, the same as, or newer than b's.
func CompareMajor(a, b Version) int {
	switch am, bm := a.Major(), b.Major(); {
	case am < bm:
		return -1
	case am > bm:
		return 1
	}
	return 0
}

// LSN is a WAL location.
type LSN uint64

// ParseLSN reads "0/2000028".
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, errs.BadRequestf("WAL location %q: want X/Y in hexadecimal (e.g. 0/2000028)", clip(s))
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, errs.BadRequestf("WAL location %q: want X/Y in hexadecimal (e.g. 0/2000028)", clip(s))
	}
	return LSN(h<<32 | l), nil
}

// String formats the LSN as PostgreSQL does ("0/2000028").
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF) }

// BackupPositions are the WAL positions pg_basebackup reports with --verbose.
type BackupPositions struct {
	Start    LSN
	End      LSN
	Timeline int
}

var (
	startRE = regexp.MustCompile(`write-ahead log start point: ([0-9A-Fa-f]+/[0-9A-Fa-f]+) on timeline (\d+)`)
	endRE   = regexp.MustCompile(`write-ahead log end point: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)`)
)

// ParseBasebackupVerbose reads the start and end WAL locations and the timeline from pg_basebackup --verbose's
// stderr ("pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1", "... end point: 0/2000100").
// These lines come from the server's own BASE_BACKUP replies, so they are the backup's exact positions (the
// same as its backup_label and the backup history file).
func ParseBasebackupVerbose(stderr string) (BackupPositions, error) {
	var p BackupPositions
	m := startRE.FindStringSubmatch(stderr)
	if m == nil {
		return p, errs.Internalf("pg_basebackup --verbose reported no write-ahead log start point (is the server's lc_messages English?)")
	}
	var err error
	if p.Start, err = ParseLSN(m[1]); err != nil {
		return p, err
	}
	if p.Timeline, err = strconv.Atoi(m[2]); err != nil {
		return p, errs.Internalf("pg_basebackup reported timeline %q", m[2])
	}
	e := endRE.FindStringSubmatch(stderr)
	if e == nil {
		return p, errs.Internalf("pg_basebackup --verbose reported no write-ahead log end point")
	}
	if p.End, err = ParseLSN(e[1]); err != nil {
		return p, err
	}
	if p.End < p.Start {
		return p, errs.Internalf("pg_basebackup reported an end point %s before its start point %s", p.End, p.Start)
	}
	return p, nil
}

// ConnDB is a libpq connection string naming one database, quoted so any name (spaces, quotes, '=',
// backslashes, any unicode) is taken literally and never read as options: dbname='it”s' style escaping with
// backslashes, as libpq documents.
func ConnDB(name string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "dbname='" + r.Replace(name) + "'"
}

// HexNamesSQL is a query fragment that turns a name column into hex of its UTF-8 bytes, so a list of names
// (which may hold newlines or any unicode) survives psql's line-oriented unaligned output.
func HexNamesSQL(column string) string {
	return "encode(convert_to(" + column + "::text, 'UTF8'), 'hex')"
}

// ParseHexLines decodes psql -At output of HexNamesSQL values, one per line; empty lines are skipped.
func ParseHexLines(out string) ([]string, error) {
	var names []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		b, err := hex.DecodeString(line)
		if err != nil {
			return nil, errs.Internalf("psql returned %q where a hex-encoded name was expected", clip(line))
		}
		names = append(names, string(b))
	}
	return names, nil
}

// ParseHexList decodes one line of comma-separated hex names (string_agg of HexNamesSQL).
func ParseHexList(out string) ([]string, error) {
	out = strings.TrimSpace(out)
	if out == "" {
		return nil, nil
	}
	return ParseHexLines(strings.ReplaceAll(out, ",", "\n"))
}

// PsqlError is one error psql reported while running a script with VERBOSITY=verbose.
type PsqlError struct {
	Line     int    // script line (0 when psql named none)
	SQLState string // e.g. "42710"; empty for psql's own errors (bad meta-command, connection)
	Message  string // redacted: single-quoted literals replaced by '…'
}

func (e PsqlError) String() string {
	s := ""
	if e.Line > 0 {
		s = fmt.Sprintf("line %d: ", e.Line)
	}
	if e.SQLState != "" {
		s += e.SQLState + " "
	}
	return s + e.Message
}

// SQLStateDuplicateObject is "role ... already exists" (and other CREATE of an existing object).
const SQLStateDuplicateObject = "42710"

var psqlErrRE = regexp.MustCompile(`^psql:[^:]*:(\d+): (ERROR|FATAL|PANIC|error):\s+(?:([0-9A-Z]{5}): )?(.*)$`)

// ParsePsqlErrors lists the errors in psql's stderr from `psql -v VERBOSITY=verbose -f ...`: lines such as
// "psql:<stdin>:18: ERROR:  42710: role "postgres" already exists" or "psql:<stdin>:3: error: invalid command
// \foo". Continuation lines (LINE, DETAIL, HINT, LOCATION, the caret) are dropped: LINE and the caret quote
// the statement, which may hold a password. Messages are redacted the same way (RedactLiterals).
func ParsePsqlErrors(stderr string) []PsqlError {
	var out []PsqlError
	for _, line := range strings.Split(stderr, "\n") {
		line = strings.TrimRight(line, "\r")
		m := psqlErrRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		out = append(out, PsqlError{Line: n, SQLState: m[3], Message: RedactLiterals(m[4])})
	}
	return out
}

// RedactOutput makes a tool's stderr fit for an error message: the lines that quote a failed statement
// (psql's "LINE n: ..." and the caret under it) are dropped and single-quoted literals redacted, so a password
// in an ALTER ROLE, or a row's data, never reaches a log or an error.
func RedactOutput(s string) string {
	lines := strings.Split(s, "\n")
	out := lines[:0]
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if lineRE.MatchString(t) || strings.Trim(t, "^ ") == "" && strings.Contains(t, "^") {
			continue
		}
		out = append(out, l)
	}
	s = RedactLiterals(strings.Join(out, "\n"))
	// An unmatched quote (a literal cut by a tail, or split over lines) hides everything after it.
	if i := strings.IndexByte(s, '\''); i >= 0 && strings.Count(s, "'") != 2*strings.Count(s, "'…'") {
		s = s[:i] + "'…"
	}
	return s
}

var lineRE = regexp.MustCompile(`^(?:.*: )?LINE \d+: `)

var literalRE = regexp.MustCompile(`'(?:[^']|'')*'`)

// RedactLiterals replaces single-quoted SQL literals (where a password, or a row's data, would be) with '…'.
// Double-quoted identifiers (role and database names) are kept: they are what a person needs to act.
func RedactLiterals(s string) string { return literalRE.ReplaceAllString(s, "'…'") }

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func zero(s string) string {
	if s == "" {
		return "0"
	}
	return s
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// The layout of a pg_dump backup, shared by the backup and restore strategies: one artifact of globals (roles,
// memberships, tablespaces from pg_dumpall --globals-only) and one custom-format archive per database, whose
// name the manifest's options hold (database names may hold any character; artifact names are plain).
const (
	DumpGlobalsArtifact = "globals"
	// DumpDatabasesOption is the number of database artifacts.
	DumpDatabasesOption = "databases"
)

// DumpDatabaseArtifact is the artifact of the i-th database (1-based): "db-0001".
func DumpDatabaseArtifact(i int) string { return fmt.Sprintf("db-%04d", i) }

// DumpDatabaseOption is the manifest option holding the name of the database in DumpDatabaseArtifact(i).
func DumpDatabaseOption(i int) string { return "database." + DumpDatabaseArtifact(i) }

// BasebackupArtifact is the one artifact of a pg_basebackup backup: the data dir as a tar, WAL included.
const BasebackupArtifact = "base"
