package toolexec

import (
	"errors"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"troveng.dev/shared/errs"
)

// KillGrace is how long a tool has between SIGTERM and SIGKILL.
const KillGrace = 5 * time.Second

// Cmd is one run of a tool. Stdin, Stdout and Stderr are the child's ends (nil: /dev/null); the caller
// closes its copies after Start.
type Cmd struct {
	Tool   Tool
	Args   []string // the caller's arguments (the tool's Prefix goes first)
	Env    []string // from Tool.Environ
	Dir    string   // absolute working directory
	Stdin  *os.File
	Stdout *os.File
	Stderr *os.File
}

// Process is a started tool: the leader of its own process group.
type Process struct {
	cmd  *exec.Cmd
	pid  int
	done chan struct{}

	mu       sync.Mutex
	state    *os.ProcessState
	waitErr  error
	killOnce sync.Once
}

// Start starts the tool in a new process group, as its user. It never involves a shell: the binary is the
// allow-list's absolute path and Args reach it as they are.
func Start(c Cmd) (*Process, error) {
	args := append(append([]string{c.Tool.Path}, c.Tool.Prefix...), c.Args...)
	cmd := &exec.Cmd{Path: c.Tool.Path, Args: args, Env: c.Env, Dir: c.Dir}
	if c.Stdin != nil {
		cmd.Stdin = c.Stdin
	}
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	}
	if c.Stderr != nil {
		cmd.Stderr = c.Stderr
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Credential: c.Tool.user.Credential(),
		// A tool must not outlive an agent that dies (it could keep writing into a restore target).
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, errs.Wrap(errs.Unavailable, errors.Unwrap(err), "start %s", c.Tool.Name)
	}
	p := &Process{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	go p.wait()
	return p, nil
}

func (p *Process) wait() {
	err := p.cmd.Wait()
	// The leader is gone; whatever it left in its group goes too, so no straggler holds the pipes open.
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	p.mu.Lock()
	p.state, p.waitErr = p.cmd.ProcessState, err
	p.mu.Unlock()
	close(p.done)
}

// PID is the leader's process id (and the group's id).
func (p *Process) PID() int { return p.pid }

// Done is closed once the tool has exited and its group was killed.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the tool has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the tool's whole process group.
func (p *Process) Signal(sig syscall.Signal) {
	if !p.Exited() {
		_ = syscall.Kill(-p.pid, sig)
	}
}

// Terminate sends SIGTERM to the group and SIGKILL grace later if the tool is still there. It does not wait.
func (p *Process) Terminate(grace time.Duration) {
	p.killOnce.Do(func() {
		p.Signal(syscall.SIGTERM)
		go func() {
			t := time.NewTimer(grace)
			defer t.Stop()
			select {
			case <-p.done:
			case <-t.C:
				p.Signal(syscall.SIGKILL)
			}
		}()
	})
}

// Kill sends SIGKILL to the group at once (input that failed verification must not be consumed).
func (p *Process) Kill() {
	p.killOnce.Do(func() {})
	p.Signal(syscall.SIGKILL)
}

// Result is the exit code (-1 when ended by a signal) and the signal's name ("" when it exited). Call it
// after Done.
func (p *Process) Result() (code int, signal string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return -1, ""
	}
	if ws, ok := p.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, ws.Signal().String()
	}
	return p.state.ExitCode(), ""
}
