package strategy

import (
	"context"
	"slices"
	"strings"
	"testing"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

// These tests cover the MariaDB strategies' pure logic: argument vectors, option and parent checks, and the
// reading of what mariadb-backup leaves in its extra-lsndir. The whole flow against a real guest is the
// integration test's (services/backup/integration_mariadb_test.go).

// mariadbFileGuest is a fake of the Guest interface for the parse logic only: it serves ReadFile from a map.
// Every other method is the nil embedded interface and panics if called.
type mariadbFileGuest struct {
	Guest
	files map[string]string
}

func (g mariadbFileGuest) ReadFile(_ context.Context, path string) (guestv1.FileData, error) {
	d, ok := g.files[path]
	if !ok {
		return guestv1.FileData{}, errs.NotFoundf("%s does not exist", path)
	}
	return guestv1.FileData{FileInfo: guestv1.FileInfo{Path: path, Size: int64(len(d))}, Data: []byte(d)}, nil
}

var mariadbGuestReg = guestv1.Registration{Instance: "db1", Engine: "mariadb", EngineVersion: "10.11.18-MariaDB-0+deb12u1"}

func mariadbParent() *catalog.Manifest {
	return &catalog.Manifest{
		ID: "b-full", Instance: "db1", Engine: "mariadb", EngineVersion: "10.11.18-MariaDB-0+deb12u1",
		Strategy: "mariabackup", Type: catalog.TypeFull, State: catalog.StateCompleted,
		Positions: map[string]string{"lsn_from": "0", "lsn_to": "44404", "lsn_last": "46957"},
	}
}

func TestMariabackupRegistered(t *testing.T) {
	s, err := Lookup("", "mariadb")
	if err != nil || s.Name() != "mariabackup" || !s.Incremental() {
		t.Fatalf("default for mariadb: %v %v", s, err)
	}
	d, err := Lookup("mariadb-dump", "mariadb")
	if err != nil || d.Incremental() {
		t.Fatalf("mariadb-dump: %v %v", d, err)
	}
	if _, err := Lookup("mariabackup", "postgresql"); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("wrong engine: %v", err)
	}
}

func TestMariabackupFullArgs(t *testing.T) {
	p, err := planMariabackup(Request{BackupID: "b1", Type: catalog.TypeFull, Registration: mariadbGuestReg})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"--no-defaults", "--user=root", "--socket=/run/mysqld/mysqld.sock",
		"--backup", "--stream=mbstream",
		"--target-dir=/var/lib/trove/.trove-backup-b1-scratch",
		"--extra-lsndir=/var/lib/trove/.trove-backup-b1",
		"--parallel=1",
		"--innodb-log-checkpoint-now",
	}
	if !slices.Equal(p.args, want) {
		t.Fatalf("args\n got %q\nwant %q", p.args, want)
	}
}

func TestMariabackupNoCheckpoint(t *testing.T) {
	p, err := planMariabackup(Request{BackupID: "b1", Options: map[string]string{"checkpoint": "false"}})
	if err != nil || slices.Contains(p.args, "--innodb-log-checkpoint-now") {
		t.Fatalf("%q %v", p.args, err)
	}
}

func TestMariabackupIncrementalArgs(t *testing.T) {
	p, err := planMariabackup(Request{BackupID: "b2", Type: catalog.TypeIncremental, Parent: mariadbParent(), Registration: mariadbGuestReg, Options: map[string]string{"parallel": "4"}})
	if err != nil {
		t.Fatal(err)
	}
	if p.args[len(p.args)-1] != "--incremental-lsn=44404" || !slices.Contains(p.args, "--parallel=4") || !slices.Contains(p.args, "--innodb-log-checkpoint-now") {
		t.Fatalf("args %q", p.args)
	}
	if p.parentLSN != 44404 || p.parentEnd != 46957 {
		t.Fatalf("parent lsn %d end %d", p.parentLSN, p.parentEnd)
	}
}

