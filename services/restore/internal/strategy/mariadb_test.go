package strategy

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

// These tests cover the MariaDB restore strategies' checks and argument vectors. Check is pure (it needs no
// guest); the few steps that read something from the guest use mariadbFakeGuest, a fake of the Guest
// interface for that parse logic only. Restores against real guests are the integration tests'.

// mariadbFakeGuest serves ReadFile from a map and answers `mariadb-backup --version` with a stderr line.
// Every other method is the nil embedded interface and panics if called.
type mariadbFakeGuest struct {
	Guest
	files   map[string]string
	version string
}

func (g mariadbFakeGuest) ReadFile(_ context.Context, path string) (guestv1.FileData, error) {
	d, ok := g.files[path]
	if !ok {
		return guestv1.FileData{}, errs.NotFoundf("%s does not exist", path)
	}
	return guestv1.FileData{Data: []byte(d)}, nil
}

func (g mariadbFakeGuest) Run(_ context.Context, req guestv1.ExecRequest, _ io.Reader) (guestv1.ExecResult, error) {
	if req.Tool != "mariadb-backup" || !slices.Equal(req.Args, []string{"--version"}) {
		panic("unexpected exec " + req.Tool)
	}
	return guestv1.ExecResult{Done: true, Tool: req.Tool, StderrTail: g.version}, nil
}

var mariadbTarget = guestv1.Registration{
	Instance: "db2", Engine: "mariadb", EngineVersion: "10.11.18-MariaDB-0+deb12u1",
	Tools: []string{"cat", "mariadb", "mariadb-backup", "mariadb-dump", "mbstream", "tar"},
}

func mariadbArtifact(id, name string) []catalog.Artifact {
	return []catalog.Artifact{{Name: name, Key: catalog.ArtifactKey(id, name)}}
}

// mariadbChain is full -> inc1 -> inc2 with the LSNs of a real chain.
func mariadbChain() []*catalog.Manifest {
	mk := func(id, typ, parent, from, to string) *catalog.Manifest {
		return &catalog.Manifest{
			ID: id, Instance: "db1", Engine: "mariadb", EngineVersion: "10.11.18-MariaDB-0+deb12u1-log", Strategy: "mariabackup",
			Type: typ, Parent: parent, State: catalog.StateCompleted,
			Positions: map[string]string{"lsn_from": from, "lsn_to": to},
			Tools:     map[string]string{"mariadb-backup": "10.11.18-MariaDB"},
			Artifacts: mariadbArtifact(id, "data"),
		}
	}
	return []*catalog.Manifest{
		mk("full", catalog.TypeFull, "", "0", "44404"),
		mk("inc1", catalog.TypeIncremental, "full", "44404", "52000"),
		mk("inc2", catalog.TypeIncremental, "inc1", "52000", "61000"),
	}
}

func mariadbDump(version string) *catalog.Manifest {
	return &catalog.Manifest{
		ID: "d1", Instance: "db1", Engine: "mariadb", EngineVersion: version, Strategy: "mariadb-dump",
		Type: catalog.TypeFull, State: catalog.StateCompleted, Artifacts: mariadbArtifact("d1", "dump"),
	}
}

func TestMariadbRestoresRegistered(t *testing.T) {
	for _, n := range []string{"mariabackup", "mariadb-dump"} {
		if s, err := Lookup(n); err != nil || s.Engine() != "mariadb" {
			t.Errorf("%s: %v %v", n, s, err)
		}
	}
}

