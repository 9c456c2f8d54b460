package service_test

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/embednats"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/natsauth"
	"troveng.dev/shared/natstest"
	"troveng.dev/shared/service"
)

func TestConfigEnvFallbacks(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TROVE_NATS_URL", "nats://n1:4222,nats://n2:4222")
	t.Setenv("TROVE_NATS_CREDS", "/etc/trove/storage.creds")
	t.Setenv("TROVE_NATS_NKEY", "")
	t.Setenv("TROVE_NATS_TLS_CERT", "/c.pem")
	t.Setenv("TROVE_NATS_TLS_KEY", "/k.pem")
	t.Setenv("TROVE_NATS_TLS_CA", "/ca.pem")
	t.Setenv("TROVE_ADMIN_ADDR", ":8080")
	t.Setenv("TROVE_ADMIN_TOKEN", "s3cret-from-env")
	t.Setenv("TROVE_ADMIN_TOKEN_FILE", tokenFile)
	t.Setenv("TROVE_OTLP_ENDPOINT", "http://collector:4317")
	t.Setenv("TROVE_LOG_LEVEL", "debug")

	var c service.Config
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	c.Bind(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if c.AdminToken != "s3cret-from-env" {
		t.Fatalf("env token not read: %q", c.AdminToken)
	}
	if err := c.Load(); err != nil {
		t.Fatal(err)
	}
	want := service.Config{
		NatsURL: "nats://n1:4222,nats://n2:4222", CredsFile: "/etc/trove/storage.creds",
		TLSCert: "/c.pem", TLSKey: "/k.pem", TLSCA: "/ca.pem", AdminAddr: ":8080",
		AdminToken: "s3cret-from-file", AdminTokenFile: tokenFile,
		OTLPEndpoint: "http://collector:4317", LogLevel: "debug",
	}
	if c != want {
		t.Fatalf("got  %#v\nwant %#v", c, want)
	}
	if l, _ := c.Level(); l != slog.LevelDebug {
		t.Fatalf("level %v", l)
	}
	// The token never shows in what gets logged.
	if strings.Contains(c.String(), "s3cret") || !strings.Contains(c.String(), "admin_token=set") {
		t.Fatalf("String() = %s", c.String())
	}

	// Flags win over env.
	var c2 service.Config
	fs2 := flag.NewFlagSet("x", flag.ContinueOnError)
	c2.Bind(fs2)
	if err := fs2.Parse([]string{"-nats-url", "nats://flag:4222", "-admin-addr", "", "-log-level", "warn"}); err != nil {
		t.Fatal(err)
	}
	if c2.NatsURL != "nats://flag:4222" || c2.AdminAddr != "" || c2.LogLevel != "warn" {
		t.Fatalf("flags: %#v", c2)
	}
}

func TestConfigDefaultsAndErrors(t *testing.T) {
	for _, k := range []string{"TROVE_NATS_URL", "TROVE_ADMIN_ADDR", "TROVE_ADMIN_TOKEN", "TROVE_ADMIN_TOKEN_FILE", "TROVE_LOG_LEVEL"} {
		t.Setenv(k, "")
		_ = os.Unsetenv(k)
	}
	var c service.Config
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	c.Bind(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if c.NatsURL != "nats://127.0.0.1:4222" || c.AdminAddr != service.DefaultAdminAddr || c.LogLevel != "info" || c.AdminToken != "" {
		t.Fatalf("defaults: %#v", c)
	}
	if err := c.Load(); err != nil {
		t.Fatal(err)
	}

	bad := c
	bad.LogLevel = "loud"
	if err := bad.Load(); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("bad level: %v", err)
	}
	bad = c
	bad.AdminTokenFile = filepath.Join(t.TempDir(), "missing")
	if err := bad.Load(); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("missing token file: %v", err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad.AdminTokenFile = empty
	if err := bad.Load(); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("empty token file: %v", err)
	}
	bad = c
	bad.TLSCert = "/c.pem"
	if err := bad.Load(); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("cert without key: %v", err)
	}
}