func TestMariabackupRefuses(t *testing.T) {
	mod := func(f func(*catalog.Manifest)) *catalog.Manifest { m := mariadbParent(); f(m); return m }
	for name, tc := range map[string]struct {
		req  Request
		code errs.Code
	}{
		"no parent":        {Request{BackupID: "b", Type: catalog.TypeIncremental}, errs.BadRequest},
		"parent of full":   {Request{BackupID: "b", Type: catalog.TypeFull, Parent: mariadbParent()}, errs.BadRequest},
		"dump parent":      {Request{BackupID: "b", Type: catalog.TypeIncremental, Parent: mod(func(m *catalog.Manifest) { m.Strategy = "mariadb-dump" })}, errs.BadRequest},
		"running parent":   {Request{BackupID: "b", Type: catalog.TypeIncremental, Parent: mod(func(m *catalog.Manifest) { m.State = catalog.StateRunning })}, errs.Conflict},
		"no lsn_to":        {Request{BackupID: "b", Type: catalog.TypeIncremental, Parent: mod(func(m *catalog.Manifest) { delete(m.Positions, "lsn_to") })}, errs.BadRequest},
		"bad lsn_to":       {Request{BackupID: "b", Type: catalog.TypeIncremental, Parent: mod(func(m *catalog.Manifest) { m.Positions["lsn_to"] = "1:2" })}, errs.BadRequest},
		"upgraded since":   {Request{BackupID: "b", Type: catalog.TypeIncremental, Registration: mariadbGuestReg, Parent: mod(func(m *catalog.Manifest) { m.EngineVersion = "10.6.12-MariaDB" })}, errs.Conflict},
		"unknown option":   {Request{BackupID: "b", Options: map[string]string{"paralel": "2"}}, errs.BadRequest},
		"parallel 0":       {Request{BackupID: "b", Options: map[string]string{"parallel": "0"}}, errs.BadRequest},
		"parallel garbage": {Request{BackupID: "b", Options: map[string]string{"parallel": "2; rm"}}, errs.BadRequest},
		"checkpoint maybe": {Request{BackupID: "b", Options: map[string]string{"checkpoint": "maybe"}}, errs.BadRequest},
		"unknown type":     {Request{BackupID: "b", Type: "differential"}, errs.BadRequest},
	} {
		_, err := planMariabackup(tc.req)
		if !errs.Is(err, tc.code) {
			t.Errorf("%s: got %v, want %s", name, err, tc.code)
		}
	}
}

// Captured from a guest (MariaDB 10.11.18) after an incremental backup with a binary log.
const mariadbIncCheckpoints = "backup_type = incremental\nfrom_lsn = 44404\nto_lsn = 44404\nlast_lsn = 1055558\nrecover_binlog_info = 0\n"

const mariadbIncInfo = `uuid = 1b8fc224-f00d-11f1-b478-fab20c984da4
name = 
tool_name = mariadb-backup
tool_command = --no-defaults --backup --user=root --socket=/run/mysqld/m2.sock --stream=mbstream --incremental-lsn=44404
tool_version = 10.11.18-MariaDB
ibbackup_version = 10.11.18-MariaDB
server_version = 10.11.18-MariaDB-0+deb12u1-log
binlog_pos = filename 'mysql-bin.000001', position '1840', GTID of the last change '0-1-10'
innodb_from_lsn = 44404
innodb_to_lsn = 44404
partial = N
incremental = Y
format = mbstream
compressed = N
`

