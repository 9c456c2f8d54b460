package engine

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"troveng.dev/agent/internal/osuser"
	"troveng.dev/agent/internal/toolexec"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

// Waits.
const (
	DefaultWait   = 60 * time.Second
	MaxWait       = 30 * time.Minute
	InitTimeout   = 10 * time.Minute
	HealthTimeout = 3 * time.Second
	healthEvery   = 200 * time.Millisecond
	logTail       = 16 << 10
	messageTail   = 2 << 10
)

// Manager runs one engine.
type Manager struct {
	def *Def
	log *slog.Logger
	out io.Writer // the engine's own log goes here too (the agent's stderr)

	op sync.Mutex // one start, stop or reset at a time

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	stopping bool
	state    string
	message  string
	tail     *tail
	version  string
}

// NewManager makes a manager for def; the engine's output is copied to out (nil: discarded).
func NewManager(def *Def, out io.Writer, log *slog.Logger) *Manager {
	if out == nil {
		out = io.Discard
	}
	return &Manager{def: def, log: log.With("engine", def.Name), out: out, state: guestv1.EngineStopped}
}

// Def is the recipe.
func (m *Manager) Def() *Def { return m.def }

func waitOf(req guestv1.EngineRequest) time.Duration {
	if req.WaitMs <= 0 {
		return DefaultWait
	}
	return min(time.Duration(req.WaitMs)*time.Millisecond, MaxWait)
}

func (m *Manager) runningLocked() bool {
	if m.cmd == nil {
		return false
	}
	select {
	case <-m.exited:
		return false
	default:
		return true
	}
}

// Start writes the configuration, initialises the data dir if needed, starts the server and waits until it
// answers its health query. A running engine is left as it is (a new configuration is then refused).
func (m *Manager) Start(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	if err := toolexec.ValidateArgs(req.Args); err != nil {
		return guestv1.EngineStatus{}, errs.BadRequestf("engine args: %s", errs.From(err).Message)
	}
	if len(req.Config) > guestv1.MaxInlineData {
		return guestv1.EngineStatus{}, errs.BadRequestf("engine configuration is %d bytes; at most %d", len(req.Config), guestv1.MaxInlineData)
	}
	m.op.Lock()
	defer m.op.Unlock()
	m.mu.Lock()
	running := m.runningLocked()
	m.mu.Unlock()
	if running {
		if req.Config != "" || len(req.Args) > 0 {
			return guestv1.EngineStatus{}, errs.Conflictf("%s is running; stop it before starting it with a new configuration or arguments", m.def.Name)
		}
		return m.Status(ctx), nil
	}
	if err := m.writeConfig(req.Config); err != nil {
		return guestv1.EngineStatus{}, err
	}
	if err := m.initialise(ctx, !req.NoInit); err != nil {
		return guestv1.EngineStatus{}, err
	}
	if err := m.prepareRunDir(); err != nil {
		return guestv1.EngineStatus{}, err
	}
	if m.def.Prepare != nil {
		if err := m.def.Prepare(); err != nil {
			return guestv1.EngineStatus{}, err
		}
	}
	if err := m.spawn(req.Args); err != nil {
		return guestv1.EngineStatus{}, err
	}
	wait := waitOf(req)
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(healthEvery)
	defer tick.Stop()
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	for {
		if m.healthy(ctx) {
			m.log.Info("engine healthy")
			return m.Status(ctx), nil
		}
		select {
		case <-exited:
			st := m.Status(ctx)
			return st, errs.Internalf("%s exited during start: %s", m.def.Name, st.Message)
		case <-deadline.C:
			return m.Status(ctx), errs.New(errs.Timeout, "%s started but did not answer its health query within %s; it keeps starting (see engine_status), or stop it", m.def.Name, wait)
		case <-ctx.Done():
			return m.Status(ctx), errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "waiting for %s to become healthy", m.def.Name)
		case <-tick.C:
		}
	}
}

