package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

func TestExecCaptureExitCodeAndStderrTail(t *testing.T) {
	h := newHarness(t, nil)
	r := h.run(guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", "echo out; echo err >&2; exit 3"},
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
	// A non-zero exit is not an agent error; the captured stdout of a failed tool is not returned.
	if !r.Done || r.Error != nil || r.ExitCode != 3 || r.StderrTail != "err\n" || r.StdoutBytes != 4 {
		t.Fatalf("result %+v", r)
	}
	r = h.run(guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", "echo hello"}, Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
	mustOK(t, "echo", r)
	if string(r.Stdout) != "hello\n" {
		t.Fatalf("stdout %q", r.Stdout)
	}
	// Stderr beyond MaxStderrTail keeps its end.
	r = h.run(guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", `i=0; while [ $i -lt 3000 ]; do echo "line $i" >&2; i=$((i+1)); done`}}, nil)
	if len(r.StderrTail) != guestv1.MaxStderrTail || !strings.HasSuffix(r.StderrTail, "line 2999\n") {
		t.Fatalf("stderr tail: %d bytes, ends %q", len(r.StderrTail), r.StderrTail[max(0, len(r.StderrTail)-20):])
	}
	// Inline stdin.
	r = h.run(guestv1.ExecRequest{Tool: "cat", Stdin: guestv1.StdinSpec{Mode: guestv1.StdinData, Data: []byte("inline\x00bytes")},
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
	mustOK(t, "cat data", r)
	if string(r.Stdout) != "inline\x00bytes" || r.StdinBytes != 12 {
		t.Fatalf("cat: %q %d", r.Stdout, r.StdinBytes)
	}
	// Capture past its limit fails the exec with a clear error.
	r = h.run(guestv1.ExecRequest{Tool: "datagen", Args: datagenArgs(guestv1.MaxCapture+1, 1), Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
	if r.Error == nil || r.Error.Code != errs.BadRequest || !strings.Contains(r.Error.Message, "capture limit") || r.Stdout != nil {
		t.Fatalf("over-capture: %+v", r.Error)
	}
}

func TestExecStreamsRoundTrip(t *testing.T) {
	h := newHarness(t, nil)
	const n = 3<<20 + 17
	// stdout streamed to the caller.
	hash := sha256.New()
	r, err := h.gc.RunToWriter(ctxFor(t, 60*time.Second), guestv1.ExecRequest{Tool: "datagen", Args: datagenArgs(n, 7)}, nil, hash)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "datagen stream", r)
	if got := hex.EncodeToString(hash.Sum(nil)); got != genSum(n, 7) || r.StdoutBytes != n {
		t.Fatalf("streamed stdout: %d bytes, sha %s", r.StdoutBytes, got)
	}
	// stdin streamed from the caller.
	data := genBytes(n, 8)
	r = h.run(guestv1.ExecRequest{Tool: "sha256sum", Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStream},
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, bytes.NewReader(data))
	mustOK(t, "sha256sum", r)
	if got := strings.Fields(string(r.Stdout)); len(got) == 0 || got[0] != sumOf(data) || r.StdinBytes != n {
		t.Fatalf("sha256sum said %q after %d bytes, want %s", r.Stdout, r.StdinBytes, sumOf(data))
	}
	// Both at once: cat relays.
	hash.Reset()
	r, err = h.gc.RunToWriter(ctxFor(t, 60*time.Second), guestv1.ExecRequest{Tool: "cat", Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStream}},
		bytes.NewReader(data), hash)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "cat relay", r)
	if hex.EncodeToString(hash.Sum(nil)) != sumOf(data) {
		t.Fatal("cat relayed different bytes")
	}
	// A tool that exits without reading its stdin stream ends the caller's send instead of hanging it.
	r, err = h.gc.Run(ctxFor(t, 30*time.Second), guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", "exit 0"},
		Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStream}}, bytes.NewReader(data))
	if !r.Done || r.ExitCode != 0 {
		t.Fatalf("early exit: %+v %v", r, err)
	}
}

// procGroupAlive reports whether any process is in process group pgid.
func procGroupAlive(t *testing.T, pgid int) bool {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 2 && fields[0] != "Z" && fields[2] == strconv.Itoa(pgid) {
			return true
		}
	}
	return false
}

// groupGone waits (briefly: SIGKILL is delivered asynchronously) until process group pgid is empty.
func groupGone(t *testing.T, pgid int) bool {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for procGroupAlive(t, pgid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// startTree starts a shell that records its pid (the process group's id) and waits on two sleeping
// children; it returns the exec id and the pgid.
func (h *harness) startTree(script string, timeoutMs int64) (string, int) {
	h.t.Helper()
	st, err := h.gc.Exec(ctxFor(h.t, 10*time.Second), guestv1.ExecRequest{Tool: "sh", TimeoutMs: timeoutMs,
		Args: []string{"-c", "echo $$ > pid.tmp && mv pid.tmp pid; " + script}})
	if err != nil {
		h.t.Fatal(err)
	}
	var pid int
	waitFor(h.t, "the tool's pid file", 10*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(h.data, "pid"))
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	_ = os.Remove(filepath.Join(h.data, "pid"))
	waitFor(h.t, "the process group", 5*time.Second, func() bool { return procGroupAlive(h.t, pid) })
	return st.ExecID, pid
}

func TestExecCancelKillsTheProcessGroup(t *testing.T) {
	h := newHarness(t, nil)
	id, pgid := h.startTree("sleep 300 & sleep 300 & wait", 0)
	running, err := h.gc.WaitOnce(ctxFor(t, 5*time.Second), id, 50*time.Millisecond)
	if err != nil || running.Done {
		t.Fatalf("wait on a running exec: %+v %v", running, err)
	}
	if _, err := h.gc.Cancel(ctxFor(t, 5*time.Second), id); err != nil {
		t.Fatal(err)
	}
	r, err := h.gc.Wait(ctxFor(t, 20*time.Second), id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Error == nil || r.Error.Code != errs.Cancelled || r.ExitCode != -1 || r.Signal == "" {
		t.Fatalf("cancelled result %+v", r)
	}
	if !groupGone(t, pgid) {
		t.Fatalf("process group %d still has processes after cancel", pgid)
	}
	// The result stays available.
	again, err := h.gc.WaitOnce(ctxFor(t, 5*time.Second), id, time.Millisecond)
	if err != nil || !again.Done || again.Error.Code != errs.Cancelled {
		t.Fatalf("kept result: %+v %v", again, err)
	}
	if _, err := h.gc.WaitOnce(ctxFor(t, 5*time.Second), "nosuchexec", time.Millisecond); !errs.Is(err, errs.NotFound) {
		t.Fatalf("unknown exec: %v", err)
	}
}

func TestExecTimeoutEscalatesToSIGKILL(t *testing.T) {
	h := newHarness(t, nil)
	// The shell and its child ignore SIGTERM (an ignored signal is inherited), so only SIGKILL ends them.
	begin := time.Now()
	id, pgid := h.startTree("trap '' TERM; sleep 300 & sleep 300; wait", 500)
	r, err := h.gc.Wait(ctxFor(t, 30*time.Second), id, nil)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(begin)
	if r.Error == nil || r.Error.Code != errs.Timeout || r.Signal != "killed" {
		t.Fatalf("timed-out result %+v", r)
	}
	if took < 5*time.Second || took > 15*time.Second {
		t.Fatalf("ended after %s; want the 0.5 s timeout plus the 5 s SIGTERM grace", took)
	}
	if !groupGone(t, pgid) {
		t.Fatalf("process group %d survived", pgid)
	}
}

func TestBusyPastMaxExecs(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxExecs = 2 })
	ctx := ctxFor(t, 30*time.Second)
	var ids []string
	for range 2 {
		st, err := h.gc.Exec(ctx, guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", "sleep 300"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, st.ExecID)
	}
	_, err := h.gc.Exec(ctx, guestv1.ExecRequest{Tool: "cat"})
	wantErrCode(t, "third exec", err, errs.Busy)
	// An extract takes a slot too.
	_, err = h.gc.Extract(ctx, guestv1.ExtractRequest{Path: "data/x", Source: guestv1.SourceStream}, bytes.NewReader(nil))
	wantErrCode(t, "extract while busy", err, errs.Busy)
	if _, err := h.gc.Cancel(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := h.gc.Wait(ctx, ids[0], nil); err != nil {
		t.Fatal(err)
	}
	r := h.run(guestv1.ExecRequest{Tool: "cat"}, nil)
	mustOK(t, "exec after a slot freed", r)
	if _, err := h.gc.Cancel(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
}

func TestStopCancelsExecs(t *testing.T) {
	h := newHarness(t, nil)
	id, pgid := h.startTree("sleep 300", 0)
	if err := h.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	if !groupGone(t, pgid) {
		t.Fatal("the agent stopped but its tool's process group lives on")
	}
	// The agent no longer answers: the caller gets an error, not a hang.
	begin := time.Now()
	_, err := h.gc.WaitOnce(ctxFor(t, 20*time.Second), id, time.Second)
	wantErrCode(t, "wait after stop", err, errs.Unavailable)
	if time.Since(begin) > 5*time.Second {
		t.Fatal("wait on a stopped agent hung")
	}
}

// A streamed stdout whose exec fails before the tool starts, or whose tool fails, ends the caller's
// receiver at once (not after its idle timeout), with the result's error or exit code.
func TestRunToWriterEndsOnFailure(t *testing.T) {
	h := newHarness(t, nil)
	begin := time.Now()
	var out bytes.Buffer
	r, err := h.gc.RunToWriter(ctxFor(t, 30*time.Second), guestv1.ExecRequest{Tool: "cat",
		Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStorage, Storage: &guestv1.StorageRef{Key: "missing/object"}}}, nil, &out)
	if err != nil || r.Error == nil || r.Error.Code != errs.NotFound {
		t.Fatalf("missing input: %+v %v", r, err)
	}
	r, err = h.gc.RunToWriter(ctxFor(t, 30*time.Second), guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", "echo partial; exit 4"}}, nil, &out)
	if err != nil || r.ExitCode != 4 {
		t.Fatalf("failing tool: %+v %v", r, err)
	}
	if d := time.Since(begin); d > 4*time.Second {
		t.Fatalf("took %s: the receiver waited for its idle timeout", d)
	}
}
