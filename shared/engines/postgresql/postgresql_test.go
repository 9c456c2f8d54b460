package postgresql

import (
	"strings"
	"testing"
)

func TestParseVersion(t *testing.T) {
	cases := []struct {
		in    string
		num   int
		major string
		str   string
	}{
		{"15.18", 150018, "15", "15.18"},
		{"15.18 (Debian 15.18-0+deb12u1)", 150018, "15", "15.18"},
		{"pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", 150018, "15", "15.18"},
		{"pg_restore (PostgreSQL) 16.4", 160004, "16", "16.4"},
		{"150018", 150018, "15", "15.18"},
		{"16beta2", 160000, "16", "16.0"},
		{"9.6.24", 90624, "9.6", "9.6.24"},
		{"90624", 90624, "9.6", "9.6.24"},
		{"10", 100000, "10", "10.0"},
	}
	for _, c := range cases {
		v, err := ParseVersion(c.in)
		if err != nil {
			t.Fatalf("%q: %v", c.in, err)
		}
		if v.Num != c.num || v.MajorString() != c.major || v.String() != c.str {
			t.Errorf("%q: got %d %s %s, want %d %s %s", c.in, v.Num, v.MajorString(), v, c.num, c.major, c.str)
		}
	}
	for _, bad := range []string{"", "PostgreSQL", "x15.1", "6.5"} {
		if _, err := ParseVersion(bad); err == nil {
			t.Errorf("%q: parsed", bad)
		}
	}
}

