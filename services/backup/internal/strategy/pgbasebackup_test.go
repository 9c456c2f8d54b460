package strategy

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

// fakeGuest answers the small commands a strategy captures (versions, lists) from a table, and returns a
// canned result for a long exec. It exists only to drive the strategies' checks and parsers without a guest:
// whether the real tools behave like this is what the integration tests (build tag integration) show.
type fakeGuest struct {
	mu      sync.Mutex
	answers map[string]string             // "tool arg arg ..." (or a unique substring of it) -> stdout
	execs   map[string]guestv1.ExecResult // tool -> result of a long exec
	ran     []guestv1.ExecRequest
	removed []string
}

func (g *fakeGuest) key(req guestv1.ExecRequest) string {
	return req.Tool + " " + strings.Join(req.Args, " ")
}

func (g *fakeGuest) Run(_ context.Context, req guestv1.ExecRequest, _ io.Reader) (guestv1.ExecResult, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ran = append(g.ran, req)
	k := g.key(req)
	for sub, out := range g.answers {
		if strings.Contains(k, sub) {
			return guestv1.ExecResult{Tool: req.Tool, Done: true, Stdout: []byte(out)}, nil
		}
	}
	return guestv1.ExecResult{Tool: req.Tool, Done: true, ExitCode: 2, StderrTail: "fake: no answer for " + k}, nil
}

func (g *fakeGuest) Exec(_ context.Context, req guestv1.ExecRequest) (guestv1.ExecStarted, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ran = append(g.ran, req)
	return guestv1.ExecStarted{ExecID: fmt.Sprintf("%d|%s", len(g.ran)-1, req.Tool)}, nil
}

func (g *fakeGuest) WaitOnce(_ context.Context, execID string, _ time.Duration) (guestv1.ExecResult, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, tool, _ := strings.Cut(execID, "|")
	r, ok := g.execs[tool]
	if !ok {
		r = guestv1.ExecResult{Done: true}
	}
	r.Tool, r.ExecID = tool, execID
	var i int
	_, _ = fmt.Sscanf(execID, "%d|", &i)
	if g.ran[i].Stdout.Mode == guestv1.StdoutStorage && r.Artifact == nil && r.ExitCode == 0 {
		r.Artifact = &guestv1.Artifact{Key: g.ran[i].Stdout.Storage.Key, Size: 10, RawSize: 20}
	}
	return r, nil
}

func (g *fakeGuest) Cancel(context.Context, string) (guestv1.ExecResult, error) {
	return guestv1.ExecResult{}, nil
}
func (g *fakeGuest) ReadFile(context.Context, string) (guestv1.FileData, error) {
	return guestv1.FileData{}, errs.NotFoundf("fake")
}
func (g *fakeGuest) WriteFile(context.Context, guestv1.FileWriteRequest) (guestv1.FileInfo, error) {
	return guestv1.FileInfo{}, errs.Internalf("fake")
}
func (g *fakeGuest) Remove(_ context.Context, req guestv1.FileRemoveRequest) (guestv1.FileInfo, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.removed = append(g.removed, req.Path)
	return guestv1.FileInfo{}, errs.NotFoundf("fake: %s absent", req.Path)
}
func (g *fakeGuest) Stat(context.Context, string) (guestv1.FileInfo, error) {
	return guestv1.FileInfo{}, errs.NotFoundf("fake")
}

// execsOf lists the long execs (Exec, not Run) the strategy started, in order.
func (g *fakeGuest) execsOf(tool string) []guestv1.ExecRequest {
	var out []guestv1.ExecRequest
	for _, r := range g.ran {
		if r.Tool == tool && r.Stdout.Mode != guestv1.StdoutCapture {
			out = append(out, r)
		}
	}
	return out
}

func fakeRequest(g *fakeGuest, engine string) Request {
	return Request{
		BackupID:     "b1",
		Type:         catalog.TypeFull,
		Guest:        g,
		Registration: guestv1.Registration{Instance: "i1", Engine: engine, Status: guestv1.EngineStatus{Port: 5433}},
		Artifact: func(name string) *guestv1.StorageRef {
			return &guestv1.StorageRef{Key: catalog.ArtifactKey("b1", name)}
		},
	}
}

const pgVerbose = `pg_basebackup: initiating base backup, waiting for checkpoint to complete
pg_basebackup: checkpoint completed
pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1
pg_basebackup: write-ahead log end point: 0/2000100
pg_basebackup: base backup completed
`

func pgAnswers(tablespaces string) map[string]string {
	return map[string]string{
		"show server_version_num":    "150018\n15.18 (Debian 15.18-0+deb12u1)\n" + tablespaces + "\n",
		"pg_basebackup --version":    "pg_basebackup (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n",
		"pg_dump --version":          "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n",
		"pg_dumpall --version":       "pg_dumpall (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n",
		"from pg_database where not": "706f737467726573\n64c3b62062\n",
	}
}

