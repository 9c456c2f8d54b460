package natsauth_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/embednats"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/natsauth"
)

func TestPermissionsServerForm(t *testing.T) {
	p := natsauth.Permissions{Publish: []string{"a.>", "_INBOX.>"}, Subscribe: []string{"b.*"}, SubscribeDeny: []string{"b.secret"}}
	sp := p.Server()
	if !slices.Equal(sp.Publish.Allow, p.Publish) || sp.Publish.Deny != nil {
		t.Fatalf("publish: %+v", sp.Publish)
	}
	if !slices.Equal(sp.Subscribe.Allow, p.Subscribe) || !slices.Equal(sp.Subscribe.Deny, []string{"b.secret"}) {
		t.Fatalf("subscribe: %+v", sp.Subscribe)
	}
	// nats-server reads a missing allow list as "everything"; ours means nothing.
	none := natsauth.Permissions{}.Server()
	if none.Publish.Allow != nil || !slices.Equal(none.Publish.Deny, []string{">"}) ||
		none.Subscribe.Allow != nil || !slices.Equal(none.Subscribe.Deny, []string{">"}) {
		t.Fatalf("empty permissions: pub %+v sub %+v", none.Publish, none.Subscribe)
	}
	// The server form is a copy: changing it does not change the set.
	sp.Publish.Allow[0] = "changed"
	if p.Publish[0] != "a.>" {
		t.Fatal("Server() shares its slices with the permission set")
	}

	if err := natsauth.ClientPermissions().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "a..b", "a b", ".a", "a.>.b"} {
		err := natsauth.Permissions{Publish: []string{"ok"}, Subscribe: []string{bad}}.Validate()
		if !errs.Is(err, errs.BadRequest) {
			t.Fatalf("subject %q: %v", bad, err)
		}
	}
}

func TestSeedFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys", "nested")
	path := filepath.Join(dir, "svc.nk")
	pub, err := natsauth.EnsureSeed(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pub, "U") {
		t.Fatalf("public key %q is not a user key", pub)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("seed file mode: %v %v", fi.Mode(), err)
	}
	di, err := os.Stat(dir)
	if err != nil || di.Mode().Perm() != 0o700 {
		t.Fatalf("seed dir mode: %v %v", di.Mode(), err)
	}
	before, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(before), "SU") {
		t.Fatalf("seed file does not hold a user seed")
	}

	// Made once: the second call reads the same key and leaves the file alone.
	again, err := natsauth.EnsureSeed(path)
	if err != nil || again != pub {
		t.Fatalf("second EnsureSeed: %q %v, want %q", again, err, pub)
	}
	after, _ := os.ReadFile(path)
	if string(after) != string(before) {
		t.Fatal("EnsureSeed rewrote an existing key")
	}
	if got, err := natsauth.ReadSeed(path); err != nil || got != pub {
		t.Fatalf("ReadSeed: %q %v", got, err)
	}

	// A key in use is never overwritten.
	pub2, seed2, err := natsauth.NewUserKey()
	if err != nil || pub2 == pub {
		t.Fatalf("NewUserKey: %q %v", pub2, err)
	}
	if err := natsauth.WriteSeed(path, seed2); !errs.Is(err, errs.Conflict) {
		t.Fatalf("overwriting a seed: %v", err)
	}
	if err := natsauth.WriteSeed(filepath.Join(dir, "x.nk"), []byte("SUnotaseed")); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("writing garbage as a seed: %v", err)
	}

	// Unreadable or wrong files are bad requests that never echo the file's content.
	garbage := filepath.Join(dir, "garbage.nk")
	if err := os.WriteFile(garbage, []byte("SUPERSECRETBUTBROKEN\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{garbage, filepath.Join(dir, "missing.nk")} {
		_, err := natsauth.ReadSeed(f)
		if !errs.Is(err, errs.BadRequest) || strings.Contains(err.Error(), "SUPERSECRET") {
			t.Fatalf("ReadSeed(%s): %v", filepath.Base(f), err)
		}
		if _, err := natsauth.SeedOption(f); !errs.Is(err, errs.BadRequest) {
			t.Fatalf("SeedOption(%s): %v", filepath.Base(f), err)
		}
	}
	// An account seed is not a user seed.
	acct := filepath.Join(dir, "acct.nk")
	if err := os.WriteFile(acct, []byte("SAAJHKAXMIE5ZMBJJIVXRH3F7RX2UDYNW3RA5RUI5H6TCTHGTP4F7PBHJY\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := natsauth.ReadSeed(acct); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("account seed read as a user seed: %v", err)
	}
}

// TestServerEnforces runs a real server with two NKey users: each connects with its seed file and gets
// exactly its permissions; a connection without an identity, or with an unknown one, is refused.
func TestServerEnforces(t *testing.T) {
	dir := t.TempDir()
	cliKey, nobodyKey, strangerKey := filepath.Join(dir, "cli.nk"), filepath.Join(dir, "nobody.nk"), filepath.Join(dir, "stranger.nk")
	cliPub, err := natsauth.EnsureSeed(cliKey)
	if err != nil {
		t.Fatal(err)
	}
	nobodyPub, err := natsauth.EnsureSeed(nobodyKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := natsauth.EnsureSeed(strangerKey); err != nil {
		t.Fatal(err)
	}
	srv, err := embednats.Start(embednats.Options{StoreDir: filepath.Join(dir, "nats"), Users: []natsauth.User{
		{Name: "cli", PublicKey: cliPub, Permissions: natsauth.ClientPermissions()},
		{Name: "nobody", PublicKey: nobodyPub}, // no permissions at all
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })

	connect := func(seedFile string) (*nats.Conn, chan error) {
		t.Helper()
		opt, err := natsauth.SeedOption(seedFile)
		if err != nil {
			t.Fatal(err)
		}
		refused := make(chan error, 16)
		nc, err := nats.Connect(srv.ClientURL(), opt, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				refused <- err
			}
		}))
		if err != nil {
			t.Fatalf("connect with %s: %v", filepath.Base(seedFile), err)
		}
		t.Cleanup(nc.Close)
		return nc, refused
	}
	expectRefused := func(refused chan error, what, subject string) {
		t.Helper()
		select {
		case err := <-refused:
			if !strings.Contains(err.Error(), `"`+subject+`"`) {
				t.Fatalf("%s: violation names another subject: %v", what, err)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: no permission violation reported", what)
		}
	}

	cli, cliRefused := connect(cliKey)
	// Allowed: a request to a service endpoint is published (nobody serves it here, so: no responders).
	if _, err := cli.Request("trove.storage.v1.stat", []byte("{}"), time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("cli request to an endpoint: %v", err)
	}
	if _, err := cli.SubscribeSync("trove.storage.v1.jobs.>"); err != nil {
		t.Fatal(err)
	}
	// Refused: serving an endpoint, forging a job event, writing a job record.
	if _, err := cli.SubscribeSync("trove.storage.v1.put"); err != nil {
		t.Fatal(err) // the refusal arrives asynchronously
	}
	expectRefused(cliRefused, "cli subscribes to an endpoint", "trove.storage.v1.put")
	if err := cli.Publish("trove.storage.v1.jobs.j1.events", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	expectRefused(cliRefused, "cli forges a job event", "trove.storage.v1.jobs.j1.events")

	nobody, nobodyRefused := connect(nobodyKey)
	if err := nobody.Publish("anything", nil); err != nil {
		t.Fatal(err)
	}
	expectRefused(nobodyRefused, "user without permissions publishes", "anything")
	if _, err := nobody.SubscribeSync("_INBOX.x"); err != nil {
		t.Fatal(err)
	}
	expectRefused(nobodyRefused, "user without permissions subscribes", "_INBOX.x")

	// No identity, or one the server does not know: refused at connect.
	_, err = nats.Connect(srv.ClientURL(), nats.MaxReconnects(0))
	if !errors.Is(err, nats.ErrAuthorization) || !natsauth.IsAuthError(err) {
		t.Fatalf("unauthenticated connect: %v", err)
	}
	opt, err := natsauth.SeedOption(strangerKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = nats.Connect(srv.ClientURL(), opt, nats.MaxReconnects(0)); !natsauth.IsAuthError(err) {
		t.Fatalf("unknown key connect: %v", err)
	}
	if natsauth.IsAuthError(nats.ErrNoServers) || natsauth.IsAuthError(nil) {
		t.Fatal("IsAuthError says yes to a non-auth error")
	}
}

func TestEmbeddedRejectsBadUsers(t *testing.T) {
	_, err := embednats.Start(embednats.Options{StoreDir: t.TempDir(), Users: []natsauth.User{{Name: "x", PublicKey: "not-a-key"}}})
	if err == nil || !strings.Contains(err.Error(), "not an NKey user public key") {
		t.Fatalf("bad key: %v", err)
	}
	pub, _, err := natsauth.NewUserKey()
	if err != nil {
		t.Fatal(err)
	}
	_, err = embednats.Start(embednats.Options{StoreDir: t.TempDir(), Users: []natsauth.User{{Name: "x", PublicKey: pub, Permissions: natsauth.Permissions{Publish: []string{"a..b"}}}}})
	if !errs.Is(err, errs.BadRequest) {
		t.Fatalf("bad subject: %v", err)
	}
}
