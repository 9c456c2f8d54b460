package strategy

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/redis"
	"troveng.dev/shared/errs"
)

func rdbManifest(version, rdb, keys string) *catalog.Manifest {
	m := pgManifest("redis-rdb", map[string]string{"redis": version}, "rdb")
	m.Engine = guestv1.EngineRedis
	m.Options["keys"] = keys
	if rdb != "" {
		m.Options["rdb_version"] = rdb
	}
	return m
}

func TestRDBCheck(t *testing.T) {
	for _, c := range []struct {
		src, rdb, target, mode string
		code                   errs.Code
	}{
		{"7.0.15", "10", "7.0.15", "", ""},
		{"7.0.15", "10", "7.0.11", backupv1.ModeNew, ""},
		{"6.2.14", "9", "7.0.15", "", ""},
		{"7.2.4", "11", "7.0.15", "", errs.BadRequest},
		{"7.2.4", "", "7.0.15", "", errs.BadRequest},
		{"7.0.15", "10", "7.0.15", backupv1.ModeExisting, errs.BadRequest},
		{"7.0.15", "x", "7.0.15", "", errs.BadRequest},
		{"7.0.15", "10", "", "", errs.Unavailable},
	} {
		err := redisRDBRestore{}.Check(pgRequest(rdbManifest(c.src, c.rdb, "1"), guestv1.EngineRedis, c.target, c.mode, nil))
		if errs.CodeOf(err) != c.code {
			t.Errorf("%s (rdb %q) onto %q %q: got %v, want %q", c.src, c.rdb, c.target, c.mode, err, c.code)
		}
	}
	if err := (redisRDBRestore{}).Check(pgRequest(rdbManifest("7.0.15", "10", "1"), guestv1.EnginePostgreSQL, "15.18", "", nil)); !errs.Is(err, errs.BadRequest) {
		t.Errorf("wrong engine: %v", err)
	}
}

// Canned INFO answers: what the key check accepts and refuses.
func TestRDBCheckKeys(t *testing.T) {
	m := rdbManifest("7.0.15", "10", "5")
	info := func(s string) redis.Info { return redis.ParseInfo(s) }
	if err := redisCheckKeys(m, info("rdb_last_load_keys_loaded:5\nrdb_last_load_keys_expired:0\ndb0:keys=5,expires=0\n")); err != nil {
		t.Errorf("all loaded: %v", err)
	}
	if err := redisCheckKeys(m, info("rdb_last_load_keys_loaded:0\nrdb_last_load_keys_expired:5\n")); err != nil {
		t.Errorf("all expired since: %v", err)
	}
	if err := redisCheckKeys(m, info("rdb_last_load_keys_loaded:0\nrdb_last_load_keys_expired:0\naof_enabled:1\n")); err == nil || !strings.Contains(err.Error(), "appendonly") {
		t.Errorf("empty with AOF on: %v", err)
	}
	if err := redisCheckKeys(m, info("rdb_last_load_keys_loaded:2\ndb0:keys=7,expires=0\n")); err == nil {
		t.Error("more keys than loaded passed")
	}
	if err := redisCheckKeys(rdbManifest("7.0.15", "10", "0"), info("rdb_last_load_keys_loaded:0\n")); err != nil {
		t.Errorf("empty backup: %v", err)
	}
}

func TestRDBRestoreSteps(t *testing.T) {
	g := &pgFakeGuest{answers: map[string]string{"6379 INFO": "loading:0\r\nrdb_last_load_keys_loaded:5\r\nrdb_last_load_keys_expired:0\r\ndb0:keys=5,expires=1\r\n"}}
	if err := (redisRDBRestore{}).Restore(context.Background(), pgRequest(rdbManifest("7.0.15", "10", "5"), guestv1.EngineRedis, "7.0.15", "", g)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(g.calls, ","); got != "stop,extract data/redis,stat data/redis/dump.rdb,start" {
		t.Fatalf("calls %s", got)
	}
}

// failingExtract is the fake guest with a download that fails (a bad frame, a cancelled job) and the
// engine state it reports before the restore; startFails makes the engine's start fail too.
type failingExtract struct {
	*pgFakeGuest
	state      string
	startFails bool
}

func (g failingExtract) Extract(_ context.Context, req guestv1.ExtractRequest, _ io.Reader) (guestv1.ExecResult, error) {
	g.note("extract " + req.Path)
	return guestv1.ExecResult{Done: true, ExitCode: -1, Error: errs.New(errs.Corrupt, "artifact failed verification")}, nil
}

func (g failingExtract) EngineStatus(context.Context) (guestv1.EngineStatus, error) {
	return guestv1.EngineStatus{State: g.state, Healthy: g.state == guestv1.EngineRunning}, nil
}

func (g failingExtract) EngineStart(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	if g.startFails {
		g.note("start")
		return guestv1.EngineStatus{State: guestv1.EngineFailed, Message: "no luck"}, nil
	}
	return g.pgFakeGuest.EngineStart(ctx, req)
}

// A failed extract leaves the data dir as it was (the agent's extract is all or nothing): the restores that
// stop the engine first (redis-rdb, pg_basebackup) start it again if it ran before, and report the
// download's error with its code; a failed restart is added to the message, the code stays.
func TestFailedExtractLeavesTheTargetAsItWas(t *testing.T) {
	for _, c := range []struct {
		name string
		s    Strategy
		req  func(Guest) Request
		dir  string
	}{
		{"redis-rdb", redisRDBRestore{}, func(g Guest) Request {
			return pgRequest(rdbManifest("7.0.15", "10", "5"), guestv1.EngineRedis, "7.0.15", "", g)
		}, "data/redis"},
		{"pg_basebackup", pgBasebackupRestore{}, func(g Guest) Request {
			return pgRequest(pgManifest("pg_basebackup", map[string]string{"postgresql": "15.18"}, "base"), guestv1.EnginePostgreSQL, "15.18", "", g)
		}, "data/postgresql"},
	} {
		for _, tc := range []struct {
			state      string
			startFails bool
			want       string
		}{
			{guestv1.EngineRunning, false, "stop,extract " + c.dir + ",start"},
			{guestv1.EngineStopped, false, "stop,extract " + c.dir},
			{guestv1.EngineRunning, true, "stop,extract " + c.dir + ",start"},
		} {
			g := failingExtract{pgFakeGuest: &pgFakeGuest{}, state: tc.state, startFails: tc.startFails}
			err := c.s.Restore(context.Background(), c.req(g))
			if !errs.Is(err, errs.Corrupt) || !strings.Contains(err.Error(), "artifact failed verification") {
				t.Errorf("%s, engine %s before: got %v, want the download's corrupt", c.name, tc.state, err)
			}
			if tc.startFails != strings.Contains(fmt.Sprint(err), "did not start again") {
				t.Errorf("%s, start fails %v: %v", c.name, tc.startFails, err)
			}
			if got := strings.Join(g.calls, ","); got != tc.want {
				t.Errorf("%s, engine %s before: calls %s, want %s", c.name, tc.state, got, tc.want)
			}
		}
	}
}