// writeConfig writes the caller's configuration (or the default when there is no file yet), atomically.
func (m *Manager) writeConfig(content string) error {
	if content == "" {
		if _, err := os.Stat(m.def.ConfigFile); err == nil {
			return nil
		}
		content = m.def.DefaultConfig
	}
	if err := os.MkdirAll(filepath.Dir(m.def.ConfigFile), 0o755); err != nil {
		return errs.Wrap(errs.Internal, err, "create the config root")
	}
	tmp := m.def.ConfigFile + ".trove-tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return errs.Wrap(errs.Internal, err, "write the %s configuration", m.def.Name)
	}
	if err := os.Chmod(tmp, 0o644); err != nil { // readable by the engine's user
		return errs.Wrap(errs.Internal, err, "write the %s configuration", m.def.Name)
	}
	if err := syncFile(tmp); err != nil {
		return errs.Wrap(errs.Internal, err, "write the %s configuration", m.def.Name)
	}
	if err := os.Rename(tmp, m.def.ConfigFile); err != nil {
		return errs.Wrap(errs.Internal, err, "write the %s configuration", m.def.Name)
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Initialised reports whether the data dir holds an initialised engine.
func (m *Manager) Initialised() bool {
	if m.def.InitMarker == "" {
		fi, err := os.Stat(m.def.DataDir)
		return err == nil && fi.IsDir()
	}
	_, err := os.Stat(filepath.Join(m.def.DataDir, m.def.InitMarker))
	return err == nil
}

// initialise makes the data dir on first start: into DIR.init, renamed when complete, so an interrupted
// first start leaves no half-made data dir.
func (m *Manager) initialise(ctx context.Context, allowed bool) error {
	if m.Initialised() {
		return nil
	}
	if !allowed {
		return errs.Conflictf("%s's data dir %s is not initialised and no_init is set (restore into it first, or start without no_init)", m.def.Name, m.def.DataDir)
	}
	owner, err := osuser.Lookup(m.def.DataOwner)
	if err != nil {
		return err
	}
	if m.def.InitMarker == "" {
		if err := os.MkdirAll(m.def.DataDir, m.def.InitDirMode); err != nil {
			return errs.Wrap(errs.Internal, err, "create the %s data dir", m.def.Name)
		}
		return chown(m.def.DataDir, owner)
	}
	if ents, err := os.ReadDir(m.def.DataDir); err == nil && len(ents) > 0 {
		return errs.Conflictf("%s's data dir %s has files but no %s: it is neither empty nor initialised (engine_reset empties it)", m.def.Name, m.def.DataDir, m.def.InitMarker)
	}
	m.log.Info("initialising the data dir", "dir", m.def.DataDir)
	init := m.def.DataDir + ".init"
	if err := os.RemoveAll(init); err != nil {
		return errs.Wrap(errs.Internal, err, "remove a left-over %s", init)
	}
	if err := os.MkdirAll(filepath.Dir(m.def.DataDir), 0o755); err != nil {
		return errs.Wrap(errs.Internal, err, "create the data root")
	}
	if err := os.Mkdir(init, m.def.InitDirMode); err != nil {
		return errs.Wrap(errs.Internal, err, "create %s", init)
	}
	if err := os.Chmod(init, m.def.InitDirMode); err != nil {
		return errs.Wrap(errs.Internal, err, "chmod %s", init)
	}
	if err := chown(init, owner); err != nil {
		return err
	}
	ictx, cancel := context.WithTimeout(ctx, InitTimeout)
	defer cancel()
	for _, c := range m.def.Init(init) {
		out, err := m.run(ictx, c, m.def.DataRoot())
		if err != nil {
			_ = os.RemoveAll(init)
			return errs.Internalf("initialising %s: %s failed (%v): %s", m.def.Name, filepath.Base(c.Path), err, lastLines(out, messageTail))
		}
	}
	if m.def.PostInit != nil {
		if err := m.def.PostInit(init); err != nil {
			_ = os.RemoveAll(init)
			return err
		}
	}
	_ = os.Remove(m.def.DataDir) // an empty dir (left by a reset or made by hand)
	if err := os.Rename(init, m.def.DataDir); err != nil {
		_ = os.RemoveAll(init)
		return errs.Wrap(errs.Internal, err, "move the initialised data dir into place")
	}
	return nil
}

// DataRoot is the directory holding the data dir.
func (d *Def) DataRoot() string { return filepath.Dir(d.DataDir) }

func chown(path string, id osuser.Identity) error {
	if id.IsRoot() || !osuser.CanSwitch() {
		return nil
	}
	if err := os.Chown(path, id.UID, id.GID); err != nil {
		return errs.Wrap(errs.Internal, err, "chown %s to %s", path, id.Name)
	}
	return nil
}

func (m *Manager) prepareRunDir() error {
	if m.def.RunDir == "" {
		return nil
	}
	if err := os.MkdirAll(m.def.RunDir, m.def.RunDirMode.Perm()); err != nil {
		return errs.Wrap(errs.Internal, err, "create %s", m.def.RunDir)
	}
	if err := os.Chmod(m.def.RunDir, m.def.RunDirMode); err != nil {
		return errs.Wrap(errs.Internal, err, "chmod %s", m.def.RunDir)
	}
	id, err := osuser.Lookup(m.def.RunDirOwner)
	if err != nil {
		return err
	}
	return chown(m.def.RunDir, id)
}

// environ is the restricted environment of the engine and its helpers.
func environ(id osuser.Identity) []string {
	return []string{"PATH=" + toolexec.BasePath, "HOME=" + id.Home, "LANG=C.UTF-8"}
}

// spawn starts the server as a child in its own process group. The child gets the engine's stop signal
// if the agent dies.
func (m *Manager) spawn(args []string) error {
	c := m.def.Server(args)
	id, err := osuser.Lookup(c.User)
	if err != nil {
		return err
	}
	if _, err := os.Stat(c.Path); err != nil {
		return errs.Unavailablef("%s's server %s is not installed on this guest", m.def.Name, c.Path)
	}
	t := newTail(logTail)
	cmd := &exec.Cmd{Path: c.Path, Args: append([]string{c.Path}, c.Args...), Env: environ(id), Dir: m.def.DataRoot(),
		Stdout: io.MultiWriter(m.out, t), Stderr: io.MultiWriter(m.out, t),
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Credential: id.Credential(), Pdeathsig: m.def.StopSignal}}
	if err := cmd.Start(); err != nil {
		return errs.Wrap(errs.Internal, errors.Unwrap(err), "start %s", m.def.Name)
	}
	exited := make(chan struct{})
	m.mu.Lock()
	m.cmd, m.exited, m.stopping, m.state, m.message, m.tail = cmd, exited, false, guestv1.EngineRunning, "", t
	m.mu.Unlock()
	m.log.Info("engine started", "pid", cmd.Process.Pid, "args", len(args))
	go func() {
		err := cmd.Wait() // reaps the server
		m.mu.Lock()
		if m.stopping {
			m.state, m.message = guestv1.EngineStopped, ""
		} else {
			m.state = guestv1.EngineFailed
			m.message = "exited on its own (" + describeExit(err) + "): " + lastLines(t.String(), messageTail)
			m.log.Warn("engine exited on its own", "status", describeExit(err))
		}
		m.mu.Unlock()
		close(exited)
	}()
	return nil
}