func TestMariabackupReadResult(t *testing.T) {
	req := Request{BackupID: "b2", Type: catalog.TypeIncremental, Parent: mariadbParent(), Registration: mariadbGuestReg}
	p, err := planMariabackup(req)
	if err != nil {
		t.Fatal(err)
	}
	req.Guest = mariadbFileGuest{files: map[string]string{
		"data/.trove-backup-b2/xtrabackup_checkpoints": mariadbIncCheckpoints,
		"data/.trove-backup-b2/xtrabackup_info":        mariadbIncInfo,
	}}
	cp, info, err := mariabackupReadResult(context.Background(), req, p)
	if err != nil {
		t.Fatal(err)
	}
	if cp.FromLSN != 44404 || cp.LastLSN != 1055558 || info.Binlog.GTID != "0-1-10" || info.ToolVersion != "10.11.18-MariaDB" {
		t.Fatalf("%+v %+v", cp, info)
	}
	if err := p.verify(req, cp, info); err != nil {
		t.Fatalf("verify: %v", err)
	}

	// The same files do not fit a full backup, nor an incremental of another parent.
	if err := p.verify(Request{BackupID: "b2", Type: catalog.TypeFull}, cp, info); !errs.Is(err, errs.Internal) {
		t.Errorf("full: %v", err)
	}
	other := p
	other.parentLSN = 50000
	if err := other.verify(req, cp, info); !errs.Is(err, errs.Internal) {
		t.Errorf("other parent: %v", err)
	}
	// A server whose LSN is behind the parent's end was re-created since.
	behind := p
	behind.parentEnd = 2_000_000
	if err := behind.verify(req, cp, info); !errs.Is(err, errs.Conflict) || !strings.Contains(err.Error(), "full backup") {
		t.Errorf("behind: %v", err)
	}

	// A missing file (the tool died before writing it) is reported with what was being read.
	req.Guest = mariadbFileGuest{files: map[string]string{}}
	if _, _, err := mariabackupReadResult(context.Background(), req, p); !errs.Is(err, errs.NotFound) || !strings.Contains(err.Error(), "xtrabackup_checkpoints") {
		t.Errorf("missing: %v", err)
	}
}

func TestMariadbDumpArgs(t *testing.T) {
	args := mariadbDumpArgs(mariadbServer{version: "10.11.18-MariaDB"}, true)
	for _, a := range []string{"--no-defaults", "--all-databases", "--ignore-database=mysql", "--single-transaction", "--routines", "--triggers", "--events", "--hex-blob", "--default-character-set=utf8mb4", "--system=users", "--insert-ignore"} {
		if !slices.Contains(args, a) {
			t.Errorf("missing %s in %q", a, args)
		}
	}
	if slices.Contains(args, "--master-data=2") {
		t.Errorf("--master-data without a binary log: %q", args)
	}
	args = mariadbDumpArgs(mariadbServer{version: "10.11.18-MariaDB", logBin: true, gtid: "0-1-3"}, false)
	if !slices.Contains(args, "--master-data=2") || !slices.Contains(args, "--gtid") || slices.Contains(args, "--system=users") {
		t.Errorf("binlog, no users: %q", args)
	}
}

func TestParseMariadbServer(t *testing.T) {
	// Captured: `mariadb -N -B -e "SELECT @@version, @@log_bin, @@gtid_binlog_pos"`.
	s, err := parseMariadbServer("10.11.18-MariaDB-0+deb12u1\t0\t\n")
	if err != nil || s.logBin || s.gtid != "" || s.version != "10.11.18-MariaDB-0+deb12u1" {
		t.Fatalf("%+v %v", s, err)
	}
	s, err = parseMariadbServer("10.11.18-MariaDB-0+deb12u1-log\t1\t0-1-3\n")
	if err != nil || !s.logBin || s.gtid != "0-1-3" {
		t.Fatalf("%+v %v", s, err)
	}
	for _, bad := range []string{"", "x\t0\t\n", "10.11.18\t1\tnot-a-gtid\n", "10.11.18\t1\n"} {
		if _, err := parseMariadbServer(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestMariadbWrapRedacts(t *testing.T) {
	err := mariadbWrap(errs.Internalf("mariadb exited with 1: ERROR 1064 near 'IDENTIFIED BY PASSWORD '*B865CAE8F340F6CE1485A06F4492BB49718DF1EC''"), "load")
	if !errs.Is(err, errs.Internal) || strings.Contains(err.Error(), "B865CAE8") || !strings.HasPrefix(errs.From(err).Message, "load: mariadb exited") {
		t.Fatalf("%v", err)
	}
}
