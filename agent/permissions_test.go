package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/services/storage"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/embednats"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/natsauth"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
)

// refusals collects the permission violations the server reports to one connection.
type refusals struct {
	mu   sync.Mutex
	errs []string
}

func (r *refusals) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.Contains(r.errs, err.Error()) {
		r.errs = append(r.errs, err.Error())
	}
}

func (r *refusals) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.errs)
}

func (r *refusals) has(subject string) bool {
	for _, e := range r.all() {
		if strings.Contains(e, `"`+subject+`"`) {
			return true
		}
	}
	return false
}

// callerPermissions is what a strategy service needs to drive guest g1 and follow the registry in these
// tests: its requests, streams, the storage service, and reading the registry bucket.
func callerPermissions() natsauth.Permissions {
	return natsauth.Permissions{
		Publish:   []string{"trove.guest.g1.>", "trove.storage.v1.*", "_INBOX.>", "$JS.API.>", "$SRV.>"},
		Subscribe: []string{"_INBOX.>"},
	}
}

type authEnv struct {
	srv                      *server.Server
	agentSeed, storageSeed   string
	callerSeed, intruderSeed string
}

func startAuth(t *testing.T, agentPerms natsauth.Permissions) *authEnv {
	t.Helper()
	e, err := startAuthE(t, agentPerms)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// startAuthE is startAuth for goroutines (no t.Fatal).
func startAuthE(t *testing.T, agentPerms natsauth.Permissions) (*authEnv, error) {
	dir := t.TempDir()
	e := &authEnv{agentSeed: filepath.Join(dir, "agent.nk"), storageSeed: filepath.Join(dir, "storage.nk"),
		callerSeed: filepath.Join(dir, "caller.nk"), intruderSeed: filepath.Join(dir, "intruder.nk")}
	var users []natsauth.User
	for _, u := range []struct {
		name, seed string
		perms      natsauth.Permissions
	}{
		{"agent", e.agentSeed, agentPerms},
		{"storage", e.storageSeed, storage.Permissions("")},
		{"caller", e.callerSeed, callerPermissions()},
		// Another guest's agent, to show one agent cannot act as or listen to another.
		{"intruder", e.intruderSeed, Permissions("g2")},
	} {
		pub, err := natsauth.EnsureSeed(u.seed)
		if err != nil {
			return nil, err
		}
		users = append(users, natsauth.User{Name: u.name, PublicKey: pub, Permissions: u.perms})
	}
	var err error
	e.srv, err = embednats.Start(embednats.Options{StoreDir: filepath.Join(dir, "nats"), Users: users})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { e.srv.Shutdown(); e.srv.WaitForShutdown() })
	return e, nil
}