func describeExit(err error) string {
	if err == nil {
		return "exit status 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.String()
	}
	return err.Error()
}

// Stop asks the server to shut down (its stop signal), waits up to WaitMs, then kills its process group.
func (m *Manager) Stop(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	m.op.Lock()
	defer m.op.Unlock()
	if err := m.stop(ctx, waitOf(req)); err != nil {
		return m.Status(ctx), err
	}
	return m.Status(ctx), nil
}

func (m *Manager) stop(ctx context.Context, wait time.Duration) error {
	m.mu.Lock()
	if !m.runningLocked() {
		m.mu.Unlock()
		return nil
	}
	m.stopping = true
	cmd, exited := m.cmd, m.exited
	m.mu.Unlock()
	pid := cmd.Process.Pid
	m.log.Info("stopping engine", "pid", pid, "signal", m.def.StopSignal.String())
	_ = cmd.Process.Signal(m.def.StopSignal)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-exited:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	m.log.Warn("engine did not stop in time; killing it", "pid", pid, "waited", wait)
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-exited
	m.mu.Lock()
	m.message = "killed: it did not shut down within " + wait.String()
	m.mu.Unlock()
	return nil
}

// Reset stops the engine and empties its data dir (the target of a physical restore). The dir itself stays,
// with its owner and mode.
func (m *Manager) Reset(ctx context.Context, req guestv1.EngineRequest) (guestv1.EngineStatus, error) {
	m.op.Lock()
	defer m.op.Unlock()
	if err := m.stop(ctx, waitOf(req)); err != nil {
		return m.Status(ctx), err
	}
	if err := os.RemoveAll(m.def.DataDir + ".init"); err != nil {
		return m.Status(ctx), errs.Wrap(errs.Internal, err, "remove %s.init", m.def.DataDir)
	}
	ents, err := os.ReadDir(m.def.DataDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return m.Status(ctx), errs.Wrap(errs.Internal, err, "read the data dir")
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(m.def.DataDir, e.Name())); err != nil {
			return m.Status(ctx), errs.Wrap(errs.Internal, err, "empty the data dir")
		}
	}
	m.mu.Lock()
	m.state, m.message = guestv1.EngineStopped, ""
	m.mu.Unlock()
	m.log.Info("engine reset: data dir emptied", "dir", m.def.DataDir, "entries", len(ents))
	return m.Status(ctx), nil
}

