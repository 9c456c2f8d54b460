package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/stream"
)

func TestShellMetacharactersAreInert(t *testing.T) {
	h := newHarness(t, nil)
	marker := filepath.Join(h.data, "pwned")
	args := []string{";", "touch " + marker, "$(touch " + marker + ")", "`touch " + marker + "`", "|", "cat", "&&", "rm", "-rf", "/", ">" + marker, "*", "$HOME", "'", `"`}
	r := h.run(guestv1.ExecRequest{Tool: "echo", Args: args, Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
	mustOK(t, "echo", r)
	if string(r.Stdout) != strings.Join(args, " ")+"\n" {
		t.Fatalf("echo got\n%q\nwant\n%q", r.Stdout, strings.Join(args, " ")+"\n")
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a metacharacter was interpreted: the marker file exists")
	}
	// The environment is the restricted one: nothing of the agent's own leaks through.
	t.Setenv("TROVE_SECRET_OF_THE_AGENT", "do-not-leak")
	r = h.run(guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", "env"}, Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
	mustOK(t, "env", r)
	got := strings.Fields(string(r.Stdout))
	for _, kv := range got {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "PATH", "HOME", "LANG", "PWD", "SHLVL", "_":
		default:
			t.Fatalf("tool environment has %q (all: %v)", name, got)
		}
	}
}

func TestExecRefusals(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxFor(t, 30*time.Second)
	long := strings.Repeat("a", guestv1.MaxArgLen+1)
	many := make([]string, guestv1.MaxArgs+1)
	cases := []struct {
		name string
		req  guestv1.ExecRequest
		code errs.Code
		want string
	}{
		{"tool not on the allow-list", guestv1.ExecRequest{Tool: "rm", Args: []string{"-rf", "/"}}, errs.BadRequest, "not on this guest's allow-list"},
		{"tool given as a path", guestv1.ExecRequest{Tool: "/bin/sh"}, errs.BadRequest, "allow-list"},
		{"tool given as a relative path", guestv1.ExecRequest{Tool: "../../bin/sh"}, errs.BadRequest, "allow-list"},
		{"env not permitted", guestv1.ExecRequest{Tool: "psql", Env: map[string]string{"LD_PRELOAD": "/tmp/evil.so"}}, errs.BadRequest, `may not receive environment variable "LD_PRELOAD"`},
		{"env PATH", guestv1.ExecRequest{Tool: "pg_dump", Env: map[string]string{"PATH": "/tmp"}}, errs.BadRequest, "PATH"},
		{"env for a tool that takes none", guestv1.ExecRequest{Tool: "cat", Env: map[string]string{"PGPASSWORD": "s3cr3t-value"}}, errs.BadRequest, "permitted: none"},
		{"argument too long", guestv1.ExecRequest{Tool: "echo", Args: []string{long}}, errs.BadRequest, "limit is 8192"},
		{"too many arguments", guestv1.ExecRequest{Tool: "echo", Args: many}, errs.BadRequest, "limit is 256"},
		{"NUL in an argument", guestv1.ExecRequest{Tool: "echo", Args: []string{"a\x00b"}}, errs.BadRequest, "NUL"},
		{"working dir escapes", guestv1.ExecRequest{Tool: "echo", Dir: "data/../.."}, errs.BadRequest, `".." segment`},
		{"absolute working dir", guestv1.ExecRequest{Tool: "echo", Dir: "/etc"}, errs.BadRequest, "absolute"},
		{"stdout stream onto a service subject", guestv1.ExecRequest{Tool: "echo", Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStream, StreamSubject: "trove.storage.v1.delete"}}, errs.BadRequest, "_INBOX"},
		{"stdout stream wildcard", guestv1.ExecRequest{Tool: "echo", Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStream, StreamSubject: "_INBOX.>"}}, errs.BadRequest, "'>'"},
		{"unknown stdin mode", guestv1.ExecRequest{Tool: "echo", Stdin: guestv1.StdinSpec{Mode: "file"}}, errs.BadRequest, "stdin mode"},
		{"inline stdin too large", guestv1.ExecRequest{Tool: "cat", Stdin: guestv1.StdinSpec{Mode: guestv1.StdinData, Data: make([]byte, guestv1.MaxInlineData+1)}}, errs.BadRequest, "inline data is at most"},
		{"storage key escapes", guestv1.ExecRequest{Tool: "cat", Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: "../x"}}}, errs.BadRequest, `".." segment`},
		{"short data key", guestv1.ExecRequest{Tool: "cat", Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: "k", Frames: &guestv1.FrameSpec{ArtifactID: "a1", Key: []byte("0123456789")}}}}, errs.BadRequest, "data key is 10 bytes"},
		{"negative timeout", guestv1.ExecRequest{Tool: "echo", TimeoutMs: -1}, errs.BadRequest, "negative"},
	}
	for _, c := range cases {
		_, err := h.gc.Exec(ctx, c.req)
		if !errs.Is(err, c.code) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: want %s mentioning %q, got %v", c.name, c.code, c.want, err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cr3t-value") {
			t.Errorf("%s: the refusal shows an environment value: %v", c.name, err)
		}
		if n := h.agent.Running(); n != 0 {
			t.Fatalf("%s: %d execs running after a refusal", c.name, n)
		}
	}
	// An allowed tool whose binary this host lacks is refused as unavailable.
	h2 := newHarness(t, func(c *Config) {
		c.Instance = "g2"
		c.Tools = append(testTools(), Tool{Name: "mariadb-nothere", Paths: []string{"/nonexistent/mariadb"}})
	})
	_, err := h2.gc.Exec(ctx, guestv1.ExecRequest{Tool: "mariadb-nothere"})
	wantErrCode(t, "absent binary", err, errs.Unavailable)
	info, err := h2.gc.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range info.Tools {
		if n == "mariadb-nothere" {
			t.Fatal("a tool without its binary is listed in the registration")
		}
	}
}