func (e *authEnv) connect(t *testing.T, seed string, opts ...nats.Option) (*nats.Conn, *refusals) {
	t.Helper()
	nc, r, err := e.connectE(t, seed, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return nc, r
}

func (e *authEnv) connectE(t *testing.T, seed string, opts ...nats.Option) (*nats.Conn, *refusals, error) {
	id, err := natsauth.SeedOption(seed)
	if err != nil {
		return nil, nil, err
	}
	r := &refusals{}
	nc, err := nats.Connect(e.srv.ClientURL(), append([]nats.Option{id, nats.ErrorHandler(r.handler)}, opts...)...)
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(nc.Close)
	return nc, r, nil
}

// exercise runs every kind of agent operation with the agent on agentPerms and the storage service and the
// caller on their own least-privilege identities. It returns the first failure and every refusal. It may
// run on any goroutine (it never calls t.Fatal).
func exercise(t *testing.T, agentPerms natsauth.Permissions) (refused []string, failure error) {
	e, err := startAuthE(t, agentPerms)
	if err != nil {
		return nil, err
	}
	storeNC, storeRefused, err := e.connectE(t, e.storageSeed)
	if err != nil {
		return nil, err
	}
	storeRoot := t.TempDir()
	storeCfg := storage.Config{Strategy: "fs", Options: map[string]string{"root": storeRoot},
		Stream: testStream, Jobs: jobs.Options{AckWait: time.Second}}
	svc, err := storage.Start(context.Background(), storeNC, nil, storeCfg)
	if err != nil {
		return nil, err
	}
	defer func() { _ = svc.Stop() }()
	agentNC, agentRefused, err := e.connectE(t, e.agentSeed, nats.CustomInboxPrefix(InboxPrefix("g1")))
	if err != nil {
		return nil, err
	}
	cliNC, cliRefused, err := e.connectE(t, e.callerSeed)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, nc := range []*nats.Conn{agentNC, storeNC, cliNC} {
			_ = nc.Flush()
		}
		time.Sleep(50 * time.Millisecond)
		for who, r := range map[string]*refusals{"agent": agentRefused, "storage": storeRefused, "caller": cliRefused} {
			for _, v := range r.all() {
				refused = append(refused, who+": "+v)
			}
		}
	}()
	short := stream.Options{ChunkSize: testStream.ChunkSize, Window: testStream.Window, IdleTimeout: 2 * time.Second}
	a, err := Start(context.Background(), agentNC, nil, Config{Instance: "g1", DataRoot: t.TempDir(), ConfigRoot: t.TempDir(),
		Heartbeat: 100 * time.Millisecond, Tools: testTools(), Stream: short})
	if err != nil {
		return nil, err
	}
	defer func() { _ = a.Stop() }()
	gc, err := guestclient.New(cliNC, "g1", short)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	step := func(what string, r guestv1.ExecResult, err error) error {
		if err == nil {
			err = guestclient.Check(r)
		}
		if err != nil {
			return errs.Wrap(errs.CodeOf(err), err, "%s", what)
		}
		return nil
	}
	// The registry bucket is made by the agent itself.
	js, _ := jetstream.New(cliNC)
	deadline := time.Now().Add(2 * time.Second)
	for {
		gs, err := guestclient.Guests(ctx, js)
		if err == nil && len(gs) == 1 && gs[0].Instance == "g1" {
			break
		}
		if time.Now().After(deadline) {
			return nil, errs.Unavailablef("no registration: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := gc.Info(ctx); err != nil {
		return nil, err
	}
	if _, err := cliNC.Request("$SRV.PING.trove-guest", nil, 2*time.Second); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "$SRV ping")
	}
	r, err := gc.Run(ctx, guestv1.ExecRequest{Tool: "echo", Args: []string{"x"}, Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
	if err := step("capture", r, err); err != nil {
		return nil, err
	}
	h := sha256.New()
	r, err = gc.RunToWriter(ctx, guestv1.ExecRequest{Tool: "cat", Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStream}}, bytes.NewReader(genBytes(300<<10, 1)), h)
	if err := step("stream in and out", r, err); err != nil {
		return nil, err
	}
	if hex.EncodeToString(h.Sum(nil)) != genSum(300<<10, 1) {
		return nil, errs.Internalf("stream relay differs")
	}
	fs := &guestv1.FrameSpec{ArtifactID: "p1", Key: bytes.Repeat([]byte{7}, 32)}
	r, err = gc.Run(ctx, guestv1.ExecRequest{Tool: "datagen", Args: datagenArgs(1<<20, 2),
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: "p/one", Frames: fs}}}, nil)
	if err := step("stdout to storage", r, err); err != nil {
		return nil, err
	}
	fs.Key = bytes.Repeat([]byte{7}, 32)
	r, err = gc.Run(ctx, guestv1.ExecRequest{Tool: "sha256sum", Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture},
		Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStorage, Storage: &guestv1.StorageRef{Key: "p/one", Frames: fs}}}, nil)
	if err := step("stdin from storage", r, err); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(string(r.Stdout), genSum(1<<20, 2)) {
		return nil, errs.Internalf("sha256sum said %q", r.Stdout)
	}
	if _, err := gc.WriteFile(ctx, guestv1.FileWriteRequest{Path: "config/a.cnf", Data: []byte("x")}); err != nil {
		return nil, err
	}
	if _, err := gc.ReadFile(ctx, "config/a.cnf"); err != nil {
		return nil, err
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	_ = tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
	_, _ = tw.Write([]byte("1"))
	_ = tw.Close()
	r, err = gc.Extract(ctx, guestv1.ExtractRequest{Path: "data/x", Source: guestv1.SourceStream}, bytes.NewReader(tb.Bytes()))
	if err := step("extract from a stream", r, err); err != nil {
		return nil, err
	}
	if _, err := storageclient.New(cliNC, short).Put(ctx, "p/t.tar", bytes.NewReader(tb.Bytes()), nil); err != nil {
		return nil, err
	}
	r, err = gc.Extract(ctx, guestv1.ExtractRequest{Path: "data/y", Source: guestv1.SourceStorage, Storage: &guestv1.StorageRef{Key: "p/t.tar"}}, nil)
	if err := step("extract from storage", r, err); err != nil {
		return nil, err
	}
	// An upload whose tool fails is aborted (staged_abort).
	r, err = gc.Run(ctx, guestv1.ExecRequest{Tool: "cat", Args: []string{"/nonexistent/input"},
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: "p/failed"}}}, nil)
	if err != nil || r.ExitCode == 0 {
		return nil, errs.Internalf("a failing tool's upload: exit %d, %v", r.ExitCode, err)
	}
	// An upload that outlives the storage service: stopped once the upload began, started again once the
	// first segment waits for it (staged_status, then the rest).
	pr, pw := io.Pipe()
	up := make(chan error, 1)
	go func() {
		r, err := gc.Run(ctx, guestv1.ExecRequest{Tool: "cat", Stdin: guestv1.StdinSpec{Mode: guestv1.StdinStream},
			Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: "p/resumed"}}}, pr)
		// A run that ended early (a permission missing) reads no more: the writes below must not hang.
		_ = pr.CloseWithError(io.ErrClosedPipe)
		up <- step("stdout to storage across a storage restart", r, err)
	}()
	if _, err := pw.Write(genBytes(1<<20, 3)); err != nil {
		return nil, errs.Internalf("stdin: %v (the run: %v)", err, <-up)
	}
	for !stagedBegun(storeRoot) {
		if ctx.Err() != nil {
			return nil, errs.Unavailablef("the staged upload never began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = svc.Stop()
	if _, err := pw.Write(genBytes(storageclient.DefaultSegmentSize, 4)); err != nil { // a whole segment waits
		return nil, errs.Internalf("stdin: %v (the run: %v)", err, <-up)
	}
	time.Sleep(300 * time.Millisecond)
	if svc, err = storage.Start(context.Background(), storeNC, nil, storeCfg); err != nil {
		return nil, err
	}
	_ = pw.Close()
	if err := <-up; err != nil {
		return nil, err
	}
	if r, err := storageclient.New(cliNC, short).Stat(ctx, "p/resumed"); err != nil || r.Size != 1<<20+storageclient.DefaultSegmentSize {
		return nil, errs.Internalf("the resumed upload: %+v %v", r, err)
	}
	// A few more beats, all written.
	beats := a.Heartbeats()
	deadline = time.Now().Add(3 * time.Second)
	for a.Heartbeats() < beats+2 {
		if time.Now().After(deadline) {
			return nil, errs.Unavailablef("heartbeats stopped: %v", a.reg.LastError())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, nil
}

// stagedBegun reports whether a staged upload exists in the fs store at root.
func stagedBegun(root string) bool {
	m, _ := filepath.Glob(filepath.Join(root, "tmp", "*.stage"))
	return len(m) > 0
}

// TestPermissionsSuffice: with the agent's permission set every operation works and no identity is
// refused anything.
func TestPermissionsSuffice(t *testing.T) {
	refused, err := exercise(t, Permissions("g1"))
	if err != nil || len(refused) > 0 {
		t.Fatalf("under least privilege: %v; refused: %v", err, refused)
	}
}

// TestPermissionsAreMinimal: without any one of its subjects (but those of direct transfers, which need an
// s3 strategy, and plain put, see below), something fails or is refused. The runs go at once: most of them only wait for a timeout.
func TestPermissionsAreMinimal(t *testing.T) {
	full := Permissions("g1")
	// Plain put is what a staged upload falls back to on a strategy without staged uploads (nats); the
	// storage tests show the fallback (TestPutStagedFallsBack).
	direct := []string{storagev1.EndpointPutDirect, storagev1.EndpointPresignParts, storagev1.EndpointCompleteDirect,
		storagev1.EndpointAbortDirect, storagev1.EndpointGetDirect, storagev1.EndpointPut}
	type outcome struct {
		what    string
		err     error
		refused []string
	}
	var wg sync.WaitGroup
	results := make(chan outcome, len(full.Publish)+len(full.Subscribe))
	for _, list := range []string{"publish", "subscribe"} {
		subjects := full.Publish
		if list == "subscribe" {
			subjects = full.Subscribe
		}
		for i, subj := range subjects {
			if slices.ContainsFunc(direct, func(ep string) bool { return subj == storagev1.Subject(ep) }) {
				continue
			}
			p := Permissions("g1")
			if list == "publish" {
				p.Publish = slices.Delete(slices.Clone(p.Publish), i, i+1)
			} else {
				p.Subscribe = slices.Delete(slices.Clone(p.Subscribe), i, i+1)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				refused, err := exercise(t, p)
				results <- outcome{list + " " + subj, err, refused}
			}()
		}
	}
	wg.Wait()
	close(results)
	for o := range results {
		if o.err == nil && len(o.refused) == 0 {
			t.Errorf("%s is not needed: everything works without it", o.what)
		}
	}
}

// TestPermissionsRefuse: what an agent's identity must not do is refused by the server.
func TestPermissionsRefuse(t *testing.T) {
	e := startAuth(t, Permissions("g1"))
	// Another guest's agent (g2) tries to serve g1's subjects, to read every inbox, to write g1's
	// registration and to delete a stored object.
	nc, refused := e.connect(t, e.intruderSeed, nats.CustomInboxPrefix(InboxPrefix("g2")))
	for _, subj := range []string{"trove.guest.g1.exec", "_INBOX.>", "trove.guest.>"} {
		if _, err := nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
	}
	for _, subj := range []string{"trove.storage.v1.delete", "$KV.trove_guests.g1", "trove.guest.g1.exec", "$JS.API.STREAM.DELETE.KV_trove_guests"} {
		if err := nc.Publish(subj, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	_ = nc.Flush()
	waitFor(t, "the refusals", 5*time.Second, func() bool {
		for _, s := range []string{"trove.guest.g1.exec", "_INBOX.>", "trove.guest.>", "trove.storage.v1.delete", "$KV.trove_guests.g1", "$JS.API.STREAM.DELETE.KV_trove_guests"} {
			if !refused.has(s) {
				return false
			}
		}
		return true
	})
	// And an agent whose connection lacks its inbox prefix gets no replies: it is told so at start
	// (logged), and its requests fail rather than leak onto shared inboxes.
	plain, _ := e.connect(t, e.agentSeed)
	if _, err := plain.Request("trove.storage.v1.put", nil, 500*time.Millisecond); err == nil {
		t.Fatal("a reply reached an inbox outside the agent's prefix")
	}
}