// Status is the engine's state now, with a fresh health check when it runs.
func (m *Manager) Status(ctx context.Context) guestv1.EngineStatus {
	m.mu.Lock()
	st := guestv1.EngineStatus{Engine: m.def.Name, State: m.state, DataDir: m.def.DataDir, Port: m.def.Port, Message: m.message}
	running := m.runningLocked()
	if running {
		st.PID = m.cmd.Process.Pid
	}
	m.mu.Unlock()
	st.Version = m.Version(ctx)
	if running {
		st.Healthy = m.healthy(ctx)
	}
	return st
}

// Version is the server binary's version (cached after the first success; "" while unknown).
func (m *Manager) Version(ctx context.Context) string {
	m.mu.Lock()
	v := m.version
	m.mu.Unlock()
	if v != "" {
		return v
	}
	if _, err := os.Stat(m.def.Version.Path); err != nil {
		return ""
	}
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := m.run(vctx, m.def.Version, "/")
	if err != nil {
		return ""
	}
	v = m.def.ParseVersion(out)
	m.mu.Lock()
	m.version = v
	m.mu.Unlock()
	return v
}

// healthy runs the health query once.
func (m *Manager) healthy(ctx context.Context) bool {
	hctx, cancel := context.WithTimeout(ctx, HealthTimeout)
	defer cancel()
	out, err := m.run(hctx, m.def.Health, "/")
	return m.def.Healthy(err == nil, out)
}

// run runs a helper command (no shell) and returns its combined output (bounded).
func (m *Manager) run(ctx context.Context, c Command, dir string) (string, error) {
	id, err := osuser.Lookup(c.User)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	lim := &limited{w: &out, n: 64 << 10}
	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = environ(id), dir, lim, lim
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: id.Credential(), Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	return out.String(), err
}

// Shutdown stops the engine if it runs (the agent binary's SIGTERM path), waiting until ctx ends at most.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.op.Lock()
	defer m.op.Unlock()
	wait := DefaultWait
	if dl, ok := ctx.Deadline(); ok {
		wait = max(time.Until(dl)-time.Second, time.Second)
	}
	return m.stop(ctx, wait)
}

type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		_, _ = l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}

// tail keeps the last bytes of the engine's log.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func newTail(max int) *tail { return &tail{max: max} }

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// lastLines is the end of a log, at most n bytes, cut at a line start, on one line for messages.
func lastLines(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = s[len(s)-n:]
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\n", " | "), "?")
	if s == "" {
		return "(no output)"
	}
	return s
}