func TestBasebackupArgs(t *testing.T) {
	got := basebackupArgs(guestv1.Registration{})
	want := []string{"-h", "/run/postgresql", "-p", "5432", "-U", "postgres", "-D", "-", "-F", "tar", "-X", "fetch", "-c", "fast", "--verbose"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

func TestBasebackupPositionsAndTools(t *testing.T) {
	g := &fakeGuest{answers: pgAnswers(""), execs: map[string]guestv1.ExecResult{"pg_basebackup": {Done: true, StderrTail: pgVerbose}}}
	res, err := pgBasebackup{}.Backup(context.Background(), fakeRequest(g, guestv1.EnginePostgreSQL))
	if err != nil {
		t.Fatal(err)
	}
	if res.Positions["wal_start"] != "0/2000028" || res.Positions["wal_end"] != "0/2000100" || res.Positions["timeline"] != "1" {
		t.Errorf("positions %v", res.Positions)
	}
	if res.Tools["pg_basebackup"] != "15.18" || res.Tools["postgresql"] != "15.18" || res.Options["server_version_num"] != "150018" {
		t.Errorf("tools %v options %v", res.Tools, res.Options)
	}
	if len(res.Artifacts) != 1 || res.Artifacts[0].Name != "base" || res.Artifacts[0].Artifact.Key != "backups/b1/base" {
		t.Errorf("artifacts %+v", res.Artifacts)
	}
	ex := g.execsOf("pg_basebackup")
	if len(ex) != 1 || ex[0].Stdout.Mode != guestv1.StdoutStorage || !slices.Contains(ex[0].Args, "5433") {
		t.Errorf("exec %+v", ex)
	}
}

func TestBasebackupRefusesTablespaces(t *testing.T) {
	g := &fakeGuest{answers: pgAnswers("7431,6f746865722073706163650a")} // t1, "other space\n"
	_, err := pgBasebackup{}.Backup(context.Background(), fakeRequest(g, guestv1.EnginePostgreSQL))
	if !errs.Is(err, errs.Conflict) || !strings.Contains(err.Error(), `"t1", "other space\n"`) {
		t.Fatalf("got %v", err)
	}
	if len(g.execsOf("pg_basebackup")) != 0 {
		t.Fatal("pg_basebackup ran although the check refused")
	}
}

func TestBasebackupRefusesOtherMajorTool(t *testing.T) {
	a := pgAnswers("")
	a["pg_basebackup --version"] = "pg_basebackup (PostgreSQL) 16.2\n"
	_, err := pgBasebackup{}.Backup(context.Background(), fakeRequest(&fakeGuest{answers: a}, guestv1.EnginePostgreSQL))
	if !errs.Is(err, errs.Conflict) {
		t.Fatalf("got %v", err)
	}
}

func TestBasebackupFailsWithoutPositions(t *testing.T) {
	g := &fakeGuest{answers: pgAnswers(""), execs: map[string]guestv1.ExecResult{"pg_basebackup": {Done: true, StderrTail: "pg_basebackup: base backup completed\n"}}}
	if _, err := (pgBasebackup{}).Backup(context.Background(), fakeRequest(g, guestv1.EnginePostgreSQL)); err == nil {
		t.Fatal("a backup without recorded positions succeeded")
	}
}

func TestFullOnly(t *testing.T) {
	for _, s := range []Strategy{pgBasebackup{}, pgDump{}, redisRDB{}} {
		req := fakeRequest(&fakeGuest{}, s.Engine())
		req.Type = catalog.TypeIncremental
		if _, err := s.Backup(context.Background(), req); !errs.Is(err, errs.BadRequest) {
			t.Errorf("%s incremental: %v", s.Name(), err)
		}
		req = fakeRequest(&fakeGuest{}, s.Engine())
		req.Options = map[string]string{"parallel": "2"}
		if _, err := s.Backup(context.Background(), req); !errs.Is(err, errs.BadRequest) {
			t.Errorf("%s with an option: %v", s.Name(), err)
		}
	}
}

func TestDefaults(t *testing.T) {
	for engine, want := range map[string]string{guestv1.EnginePostgreSQL: "pg_basebackup", guestv1.EngineRedis: "redis-rdb"} {
		s, err := Lookup("", engine)
		if err != nil || s.Name() != want {
			t.Errorf("%s: got %v %v, want %s", engine, s, err, want)
		}
	}
	if s, err := Lookup("pg_dump", guestv1.EnginePostgreSQL); err != nil || s.Incremental() {
		t.Errorf("pg_dump: %v %v", s, err)
	}
	if _, err := Lookup("pg_dump", guestv1.EngineRedis); !errs.Is(err, errs.BadRequest) {
		t.Errorf("pg_dump on redis: %v", err)
	}
}