func TestOversizedRequestIsRefusedByTheAgent(t *testing.T) {
	h := newHarness(t, nil)
	// 9 MiB of JSON: the server takes it (16 MiB max payload), the agent refuses it before decoding.
	body := []byte(`{"tool":"cat","stdin":{"mode":"data","data":"` + strings.Repeat("A", 9<<20) + `"}}`)
	_, err := rpc.CallMsg(ctxFor(t, 20*time.Second), h.cliNC, &nats.Msg{Subject: guestv1.Subject("g1", guestv1.OpExec), Data: body})
	if !errs.Is(err, errs.BadRequest) || !strings.Contains(err.Error(), "the limit is 8388608") {
		t.Fatalf("oversized exec: %v", err)
	}
	_, err = rpc.CallMsg(ctxFor(t, 20*time.Second), h.cliNC, &nats.Msg{Subject: guestv1.Subject("g1", guestv1.OpFileWrite), Data: body})
	wantErrCode(t, "oversized file write", err, errs.BadRequest)
	if n := h.agent.Running(); n != 0 {
		t.Fatal("an oversized request started an exec")
	}
}

func TestInstanceIDsWithSubjectTokensAreRefused(t *testing.T) {
	srv := startNATS(t)
	nc := connect(t, srv)
	for _, id := range []string{"a.b", "*", ">", "g1.>", "a b", "", "-x", strings.Repeat("x", 65), "a\x00"} {
		cfg := Config{Instance: id, DataRoot: t.TempDir(), ConfigRoot: t.TempDir()}
		if err := cfg.Validate(); !errs.Is(err, errs.BadRequest) {
			t.Errorf("Config.Validate(%q): want bad_request, got %v", id, err)
		}
		if a, err := Start(context.Background(), nc, nil, cfg); !errs.Is(err, errs.BadRequest) {
			if a != nil {
				_ = a.Stop()
			}
			t.Errorf("Start(%q): want bad_request, got %v", id, err)
		}
		if _, err := guestclient.New(nc, id, stream.Options{}); !errs.Is(err, errs.BadRequest) {
			t.Errorf("guestclient.New(%q): want bad_request, got %v", id, err)
		}
	}
	// Nothing subscribed to a wildcard guest subject.
	if _, err := nc.Request("trove.guest.anything.info", nil, 200*time.Millisecond); err == nil {
		t.Fatal("some agent answers for every instance")
	}
	for _, bad := range []Config{
		{Instance: "ok", Engine: "mysql"},
		{Instance: "ok", MaxExecs: -1},
		{Instance: "ok", Heartbeat: time.Microsecond},
	} {
		if err := bad.Validate(); !errs.Is(err, errs.BadRequest) {
			t.Errorf("config %+v: want bad_request, got %v", bad, err)
		}
	}
}
