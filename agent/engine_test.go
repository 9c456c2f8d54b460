package agent

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"troveng.dev/agent/internal/engine"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestPostgreSQLLifecycle runs the real PostgreSQL 15 server of this host through the agent: first start
// with initialisation and the caller's configuration, health, a crash noticed as failed with the log tail,
// restart, stop, reset. (MariaDB and Redis are not installed on the host: their lifecycle runs in guest
// containers, in the integration tests.)
func TestPostgreSQLLifecycle(t *testing.T) {
	if _, err := os.Stat(engine.PGBin + "/postgres"); err != nil {
		t.Skip("PostgreSQL 15 is not installed on this host")
	}
	if os.Geteuid() != 0 {
		t.Skip("the agent must be root to run PostgreSQL as the postgres user")
	}
	port := freePort(t)
	runDir := t.TempDir()
	openDirs(t, runDir)
	h := newHarness(t, func(c *Config) {
		c.Engine, c.EnginePort, c.EngineRunDir, c.EngineLog = guestv1.EnginePostgreSQL, port, runDir, io.Discard
	})
	ctx := ctxFor(t, 3*time.Minute)
	st, err := h.gc.EngineStatus(ctx)
	if err != nil || st.State != guestv1.EngineStopped || !strings.HasPrefix(st.Version, "15.") || st.Port != port || st.Healthy {
		t.Fatalf("status before start: %+v %v", st, err)
	}
	_, err = h.gc.EngineStart(ctx, guestv1.EngineRequest{NoInit: true})
	wantErrCode(t, "start without data and without init", err, errs.Conflict)

	st, err = h.gc.EngineStart(ctx, guestv1.EngineRequest{Config: "work_mem = '7MB'\n", Args: []string{"-c", "max_connections=20"}})
	if err != nil || st.State != guestv1.EngineRunning || !st.Healthy || st.PID == 0 || st.DataDir != filepath.Join(h.data, "postgresql") {
		t.Fatalf("start: %+v %v", st, err)
	}
	if _, err := os.Stat(filepath.Join(h.data, "postgresql", "PG_VERSION")); err != nil {
		t.Fatal("no PG_VERSION after the first start")
	}
	if _, err := os.Stat(filepath.Join(h.data, "postgresql.init")); !os.IsNotExist(err) {
		t.Fatal("the .init dir was left behind")
	}
	show := func(setting string) string {
		r := h.run(guestv1.ExecRequest{Tool: "psql", Args: []string{"-X", "-A", "-t", "-h", runDir, "-p", strconv.Itoa(port), "-d", "postgres",
			"-c", "show " + setting}, Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
		mustOK(t, "psql", r)
		return strings.TrimSpace(string(r.Stdout))
	}
	if got := show("work_mem"); got != "7MB" {
		t.Fatalf("work_mem %q: the config root's file is not included", got)
	}
	if got := show("max_connections"); got != "20" {
		t.Fatalf("max_connections %q: the caller's args were not applied", got)
	}
	// Starting a running engine is a no-op; with a new configuration it is refused.
	if again, err := h.gc.EngineStart(ctx, guestv1.EngineRequest{}); err != nil || again.PID != st.PID {
		t.Fatalf("second start: %+v %v", again, err)
	}
	_, err = h.gc.EngineStart(ctx, guestv1.EngineRequest{Config: "work_mem = '9MB'\n"})
	wantErrCode(t, "reconfigure while running", err, errs.Conflict)
	_, err = h.gc.EngineStart(ctx, guestv1.EngineRequest{Args: []string{"a\x00b"}})
	wantErrCode(t, "NUL in server args", err, errs.BadRequest)

	// A crash is noticed: failed, with the log tail.
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failed state", 10*time.Second, func() bool {
		s, err := h.gc.EngineStatus(ctx)
		return err == nil && s.State == guestv1.EngineFailed
	})
	failed, _ := h.gc.EngineStatus(ctx)
	if !strings.Contains(failed.Message, "exited on its own") || failed.Healthy || failed.PID != 0 {
		t.Fatalf("failed status %+v", failed)
	}
	reg, err := h.gc.Info(ctx)
	if err != nil || reg.Status.State != guestv1.EngineFailed || !strings.HasPrefix(reg.EngineVersion, "15.") {
		t.Fatalf("registration after the crash: %+v %v", reg.Status, err)
	}
	// Restart (crash recovery on the existing data), then a clean stop.
	st, err = h.gc.EngineStart(ctx, guestv1.EngineRequest{})
	if err != nil || !st.Healthy {
		t.Fatalf("restart: %+v %v", st, err)
	}
	stopped, err := h.gc.EngineStop(ctx, guestv1.EngineRequest{WaitMs: 30000})
	if err != nil || stopped.State != guestv1.EngineStopped || stopped.Message != "" {
		t.Fatalf("stop: %+v %v", stopped, err)
	}
	if syscall.Kill(st.PID, 0) == nil {
		t.Fatal("postgres still runs after stop")
	}
	// Reset empties the data dir, which the next start initialises again.
	if _, err := h.gc.EngineStart(ctx, guestv1.EngineRequest{}); err != nil {
		t.Fatal(err)
	}
	reset, err := h.gc.EngineReset(ctx, guestv1.EngineRequest{})
	if err != nil || reset.State != guestv1.EngineStopped {
		t.Fatalf("reset: %+v %v", reset, err)
	}
	if ents, err := os.ReadDir(filepath.Join(h.data, "postgresql")); err != nil || len(ents) != 0 {
		t.Fatalf("data dir after reset: %d entries, %v", len(ents), err)
	}
	if st, err = h.gc.EngineStart(ctx, guestv1.EngineRequest{}); err != nil || !st.Healthy {
		t.Fatalf("start after reset: %+v %v", st, err)
	}
	if err := h.agent.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(st.PID, 0) == nil {
		t.Fatal("postgres still runs after the agent's shutdown")
	}
}

func TestEngineOpsWithoutAnEngine(t *testing.T) {
	h := newHarness(t, nil)
	_, err := h.gc.EngineStart(ctxFor(t, 10*time.Second), guestv1.EngineRequest{})
	wantErrCode(t, "engine start on a guest without one", err, errs.Unavailable)
}
