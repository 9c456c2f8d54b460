package natstest

import (
	"errors"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/natsauth"
)

// AuthServer is an embedded server that only lets in the named NKey identities, each limited to its
// permissions: tests run services under exactly their production permission sets with it.
type AuthServer struct {
	*Server
	t     testing.TB
	seeds map[string]string // identity name -> seed file
	mu    sync.Mutex
	seen  map[string][]string // identity name -> permission violations
}

// StartAuth starts a server whose users are identities (name -> permissions). Every connection made with
// ConnectAs records the permission violations the server reports to it; when the test ends, any violation
// fails it, so a permission set that lacks a subject the code needs cannot pass.
func StartAuth(t testing.TB, identities map[string]natsauth.Permissions) *AuthServer {
	t.Helper()
	dir := t.TempDir()
	a := &AuthServer{t: t, seeds: map[string]string{}, seen: map[string][]string{}}
	names := make([]string, 0, len(identities))
	for n := range identities {
		names = append(names, n)
	}
	sort.Strings(names)
	var users []natsauth.User
	for _, n := range names {
		seed := filepath.Join(dir, "nkeys", n+".nk")
		pub, err := natsauth.EnsureSeed(seed)
		if err != nil {
			t.Fatalf("natstest: %v", err)
		}
		a.seeds[n] = seed
		users = append(users, natsauth.User{Name: n, PublicKey: pub, Permissions: identities[n]})
	}
	s := &Server{t: t, dir: filepath.Join(dir, "js"), users: users}
	s.start()
	a.Server = s
	t.Cleanup(func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, n := range names {
			for _, v := range a.seen[n] {
				t.Errorf("identity %s was refused: %s", n, v)
			}
		}
	})
	t.Cleanup(s.Stop)
	return a
}

// ConnectAs connects as a named identity, recording its permission violations.
func (a *AuthServer) ConnectAs(name string, opts ...nats.Option) *nats.Conn {
	a.t.Helper()
	seed, ok := a.seeds[name]
	if !ok {
		a.t.Fatalf("natstest: no identity %q", name)
	}
	id, err := natsauth.SeedOption(seed)
	if err != nil {
		a.t.Fatalf("natstest: %v", err)
	}
	handler := func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if !errors.Is(err, nats.ErrPermissionViolation) {
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if !slices.Contains(a.seen[name], err.Error()) {
			a.seen[name] = append(a.seen[name], err.Error())
		}
	}
	all := append([]nats.Option{id, nats.ErrorHandler(handler), nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(a.URL(), all...)
	if err != nil {
		a.t.Fatalf("natstest: connect as %s: %v", name, err)
	}
	a.t.Cleanup(func() { _ = nc.Flush(); nc.Close() })
	return nc
}
