package strategy

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

// pgFakeGuest answers the small commands a restore strategy captures (versions, lists, emptiness) from a
// table and returns canned results for long execs. It drives the strategies' checks and parsers only: the
// integration tests (build tag integration) show what the real tools and agent do.
type pgFakeGuest struct {
	mu      sync.Mutex
	answers map[string]string             // a unique substring of "tool arg arg ..." -> stdout
	execs   map[string]guestv1.ExecResult // tool -> result of a long exec
	ran     []guestv1.ExecRequest
	calls   []string // engine and file operations, in order
}

func (g *pgFakeGuest) Run(_ context.Context, req guestv1.ExecRequest, _ io.Reader) (guestv1.ExecResult, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ran = append(g.ran, req)
	k := req.Tool + " " + strings.Join(req.Args, " ")
	for sub, out := range g.answers {
		if strings.Contains(k, sub) {
			return guestv1.ExecResult{Tool: req.Tool, Done: true, Stdout: []byte(out)}, nil
		}
	}
	return guestv1.ExecResult{Tool: req.Tool, Done: true, ExitCode: 2, StderrTail: "fake: no answer for " + k}, nil
}

func (g *pgFakeGuest) Exec(_ context.Context, req guestv1.ExecRequest) (guestv1.ExecStarted, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ran = append(g.ran, req)
	return guestv1.ExecStarted{ExecID: fmt.Sprintf("%d|%s", len(g.ran)-1, req.Tool)}, nil
}

func (g *pgFakeGuest) WaitOnce(_ context.Context, id string, _ time.Duration) (guestv1.ExecResult, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, tool, _ := strings.Cut(id, "|")
	r, ok := g.execs[tool]
	if !ok {
		r = guestv1.ExecResult{Done: true}
	}
	r.ExecID, r.Tool = id, tool
	return r, nil
}

func (g *pgFakeGuest) note(s string) { g.mu.Lock(); g.calls = append(g.calls, s); g.mu.Unlock() }

func (g *pgFakeGuest) Cancel(context.Context, string) (guestv1.ExecResult, error) {
	return guestv1.ExecResult{}, nil
}
func (g *pgFakeGuest) Extract(_ context.Context, req guestv1.ExtractRequest, _ io.Reader) (guestv1.ExecResult, error) {
	g.note("extract " + req.Path)
	return guestv1.ExecResult{Done: true, Extracted: &guestv1.ExtractResult{Path: req.Path, Entries: 1, Bytes: 5}}, nil
}
func (g *pgFakeGuest) ReadFile(context.Context, string) (guestv1.FileData, error) {
	return guestv1.FileData{}, errs.NotFoundf("fake")
}
func (g *pgFakeGuest) WriteFile(context.Context, guestv1.FileWriteRequest) (guestv1.FileInfo, error) {
	return guestv1.FileInfo{}, errs.Internalf("fake")
}
func (g *pgFakeGuest) Remove(context.Context, guestv1.FileRemoveRequest) (guestv1.FileInfo, error) {
	return guestv1.FileInfo{}, nil
}
func (g *pgFakeGuest) Stat(_ context.Context, p string) (guestv1.FileInfo, error) {
	g.note("stat " + p)
	return guestv1.FileInfo{Path: p, Mode: 0o700}, nil
}
func (g *pgFakeGuest) List(context.Context, string) (guestv1.FileList, error) {
	return guestv1.FileList{}, nil
}
func (g *pgFakeGuest) EngineStart(context.Context, guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	g.note("start")
	return guestv1.EngineStatus{State: guestv1.EngineRunning, Healthy: true}, nil
}
func (g *pgFakeGuest) EngineStop(context.Context, guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	g.note("stop")
	return guestv1.EngineStatus{State: guestv1.EngineStopped}, nil
}
func (g *pgFakeGuest) EngineStatus(context.Context) (guestv1.EngineStatus, error) {
	return guestv1.EngineStatus{State: guestv1.EngineRunning, Healthy: true}, nil
}
func (g *pgFakeGuest) EngineReset(context.Context, guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	g.note("reset")
	return guestv1.EngineStatus{State: guestv1.EngineStopped}, nil
}

func pgManifest(strategy string, tools map[string]string, artifacts ...string) *catalog.Manifest {
	m := &catalog.Manifest{ID: "b1", Instance: "src", Engine: guestv1.EnginePostgreSQL, Strategy: strategy, Type: catalog.TypeFull,
		State: catalog.StateCompleted, Tools: tools, Options: map[string]string{}}
	for _, a := range artifacts {
		m.Artifacts = append(m.Artifacts, catalog.Artifact{Name: a, Key: catalog.ArtifactKey("b1", a)})
	}
	return m
}