func TestMariabackupCheck(t *testing.T) {
	s := mariabackupRestore{}
	if err := s.Check(Request{Chain: mariadbChain(), Registration: mariadbTarget, Mode: "new"}); err != nil {
		t.Fatalf("good chain: %v", err)
	}
	if err := s.Check(Request{Chain: mariadbChain()[:1], Registration: mariadbTarget}); err != nil {
		t.Fatalf("full alone, default mode: %v", err)
	}
	for name, tc := range map[string]struct {
		mod  func(*Request)
		code errs.Code
		says string
	}{
		"wrong engine":   {func(r *Request) { r.Registration.Engine = "postgresql" }, errs.BadRequest, "wrong engine"},
		"mode existing":  {func(r *Request) { r.Mode = "existing" }, errs.BadRequest, "mariadb-dump"},
		"empty chain":    {func(r *Request) { r.Chain = nil }, errs.BadRequest, "no backup"},
		"older target":   {func(r *Request) { r.Registration.EngineVersion = "10.6.21-MariaDB" }, errs.BadRequest, "same release series"},
		"newer target":   {func(r *Request) { r.Registration.EngineVersion = "11.4.5-MariaDB" }, errs.BadRequest, "same release series"},
		"no version":     {func(r *Request) { r.Registration.EngineVersion = "" }, errs.Unavailable, "no MariaDB version"},
		"no tool":        {func(r *Request) { r.Registration.Tools = []string{"mariadb"} }, errs.Unavailable, "mariadb-backup"},
		"dump in chain":  {func(r *Request) { r.Chain[1].Strategy = "mariadb-dump" }, errs.BadRequest, "mariabackup backups"},
		"starts inc":     {func(r *Request) { r.Chain = r.Chain[1:] }, errs.BadRequest, "one full backup"},
		"two fulls":      {func(r *Request) { r.Chain[1].Type = catalog.TypeFull }, errs.BadRequest, "one full backup"},
		"out of order":   {func(r *Request) { r.Chain[1], r.Chain[2] = r.Chain[2], r.Chain[1] }, errs.BadRequest, "out of order"},
		"gap":            {func(r *Request) { r.Chain[2].Positions["lsn_from"] = "51000" }, errs.Corrupt, "does not join"},
		"no lsn_to":      {func(r *Request) { delete(r.Chain[0].Positions, "lsn_to") }, errs.Corrupt, "lsn_to"},
		"no artifact":    {func(r *Request) { r.Chain[2].Artifacts = nil }, errs.Corrupt, "artifact"},
		"no bak version": {func(r *Request) { r.Chain[0].EngineVersion = "" }, errs.BadRequest, "no MariaDB server version"},
		"foreign tool":   {func(r *Request) { r.Chain[1].Tools["mariadb-backup"] = "10.6.3-MariaDB" }, errs.BadRequest, "cannot prepare"},
	} {
		req := Request{Chain: mariadbChain(), Registration: mariadbTarget, Mode: "new"}
		req.Registration.Tools = slices.Clone(mariadbTarget.Tools)
		tc.mod(&req)
		err := s.Check(req)
		if !errs.Is(err, tc.code) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: got %v, want %s saying %q", name, err, tc.code, tc.says)
		}
	}
	// The version recorded in Options (no EngineVersion) is used too.
	req := Request{Chain: mariadbChain()[:1], Registration: mariadbTarget}
	req.Chain[0].EngineVersion = ""
	req.Chain[0].Options = map[string]string{"server_version": "10.11.6-MariaDB"}
	if err := s.Check(req); err != nil {
		t.Errorf("version from options: %v", err)
	}
}

func TestMariabackupLayout(t *testing.T) {
	req := Request{Chain: mariadbChain()}
	l := mariabackupLayoutFor(req)
	if l.staging != "/var/lib/trove/.trove-restore-inc2" {
		t.Fatalf("staging %s", l.staging)
	}
	want := [][]string{
		{"--no-defaults", "--prepare", "--target-dir=/var/lib/trove/.trove-restore-inc2/0"},
		{"--no-defaults", "--prepare", "--target-dir=/var/lib/trove/.trove-restore-inc2/0", "--incremental-dir=/var/lib/trove/.trove-restore-inc2/1"},
		{"--no-defaults", "--prepare", "--target-dir=/var/lib/trove/.trove-restore-inc2/0", "--incremental-dir=/var/lib/trove/.trove-restore-inc2/2"},
	}
	got := l.prepareArgs()
	if len(got) != len(want) {
		t.Fatalf("prepare steps %q", got)
	}
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Errorf("step %d: %q, want %q", i, got[i], want[i])
		}
	}
	if mb := l.moveBackArgs("/var/lib/trove/mariadb"); !slices.Equal(mb, []string{"--no-defaults", "--move-back", "--target-dir=/var/lib/trove/.trove-restore-inc2/0", "--datadir=/var/lib/trove/mariadb"}) {
		t.Errorf("move-back %q", mb)
	}

	sk, err := l.skeleton()
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(sk))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeDir {
			t.Errorf("%s is not a dir", h.Name)
		}
		names = append(names, h.Name)
	}
	if !slices.Equal(names, []string{"0/", "1/", "2/"}) {
		t.Errorf("skeleton %q", names)
	}
}

