package mariadb

import (
	"strings"
	"testing"

	"troveng.dev/shared/errs"
)

// The file contents below were captured from a guest (localhost/trove-guest:dev, MariaDB 10.11.18) after
// `mariadb-backup --backup --stream=mbstream --extra-lsndir=...` with and without a binary log.

const fullCheckpoints = "backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 44404\nlast_lsn = 46957\nrecover_binlog_info = 0\n"

const incCheckpoints = "backup_type = incremental\nfrom_lsn = 44404\nto_lsn = 44404\nlast_lsn = 1055558\nrecover_binlog_info = 0\n"

const preparedCheckpoints = "backup_type = log-applied\nfrom_lsn = 0\nto_lsn = 44404\nlast_lsn = 48001\nrecover_binlog_info = 0\n"

const infoNoBinlog = `uuid = d7728316-f00c-11f1-918b-fab20c984da4
name = 
tool_name = mariadb-backup
tool_command = --no-defaults --backup --user=root --socket=/run/mysqld/mysqld.sock --datadir=/var/lib/trove/mariadb --stream=mbstream --target-dir=/var/lib/trove/.trove/scratch-b1 --extra-lsndir=/var/lib/trove/.trove/b1
tool_version = 10.11.18-MariaDB
ibbackup_version = 10.11.18-MariaDB
server_version = 10.11.18-MariaDB-0+deb12u1
start_time = 2026-12-04 18:02:15
end_time = 2026-12-04 18:02:17
lock_time = 1796407335
binlog_pos = 
innodb_from_lsn = 0
innodb_to_lsn = 44404
partial = N
incremental = N
format = mbstream
compressed = N
`

const infoBinlogIncremental = `uuid = 1b8fc224-f00d-11f1-b478-fab20c984da4
name = 
tool_name = mariadb-backup
tool_command = --no-defaults --backup --user=root --socket=/run/mysqld/m2.sock --datadir=/var/lib/trove/m2 --stream=mbstream --target-dir=/var/lib/trove/.trove-scratch-b3 --extra-lsndir=/var/lib/trove/.trove-b3 --incremental-lsn=44404
tool_version = 10.11.18-MariaDB
ibbackup_version = 10.11.18-MariaDB
server_version = 10.11.18-MariaDB-0+deb12u1-log
start_time = 2026-12-04 18:04:10
end_time = 2026-12-04 18:04:11
lock_time = 1796407450
binlog_pos = filename 'mysql-bin.000001', position '1840', GTID of the last change '0-1-10'
innodb_from_lsn = 44404
innodb_to_lsn = 44404
partial = N
incremental = Y
format = mbstream
compressed = N
`

// As mbstream -x laid it down from the stream.
const binlogInfo = "mysql-bin.000001\t780\t0-1-3\n"

func TestParseCheckpoints(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Checkpoints
	}{
		{fullCheckpoints, Checkpoints{BackupTypeFull, 0, 44404, 46957}},
		{incCheckpoints, Checkpoints{BackupTypeIncremental, 44404, 44404, 1055558}},
		{preparedCheckpoints, Checkpoints{BackupTypeLogApplied, 0, 44404, 48001}},
	} {
		got, err := ParseCheckpoints([]byte(tc.in))
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("got %+v, want %+v", got, tc.want)
		}
	}
}