func TestConnect(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	nc, err := service.Connect(ctx, service.Config{NatsURL: srv.URL()}, "trove-test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if !nc.IsConnected() || nc.Opts.Name != "trove-test" || nc.Opts.MaxReconnect != -1 {
		t.Fatalf("conn: connected=%v name=%q maxReconnect=%d", nc.IsConnected(), nc.Opts.Name, nc.Opts.MaxReconnect)
	}
	// Extra options apply (the guest agent's own inbox prefix).
	nc2, err := service.Connect(ctx, service.Config{NatsURL: srv.URL()}, "trove-test", nats.CustomInboxPrefix("_INBOX.mine"))
	if err != nil {
		t.Fatal(err)
	}
	if inbox := nc2.NewInbox(); !strings.HasPrefix(inbox, "_INBOX.mine.") {
		t.Fatalf("inbox %q ignores the extra option", inbox)
	}
	nc2.Close()

	// A missing credentials file is reported at once, naming what is missing.
	begin := time.Now()
	_, err = service.Connect(ctx, service.Config{NatsURL: srv.URL(), CredsFile: filepath.Join(t.TempDir(), "nope.creds")}, "x")
	if !errs.Is(err, errs.BadRequest) || !strings.Contains(err.Error(), "NATS credentials file") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing creds: %v", err)
	}
	if time.Since(begin) > time.Second {
		t.Fatal("missing creds file was retried")
	}
	// A creds file that exists is passed to the client: a garbage one fails the connect without retrying.
	garbage := filepath.Join(t.TempDir(), "bad.creds")
	if err := os.WriteFile(garbage, []byte("not a creds file"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := service.Connect(ctx, service.Config{NatsURL: srv.URL(), CredsFile: garbage}, "x"); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("garbage creds: %v", err)
	}
	if _, err := service.Connect(ctx, service.Config{NatsURL: srv.URL(), TLSCert: "/dev/null"}, "x"); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("cert without key: %v", err)
	}

	// No server: retried until the context ends.
	srv.Stop()
	short, cancel2 := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel2()
	begin = time.Now()
	if _, err := service.Connect(short, service.Config{NatsURL: srv.URL()}, "x"); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("no server: %v", err)
	}
	if d := time.Since(begin); d < 500*time.Millisecond || d > 3*time.Second {
		t.Fatalf("gave up after %s; want about the context's 700ms", d)
	}
}

func TestConnectWaitsForServer(t *testing.T) {
	srv := natstest.Start(t)
	url := srv.URL()
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		time.Sleep(300 * time.Millisecond)
		srv.Restart()
	}()
	nc, err := service.Connect(ctx, service.Config{NatsURL: url}, "late")
	<-restarted // the server belongs to the test goroutine again before it is cleaned up
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
}

func TestConfigNKey(t *testing.T) {
	dir := t.TempDir()
	seedFile := filepath.Join(dir, "nkeys", "svc.nk")
	pub, err := natsauth.EnsureSeed(seedFile)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := os.ReadFile(seedFile)
	t.Setenv("TROVE_NATS_NKEY", seedFile)
	t.Setenv("TROVE_NATS_CREDS", "")
	var c service.Config
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	c.Bind(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if c.NKeyFile != seedFile {
		t.Fatalf("env not read: %q", c.NKeyFile)
	}
	if err := c.Load(); err != nil {
		t.Fatal(err)
	}
	// The start-up line names the file, never the seed.
	if !strings.Contains(c.String(), "nkey="+seedFile) || strings.Contains(c.String(), strings.TrimSpace(string(seed))) {
		t.Fatalf("String() = %s", c.String())
	}
	both := c
	both.CredsFile = "/etc/trove/x.creds"
	if err := both.Load(); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("creds and nkey together: %v", err)
	}

	srv, err := embednats.Start(embednats.Options{StoreDir: filepath.Join(dir, "nats"), Users: []natsauth.User{
		{Name: "svc", PublicKey: pub, Permissions: natsauth.Permissions{Publish: []string{"_INBOX.>"}, Subscribe: []string{"_INBOX.>"}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	nc, err := service.Connect(ctx, service.Config{NatsURL: srv.ClientURL(), NKeyFile: seedFile}, "svc")
	if err != nil {
		t.Fatalf("connect with the NKey: %v", err)
	}
	nc.Close()

	// A missing or broken seed file is a bad request at once, not retried.
	begin := time.Now()
	_, err = service.Connect(ctx, service.Config{NatsURL: srv.ClientURL(), NKeyFile: filepath.Join(dir, "nope.nk")}, "svc")
	if !errs.Is(err, errs.BadRequest) || !strings.Contains(err.Error(), "NATS NKey seed file") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing seed: %v", err)
	}
	broken := filepath.Join(dir, "broken.nk")
	if err := os.WriteFile(broken, []byte("SUnot-a-seed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := service.Connect(ctx, service.Config{NatsURL: srv.ClientURL(), NKeyFile: broken}, "svc"); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("broken seed: %v", err)
	}
	if _, err := service.Connect(ctx, service.Config{NatsURL: srv.ClientURL(), NKeyFile: seedFile, CredsFile: seedFile}, "svc"); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("creds and nkey together: %v", err)
	}
	if time.Since(begin) > time.Second {
		t.Fatal("a bad identity was retried")
	}
	// Without an identity the server refuses, and that is not retried either.
	if _, err := service.Connect(ctx, service.Config{NatsURL: srv.ClientURL()}, "svc"); !errs.Is(err, errs.Unauthorized) {
		t.Fatalf("no identity: %v", err)
	}
	if time.Since(begin) > 2*time.Second {
		t.Fatal("a refused identity was retried")
	}
}