func TestCompareMajor(t *testing.T) {
	v := func(s string) Version {
		x, err := ParseVersion(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	if CompareMajor(v("15.2"), v("15.18")) != 0 {
		t.Error("15.2 vs 15.18: want same major")
	}
	if CompareMajor(v("9.6.24"), v("10.1")) != -1 || CompareMajor(v("16.0"), v("15.18")) != 1 {
		t.Error("major order wrong")
	}
	if CompareMajor(v("9.5.1"), v("9.6.1")) != -1 {
		t.Error("9.5 < 9.6 expected")
	}
}

func TestLSN(t *testing.T) {
	l, err := ParseLSN("16/B374D848")
	if err != nil || uint64(l) != 0x16B374D848 || l.String() != "16/B374D848" {
		t.Fatalf("got %v %v", l, err)
	}
	for _, bad := range []string{"", "0", "0/", "/1", "G/1", "123456789/0"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// The stderr of `pg_basebackup -D - -F tar -X fetch -c fast --verbose` on PostgreSQL 15.18 in the guest image.
const basebackupVerbose = `pg_basebackup: initiating base backup, waiting for checkpoint to complete
pg_basebackup: checkpoint completed
pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1
pg_basebackup: write-ahead log end point: 0/2000100
pg_basebackup: syncing data to disk ...
pg_basebackup: base backup completed
`

func TestParseBasebackupVerbose(t *testing.T) {
	p, err := ParseBasebackupVerbose(basebackupVerbose)
	if err != nil {
		t.Fatal(err)
	}
	if p.Start.String() != "0/2000028" || p.End.String() != "0/2000100" || p.Timeline != 1 {
		t.Fatalf("got %+v", p)
	}
	if _, err := ParseBasebackupVerbose("pg_basebackup: base backup completed\n"); err == nil {
		t.Error("no positions: want an error")
	}
	if _, err := ParseBasebackupVerbose(strings.Split(basebackupVerbose, "pg_basebackup: write-ahead log end")[0]); err == nil {
		t.Error("no end point: want an error")
	}
	swapped := strings.Replace(basebackupVerbose, "end point: 0/2000100", "end point: 0/1000000", 1)
	if _, err := ParseBasebackupVerbose(swapped); err == nil {
		t.Error("end before start: want an error")
	}
}

func TestConnDB(t *testing.T) {
	cases := map[string]string{
		"postgres":     `dbname='postgres'`,
		"it's":         `dbname='it\'s'`,
		`a\b`:          `dbname='a\\b'`,
		"host=evil x":  `dbname='host=evil x'`,
		"dö b\nzweite": "dbname='dö b\nzweite'",
	}
	for in, want := range cases {
		if got := ConnDB(in); got != want {
			t.Errorf("%q: got %s want %s", in, got, want)
		}
	}
}

func TestParseHex(t *testing.T) {
	names, err := ParseHexLines("64c3b62062\n706f737467726573\n\n610a62\n")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, "|") != "dö b|postgres|a\nb" {
		t.Fatalf("got %q", names)
	}
	if _, err := ParseHexLines("zz\n"); err == nil {
		t.Error("bad hex parsed")
	}
	l, err := ParseHexList("7431,7432\n")
	if err != nil || strings.Join(l, ",") != "t1,t2" {
		t.Fatalf("got %q %v", l, err)
	}
	if l, err := ParseHexList("\n"); err != nil || len(l) != 0 {
		t.Fatalf("empty: got %q %v", l, err)
	}
}

// psql 15.18's stderr for a globals script replayed onto an instance that has the roles already, plus made-up
// failures of other kinds.
const psqlStderr = `psql:<stdin>:16: ERROR:  42710: role "app" already exists
LOCATION:  CreateRole, user.c:308
psql:<stdin>:18: ERROR:  42710: role "postgres" already exists
LOCATION:  CreateRole, user.c:308
psql:<stdin>:20: ERROR:  42601: syntax error at or near "PASSWORD"
LINE 1: ALTER ROLE x PASSWORD 'SCRAM-SHA-256$4096:secret'
                     ^
psql:<stdin>:21: ERROR:  58P01: directory "/srv/ts" does not exist
psql:<stdin>:22: error: invalid command \restrict
psql:<stdin>:23: WARNING:  something harmless
`

func TestParsePsqlErrors(t *testing.T) {
	got := ParsePsqlErrors(psqlStderr)
	if len(got) != 5 {
		t.Fatalf("got %d errors: %+v", len(got), got)
	}
	if got[0].SQLState != SQLStateDuplicateObject || got[0].Line != 16 || got[0].Message != `role "app" already exists` {
		t.Errorf("first: %+v", got[0])
	}
	if got[3].SQLState != "58P01" || got[4].SQLState != "" || got[4].Message != `invalid command \restrict` {
		t.Errorf("others: %+v %+v", got[3], got[4])
	}
	for _, e := range got {
		if strings.Contains(e.String(), "SCRAM") || strings.Contains(e.String(), "secret") {
			t.Errorf("a password leaked: %s", e)
		}
	}
}

func TestRedactLiterals(t *testing.T) {
	got := RedactLiterals(`value 'a''b' and "Role" and 'SCRAM-SHA-256$x'`)
	if got != `value '…' and "Role" and '…'` {
		t.Fatalf("got %s", got)
	}
}

func TestRedactOutput(t *testing.T) {
	in := "psql:<stdin>:20: ERROR:  42601: syntax error at or near \"PASSWORD\"\nLINE 1: ALTER ROLE x PASSWORD 'SCRAM-SHA-256$4096:secret'\n                     ^\npg_restore: error: value 'abc' is bad\n"
	got := RedactOutput(in)
	if strings.Contains(got, "SCRAM") || strings.Contains(got, "secret") || strings.Contains(got, "abc") || strings.Contains(got, "LINE") {
		t.Fatalf("leaked: %q", got)
	}
	if !strings.Contains(got, `syntax error at or near "PASSWORD"`) || !strings.Contains(got, "pg_restore: error: value '…' is bad") {
		t.Fatalf("lost the message: %q", got)
	}
	// A literal cut open by a tail.
	if got := RedactOutput("...ord 'SCRAM-SHA-256$4096:se\nmore 'x'"); strings.Contains(got, "SCRAM") || strings.Contains(got, "se\n") {
		t.Fatalf("cut literal leaked: %q", got)
	}
}