func TestMariabackupCheckFetched(t *testing.T) {
	chain := mariadbChain()
	req := Request{Chain: chain}
	l := mariabackupLayoutFor(req)
	files := map[string]string{
		"data/.trove-restore-inc2/0/xtrabackup_checkpoints": "backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 44404\nlast_lsn = 46957\n",
		"data/.trove-restore-inc2/1/xtrabackup_checkpoints": "backup_type = incremental\nfrom_lsn = 44404\nto_lsn = 52000\nlast_lsn = 53000\n",
		"data/.trove-restore-inc2/2/xtrabackup_checkpoints": "backup_type = incremental\nfrom_lsn = 44404\nto_lsn = 52000\nlast_lsn = 53000\n", // inc1's, again
	}
	req.Guest = mariadbFakeGuest{files: files}
	for i := 0; i < 2; i++ {
		if err := mariabackupCheckFetched(context.Background(), req, l, i, chain[i]); err != nil {
			t.Errorf("element %d: %v", i, err)
		}
	}
	if err := mariabackupCheckFetched(context.Background(), req, l, 2, chain[2]); !errs.Is(err, errs.Corrupt) {
		t.Errorf("another backup's stream: %v", err)
	}
}

func TestMariabackupCheckTool(t *testing.T) {
	req := Request{Chain: mariadbChain(), Guest: mariadbFakeGuest{version: "mariadb-backup based on MariaDB server 10.11.18-MariaDB debian-linux-gnu (x86_64)\n"}}
	if err := mariabackupCheckTool(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	req.Guest = mariadbFakeGuest{version: "mariadb-backup based on MariaDB server 11.4.5-MariaDB debian-linux-gnu (x86_64)\n"}
	if err := mariabackupCheckTool(context.Background(), req); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("newer tool: %v", err)
	}
}

func TestMariadbDumpCheck(t *testing.T) {
	s := mariadbDumpRestore{}
	for _, mode := range []string{"", "new", "existing"} {
		if err := s.Check(Request{Chain: []*catalog.Manifest{mariadbDump("10.11.18-MariaDB-0+deb12u1")}, Registration: mariadbTarget, Mode: mode}); err != nil {
			t.Errorf("mode %q: %v", mode, err)
		}
	}
	// Older dumps load into newer servers (another patch level, or an older series).
	for _, v := range []string{"10.11.2-MariaDB", "10.6.21-MariaDB-log", "10.11.20-MariaDB"} {
		if err := s.Check(Request{Chain: []*catalog.Manifest{mariadbDump(v)}, Registration: mariadbTarget}); err != nil {
			t.Errorf("dump of %s: %v", v, err)
		}
	}
	for name, tc := range map[string]struct {
		req  Request
		code errs.Code
		says string
	}{
		"newer dump":   {Request{Chain: []*catalog.Manifest{mariadbDump("11.4.5-MariaDB")}, Registration: mariadbTarget}, errs.BadRequest, "older"},
		"wrong engine": {Request{Chain: []*catalog.Manifest{mariadbDump("10.11.18")}, Registration: guestv1.Registration{Engine: "redis", EngineVersion: "7.0.15"}}, errs.BadRequest, "wrong engine"},
		"chain":        {Request{Chain: []*catalog.Manifest{mariadbDump("10.11.18"), mariadbDump("10.11.18")}, Registration: mariadbTarget}, errs.BadRequest, "stands alone"},
		"odd mode":     {Request{Chain: []*catalog.Manifest{mariadbDump("10.11.18")}, Registration: mariadbTarget, Mode: "merge"}, errs.BadRequest, "mode"},
		"physical":     {Request{Chain: mariadbChain()[:1], Registration: mariadbTarget}, errs.BadRequest, "mariadb-dump"},
		"no version":   {Request{Chain: []*catalog.Manifest{mariadbDump("")}, Registration: mariadbTarget}, errs.BadRequest, "no MariaDB server version"},
	} {
		err := s.Check(tc.req)
		if !errs.Is(err, tc.code) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: got %v, want %s saying %q", name, err, tc.code, tc.says)
		}
	}
}

func TestMariadbLoadArgs(t *testing.T) {
	want := []string{"--no-defaults", "--user=root", "--socket=/run/mysqld/mysqld.sock", "--default-character-set=utf8mb4", "--max-allowed-packet=1073741824", "--batch"}
	if got := mariadbLoadArgs(); !slices.Equal(got, want) {
		t.Fatalf("%q", got)
	}
}