func TestParseCheckpointsRefuses(t *testing.T) {
	for name, in := range map[string]string{
		"empty":        "",
		"no type":      "from_lsn = 0\nto_lsn = 1\nlast_lsn = 2\n",
		"unknown type": "backup_type = partial\nfrom_lsn = 0\nto_lsn = 1\nlast_lsn = 2\n",
		"missing lsn":  "backup_type = full-backuped\nfrom_lsn = 0\nlast_lsn = 2\n",
		"not a number": "backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 12ab\nlast_lsn = 2\n",
		"negative":     "backup_type = full-backuped\nfrom_lsn = -1\nto_lsn = 1\nlast_lsn = 2\n",
		"backwards":    "backup_type = incremental\nfrom_lsn = 50\nto_lsn = 40\nlast_lsn = 60\n",
		"last < to":    "backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 40\nlast_lsn = 30\n",
	} {
		if _, err := ParseCheckpoints([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if errs.CodeOf(err) == "" {
			t.Errorf("%s: uncoded error %v", name, err)
		}
	}
}

func TestParseInfo(t *testing.T) {
	in, err := ParseInfo([]byte(infoNoBinlog))
	if err != nil {
		t.Fatal(err)
	}
	if in.ToolName != "mariadb-backup" || in.ToolVersion != "10.11.18-MariaDB" || in.ServerVersion != "10.11.18-MariaDB-0+deb12u1" || in.Incremental || !in.Binlog.IsZero() {
		t.Fatalf("no binlog: %+v", in)
	}
	in, err = ParseInfo([]byte(infoBinlogIncremental))
	if err != nil {
		t.Fatal(err)
	}
	want := BinlogPosition{File: "mysql-bin.000001", Pos: 1840, GTID: "0-1-10"}
	if !in.Incremental || in.Binlog != want || in.ServerVersion != "10.11.18-MariaDB-0+deb12u1-log" {
		t.Fatalf("incremental with binlog: %+v", in)
	}
	// A binlog without GTIDs yet.
	in, err = ParseInfo([]byte("tool_version = 10.11.18-MariaDB\nserver_version = 10.11.18-MariaDB\nbinlog_pos = filename 'b.000002', position '4'\n"))
	if err != nil || in.Binlog != (BinlogPosition{File: "b.000002", Pos: 4}) {
		t.Fatalf("no GTID: %+v %v", in, err)
	}
	for name, bad := range map[string]string{
		"no versions": "tool_name = mariadb-backup\n",
		"odd binlog":  "tool_version = 1\nserver_version = 1\nbinlog_pos = somewhere\n",
		"bad gtid":    "tool_version = 1\nserver_version = 1\nbinlog_pos = filename 'b.1', position '4', GTID of the last change 'x;drop'\n",
		"path file":   "tool_version = 1\nserver_version = 1\nbinlog_pos = filename '../b.1', position '4'\n",
	} {
		if _, err := ParseInfo([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseBinlogInfo(t *testing.T) {
	p, err := ParseBinlogInfo([]byte(binlogInfo))
	if err != nil || p != (BinlogPosition{File: "mysql-bin.000001", Pos: 780, GTID: "0-1-3"}) {
		t.Fatalf("%+v %v", p, err)
	}
	p, err = ParseBinlogInfo([]byte("mysql-bin.000003\t385\n"))
	if err != nil || p != (BinlogPosition{File: "mysql-bin.000003", Pos: 385}) {
		t.Fatalf("no gtid: %+v %v", p, err)
	}
	if p, err := ParseBinlogInfo(nil); err != nil || !p.IsZero() {
		t.Fatalf("empty: %+v %v", p, err)
	}
	for _, bad := range []string{"mysql-bin.000001 780", "f\tx\t0-1-1", "f\t1\t0-1", "a\tb\tc\td"} {
		if _, err := ParseBinlogInfo([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]Version{
		"10.11.18-MariaDB-0+deb12u1":     {10, 11, 18},
		"10.11.18-MariaDB-0+deb12u1-log": {10, 11, 18},
		"11.4.2":                         {11, 4, 2},
		"10.6":                           {10, 6, 0},
	} {
		got, err := ParseVersion(in)
		if err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", in, got, err, want)
		}
	}
	if _, err := ParseVersion("MariaDB"); err == nil {
		t.Error("no number accepted")
	}
}

func TestParseToolVersion(t *testing.T) {
	// Captured: mariadb-backup prints its version on stderr, the clients on stdout.
	for in, want := range map[string]Version{
		"mariadb-backup based on MariaDB server 10.11.18-MariaDB debian-linux-gnu (x86_64)\n":               {10, 11, 18},
		"mariadb-dump  Ver 10.19 Distrib 10.11.18-MariaDB, for debian-linux-gnu (x86_64)\n":                 {10, 11, 18},
		"mariadb  Ver 15.1 Distrib 10.11.18-MariaDB, for debian-linux-gnu (x86_64) using  EditLine wrapper": {10, 11, 18},
	} {
		got, err := ParseToolVersion(in)
		if err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", in, got, err, want)
		}
	}
	if _, err := ParseToolVersion("mbstream: unknown option '--version'"); err == nil {
		t.Error("no release accepted")
	}
}

func TestCompare(t *testing.T) {
	a, b, c := Version{10, 11, 18}, Version{10, 11, 6}, Version{11, 4, 0}
	if a.Compare(b) != 1 || b.Compare(a) != -1 || a.Compare(a) != 0 {
		t.Error("Compare")
	}
	if a.CompareSeries(b) != 0 || a.CompareSeries(c) != -1 || c.CompareSeries(b) != 1 {
		t.Error("CompareSeries")
	}
	if a.Series() != "10.11" || a.String() != "10.11.18" || !(Version{}).IsZero() {
		t.Error("Series/String/IsZero")
	}
}

func TestValidGTID(t *testing.T) {
	for s, ok := range map[string]bool{"": true, "0-1-3": true, "0-1-3,1-2-44": true, "0-1-3, 1-2-44": true, "0-1": false, "x": false, "0-1-3;": false} {
		if ValidGTID(s) != ok {
			t.Errorf("%q: want %v", s, ok)
		}
	}
}

func TestRedact(t *testing.T) {
	for _, in := range []string{
		"ERROR 1064 (42000) at line 88: near 'IDENTIFIED BY PASSWORD '*B865CAE8F340F6CE1485A06F4492BB49718DF1EC'' at line 1",
		"CREATE USER `app`@`%` IDENTIFIED BY 's3cret'",
		"SET PASSWORD FOR x = PASSWORD('s3cret')",
		"IDENTIFIED VIA mysql_native_password USING '*B865CAE8F340F6CE1485A06F4492BB49718DF1EC'",
		"CHANGE MASTER TO MASTER_PASSWORD='s3cret', MASTER_HOST='h'",
		`identified by "s3cret"`,
	} {
		out := Redact(in)
		if strings.Contains(out, "s3cret") || strings.Contains(out, "B865CAE8") || !strings.Contains(out, "<redacted>") {
			t.Errorf("%q -> %q", in, out)
		}
	}
	if s := "ERROR 1146 (42S02) at line 3: Table 't.x' doesn't exist"; Redact(s) != s {
		t.Errorf("redacted an innocent message: %q", Redact(s))
	}
	err := RedactError(errs.Internalf("mariadb exited with 1: near IDENTIFIED BY 'pw'"))
	if errs.CodeOf(err) != errs.Internal || strings.Contains(err.Error(), "'pw'") {
		t.Errorf("RedactError: %v", err)
	}
}

func TestParseRow(t *testing.T) {
	f, err := ParseRow("10.11.18-MariaDB-0+deb12u1\t0\t\n", 3)
	if err != nil || f[0] != "10.11.18-MariaDB-0+deb12u1" || f[1] != "0" || f[2] != "" {
		t.Fatalf("%q %v", f, err)
	}
	if _, err := ParseRow("a\tb\n", 3); err == nil {
		t.Error("short row accepted")
	}
	if _, err := ParseRow("a\tb\tc\nd\te\tf\n", 3); err == nil {
		t.Error("two rows accepted")
	}
}

func TestPaths(t *testing.T) {
	if Abs("data/.trove-restore-b1/0") != "/var/lib/trove/.trove-restore-b1/0" || Abs(".x") != "/var/lib/trove/.x" {
		t.Error("Abs")
	}
	if r, err := Rel("/var/lib/trove/mariadb"); err != nil || r != "data/mariadb" {
		t.Errorf("Rel: %q %v", r, err)
	}
	if _, err := Rel("/var/lib/trove/../etc"); err == nil {
		t.Error("Rel accepted an escape")
	}
}