func pgRequest(m *catalog.Manifest, engine, version, mode string, g Guest) Request {
	return Request{
		Chain:        []*catalog.Manifest{m},
		Guest:        g,
		Registration: guestv1.Registration{Instance: "t1", Engine: engine, EngineVersion: version, Tools: []string{"psql", "pg_restore", "pg_basebackup", "redis-cli", "tar"}},
		Mode:         mode,
		Source: func(m *catalog.Manifest, name string) (*guestv1.StorageRef, error) {
			return &guestv1.StorageRef{Key: catalog.ArtifactKey(m.ID, name)}, nil
		},
	}
}

func TestBasebackupCheck(t *testing.T) {
	m := pgManifest("pg_basebackup", map[string]string{"postgresql": "15.18", "pg_basebackup": "15.18"}, "base")
	cases := []struct {
		name, engine, version, mode string
		code                        errs.Code
	}{
		{"same minor", "postgresql", "15.18", "", ""},
		{"other minor", "postgresql", "15.2", backupv1.ModeNew, ""},
		{"newer major", "postgresql", "16.1", "", errs.BadRequest},
		{"older major", "postgresql", "14.10", "", errs.BadRequest},
		{"existing mode", "postgresql", "15.18", backupv1.ModeExisting, errs.BadRequest},
		{"wrong engine", "redis", "7.0.15", "", errs.BadRequest},
		{"no version", "postgresql", "", "", errs.Unavailable},
	}
	for _, c := range cases {
		err := pgBasebackupRestore{}.Check(pgRequest(m, c.engine, c.version, c.mode, nil))
		if errs.CodeOf(err) != c.code {
			t.Errorf("%s: got %v, want code %q", c.name, err, c.code)
		}
	}
	noTools := pgManifest("pg_basebackup", nil, "base")
	noTools.EngineVersion = "16.0"
	if err := (pgBasebackupRestore{}).Check(pgRequest(noTools, "postgresql", "15.18", "", nil)); !errs.Is(err, errs.BadRequest) {
		t.Errorf("engine version fallback: %v", err)
	}
	chain := pgRequest(m, "postgresql", "15.18", "", nil)
	chain.Chain = append(chain.Chain, m)
	if err := (pgBasebackupRestore{}).Check(chain); !errs.Is(err, errs.BadRequest) {
		t.Errorf("chain: %v", err)
	}
	if err := (pgBasebackupRestore{}).Check(pgRequest(pgManifest("pg_basebackup", m.Tools), "postgresql", "15.18", "", nil)); !errs.Is(err, errs.BadRequest) {
		t.Errorf("no base artifact: %v", err)
	}
}

// The order of the agent calls and the checks after them (mode, recovery) against canned answers.
func TestBasebackupRestoreSteps(t *testing.T) {
	m := pgManifest("pg_basebackup", map[string]string{"postgresql": "15.18"}, "base")
	g := &pgFakeGuest{answers: map[string]string{"pg_is_in_recovery": "f\n150018\n"}}
	if err := (pgBasebackupRestore{}).Restore(context.Background(), pgRequest(m, "postgresql", "15.18", "", g)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(g.calls, ","); got != "stop,extract data/postgresql,stat data/postgresql,start" {
		t.Fatalf("calls %s", got)
	}
	g = &pgFakeGuest{answers: map[string]string{"pg_is_in_recovery": "t\n150018\n"}}
	if err := (pgBasebackupRestore{}).Restore(context.Background(), pgRequest(m, "postgresql", "15.18", "", g)); err == nil {
		t.Fatal("a server left in recovery passed")
	}
}

func TestDataDirFromRegistration(t *testing.T) {
	for in, want := range map[string]string{"": "data/postgresql", "/var/lib/trove/postgresql": "data/postgresql", "/var/lib/trove/pg/15/": "data/pg/15"} {
		got, err := pgDataDir(guestv1.Registration{Status: guestv1.EngineStatus{DataDir: in}})
		if err != nil || got != want {
			t.Errorf("%q: got %q %v", in, got, err)
		}
	}
	for _, bad := range []string{"/srv/pg", "/var/lib/trove", "/var/lib/trove/../etc"} {
		if _, err := pgDataDir(guestv1.Registration{Status: guestv1.EngineStatus{DataDir: bad}}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
