package storage_test

import (
	"bytes"
	"context"
	"errors"
	"os"
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
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/embednats"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/natsauth"
	"troveng.dev/shared/storageclient"
)

// violations collects the permission violations the server reports to one connection.
type violations struct {
	nc   *nats.Conn
	mu   sync.Mutex
	errs []error
	seen chan error // every violation, for tests that wait for one
}

func newViolations() *violations { return &violations{seen: make(chan error, 256)} }

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	v.mu.Lock()
	if !slices.ContainsFunc(v.errs, func(e error) bool { return e.Error() == err.Error() }) {
		v.errs = append(v.errs, err)
	}
	v.mu.Unlock()
	select {
	case v.seen <- err:
	default:
	}
}

func (v *violations) all() []error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]error(nil), v.errs...)
}

// flush makes sure every refusal of what the connection sent so far has arrived.
func (v *violations) flush() error {
	if err := v.nc.Flush(); err != nil {
		return err
	}
	time.Sleep(50 * time.Millisecond) // the error callback runs on its own goroutine
	return nil
}

// waitFor waits for a violation naming subject (or, with prefix, a subject starting with it).
func (v *violations) waitFor(t *testing.T, what, subject string, prefix bool) {
	t.Helper()
	want := `"` + subject
	if !prefix {
		want += `"`
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case err := <-v.seen:
			if strings.Contains(err.Error(), want) {
				return
			}
		case <-timeout:
			t.Fatalf("%s: no permission violation for %q reported (seen: %v)", what, subject, v.all())
		}
	}
}

// authServer is an embedded NATS server that admits only the storage service's and a client's NKey users,
// each with the permissions the code defines.
type authServer struct {
	srv                *server.Server
	storageKey, cliKey string // seed files
}

func startAuthServer(t *testing.T, bucket string) *authServer {
	t.Helper()
	return startAuthServerWith(t, storage.Permissions(bucket))
}

// startAuthServerWith gives the storage identity storagePerms.
func startAuthServerWith(t *testing.T, storagePerms natsauth.Permissions) *authServer {
	t.Helper()
	dir := t.TempDir()
	a := &authServer{storageKey: filepath.Join(dir, "nkeys", "storage.nk"), cliKey: filepath.Join(dir, "nkeys", "cli.nk")}
	storagePub, err := natsauth.EnsureSeed(a.storageKey)
	if err != nil {
		t.Fatal(err)
	}
	cliPub, err := natsauth.EnsureSeed(a.cliKey)
	if err != nil {
		t.Fatal(err)
	}
	a.srv, err = embednats.Start(embednats.Options{StoreDir: filepath.Join(dir, "nats"), Users: []natsauth.User{
		{Name: "storage", PublicKey: storagePub, Permissions: storagePerms},
		{Name: "cli", PublicKey: cliPub, Permissions: natsauth.ClientPermissions()},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.srv.Shutdown(); a.srv.WaitForShutdown() })
	return a
}

// connect connects as the identity whose seed is in seedFile, recording its permission violations.
func (a *authServer) connect(t *testing.T, seedFile string) (*nats.Conn, *violations) {
	t.Helper()
	opt, err := natsauth.SeedOption(seedFile)
	if err != nil {
		t.Fatal(err)
	}
	v := newViolations()
	nc, err := nats.Connect(a.srv.ClientURL(), opt, nats.ErrorHandler(v.handler))
	if err != nil {
		t.Fatalf("connect with %s: %v", filepath.Base(seedFile), err)
	}
	v.nc = nc
	t.Cleanup(nc.Close)
	return nc, v
}

// TestPermissionsSuffice runs every storage operation with two service replicas connected as the storage
// identity (the second one finds the bucket, streams and consumer already made) and the client as the cli
// identity: everything works and neither identity is refused anything, so the sets hold every subject the
// code needs.
func TestPermissionsSuffice(t *testing.T) {
	cases := map[string]storage.Config{
		"fs":   {Strategy: "fs", Options: map[string]string{"root": t.TempDir()}},
		"nats": {Strategy: "nats", Options: map[string]string{"bucket": "perm-test"}},
		// Settings make the strategy create or update the bucket (a different JetStream call).
		"nats with limits": {Strategy: "nats", Options: map[string]string{"bucket": "perm-test", "max_bytes": "1GiB"}},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			cfg.Stream, cfg.Jobs = testStream, jobs.Options{AckWait: 2 * time.Second}
			a := startAuthServer(t, cfg.NATSBucket())
			var svcViolations []*violations
			var replicas []*storage.Service
			for range 2 {
				nc, v := a.connect(t, a.storageKey)
				svcViolations = append(svcViolations, v)
				svc, err := storage.Start(context.Background(), nc, nil, cfg)
				if err != nil {
					t.Fatalf("start storage as its own identity: %v (refused: %v)", err, v.all())
				}
				t.Cleanup(func() { _ = svc.Stop() })
				replicas = append(replicas, svc)
			}
			cliNC, cliViolations := a.connect(t, a.cliKey)
			c := storageclient.New(cliNC, testStream)
			ctx := ctxT(t)
			for _, svc := range replicas {
				if err := svc.Ready(ctx); err != nil {
					t.Fatalf("ready: %v", err)
				}
			}

			// The cli identity follows job events.
			events, err := cliNC.SubscribeSync("trove.storage.v1.jobs.>")
			if err != nil {
				t.Fatal(err)
			}
			data := randomBytes(1<<20+5, 7)
			obj, err := c.Put(ctx, "db/full.bin", bytes.NewReader(data), map[string]string{"engine": "redis"})
			if err != nil || obj.SHA256 != sum(data) {
				t.Fatalf("put: %+v %v", obj, err)
			}
			// Overwriting replaces (and, in an object store, purges) the old bytes.
			if obj, err = c.Put(ctx, "db/full.bin", bytes.NewReader(data), map[string]string{"engine": "redis"}); err != nil {
				t.Fatalf("overwrite: %v", err)
			}
			var got bytes.Buffer
			if _, err := c.Get(ctx, "db/full.bin", 0, 0, &got, nil); err != nil || !bytes.Equal(got.Bytes(), data) {
				t.Fatalf("get: %v", err)
			}
			got.Reset()
			if _, err := c.Get(ctx, "db/full.bin", 10, 100, &got, nil); err != nil || !bytes.Equal(got.Bytes(), data[10:110]) {
				t.Fatalf("range get: %v", err)
			}
			if o, err := c.Stat(ctx, "db/full.bin"); err != nil || o.Size != int64(len(data)) {
				t.Fatalf("stat: %+v %v", o, err)
			}
			if page, err := c.List(ctx, storagev1.ListRequest{Prefix: "db/"}); err != nil || len(page.Objects) != 1 {
				t.Fatalf("list: %+v %v", page, err)
			}
			j, err := c.Verify(ctx, storagev1.VerifyRequest{Key: "db/full.bin", JobID: "verify-1"})
			if err != nil {
				t.Fatal(err)
			}
			if j = waitJob(t, c, j.ID); j.State != jobs.StateSucceeded {
				t.Fatalf("verify job: %+v", j)
			}
			// Submitting the same job id again answers with the job, not a second run.
			if again, err := c.Verify(ctx, storagev1.VerifyRequest{Key: "db/full.bin", JobID: "verify-1"}); err != nil || again.ID != j.ID {
				t.Fatalf("repeated submit: %+v %v", again, err)
			}
			if _, err := events.NextMsg(5 * time.Second); err != nil {
				t.Fatalf("no job event reached the cli identity: %v", err)
			}
			j, err = c.Copy(ctx, storagev1.CopyRequest{Source: "db/full.bin", Destination: "db/copy.bin"})
			if err != nil {
				t.Fatal(err)
			}
			if j = waitJob(t, c, j.ID); j.State != jobs.StateSucceeded {
				t.Fatalf("copy job: %+v", j)
			}
			if _, err := c.CancelJob(ctx, j.ID); errs.CodeOf(err) != errs.Conflict {
				t.Fatalf("cancel of a finished job: %v", err)
			}
			if all, err := c.Jobs(ctx); err != nil || len(all) != 2 {
				t.Fatalf("job list: %d jobs, %v", len(all), err)
			}
			if err := c.Delete(ctx, "db/copy.bin"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Stat(ctx, "db/copy.bin"); errs.CodeOf(err) != errs.NotFound {
				t.Fatalf("stat after delete: %v", err)
			}
			// $SRV discovery works for the client.
			if _, err := cliNC.Request("$SRV.PING.trove-storage", nil, 5*time.Second); err != nil {
				t.Fatalf("$SRV ping: %v", err)
			}

			// Stopping hands work back and deletes watchers: refusals there would show too.
			for _, svc := range replicas {
				if err := svc.Stop(); err != nil {
					t.Fatal(err)
				}
			}
			for i, v := range svcViolations {
				if err := v.flush(); err != nil {
					t.Fatal(err)
				}
				if all := v.all(); len(all) != 0 {
					t.Errorf("storage replica %d was refused: %v", i, all)
				}
			}
			if err := cliViolations.flush(); err != nil {
				t.Fatal(err)
			}
			if all := cliViolations.all(); len(all) != 0 {
				t.Errorf("the cli identity was refused: %v", all)
			}
		})
	}
}

// TestPermissionsRarePaths covers subjects the storage identity holds for paths an ordinary run may not
// take: flow control of a KV watch with a large backlog, and reading back a waiting work message.
func TestPermissionsRarePaths(t *testing.T) {
	a := startAuthServer(t, "")
	nc, v := a.connect(t, a.storageKey)
	ctx := ctxT(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// The bucket the job runner makes; records big enough that the server asks the watcher for flow control
	// (it does past ~1 MiB in flight).
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: jobs.BucketName(storage.Family)})
	if err != nil {
		t.Fatalf("create the job bucket: %v (refused: %v)", err, v.all())
	}
	big := bytes.Repeat([]byte("x"), 512<<10)
	const n = 8
	for i := range n {
		if _, err := kv.Put(ctx, "k"+string(rune('a'+i)), big); err != nil {
			t.Fatal(err)
		}
	}
	// readAll counts the records a watch delivers; -1 if the watch could not start.
	readAll := func(ctx context.Context, kv jetstream.KeyValue) int {
		w, err := kv.WatchAll(ctx)
		if err != nil {
			return -1
		}
		defer func() { _ = w.Stop() }()
		seen := 0
		for {
			select {
			case e := <-w.Updates():
				if e == nil {
					return seen
				}
				seen++
				time.Sleep(20 * time.Millisecond) // a slow reader, so the server's window fills
			case <-time.After(5 * time.Second):
				return seen
			case <-ctx.Done():
				return seen
			}
		}
	}
	if got := readAll(ctx, kv); got != n {
		t.Fatalf("storage identity watched %d of %d records (refused: %v)", got, n, v.all())
	}
	if err := v.flush(); err != nil {
		t.Fatal(err)
	}
	if all := v.all(); len(all) != 0 {
		t.Fatalf("storage identity refused while watching: %v", all)
	}

	// The same watch without the flow-control subject is refused: the subject is needed, not decoration.
	perms := storage.Permissions("")
	perms.Publish = slices.DeleteFunc(slices.Clone(perms.Publish), func(s string) bool { return strings.HasPrefix(s, "$JS.FC.") })
	b := startAuthServerWith(t, perms)
	nc2, v2 := b.connect(t, b.storageKey)
	js2, _ := jetstream.New(nc2)
	kv2, err := js2.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: jobs.BucketName(storage.Family)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := kv2.Put(ctx, "k"+string(rune('a'+i)), big); err != nil {
			t.Fatal(err)
		}
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan int, 1)
	go func() { watched <- readAll(watchCtx, kv2) }()
	v2.waitFor(t, "watch without $JS.FC", "$JS.FC."+"KV_"+jobs.BucketName(storage.Family)+".", true)
	stopWatch()
	<-watched

	// A repeated submit whose work message is still waiting reads it back from the work stream.
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: jobs.StreamName(storage.Family), Subjects: []string{"trove.work.storage.>"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, jobs.WorkSubject(storage.Family, "verify", "j1"), []byte("j1")); err != nil {
		t.Fatal(err)
	}
	rep, err := nc.Request("$JS.API.STREAM.MSG.GET."+jobs.StreamName(storage.Family), []byte(`{"last_by_subj":"trove.work.storage.verify.j1"}`), 5*time.Second)
	if err != nil {
		t.Fatalf("last work message: %v (refused: %v)", err, v.all())
	}
	if !strings.Contains(string(rep.Data), `"message"`) {
		t.Fatalf("last work message: %s", rep.Data)
	}
}

// TestPermissionsRefuse shows each identity held to its subjects: the server refuses, and says so.
func TestPermissionsRefuse(t *testing.T) {
	a := startAuthServer(t, "")
	svcNC, svcViolations := a.connect(t, a.storageKey)
	svc, err := storage.Start(context.Background(), svcNC, nil, storage.Config{Strategy: "fs", Options: map[string]string{"root": t.TempDir()}, Stream: testStream})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	cliNC, cliViolations := a.connect(t, a.cliKey)
	ctx := ctxT(t)

	// The storage service cannot call or serve another family, nor touch its job records, nor delete its
	// own job bucket.
	if _, err := svcNC.Request("trove.backup.v1.create", []byte("{}"), 300*time.Millisecond); err == nil {
		t.Fatal("storage identity got a reply from trove.backup.v1.create")
	}
	svcViolations.waitFor(t, "storage publishes to another family", "trove.backup.v1.create", false)
	if _, err := svcNC.SubscribeSync("trove.backup.v1.>"); err != nil {
		t.Fatal(err)
	}
	svcViolations.waitFor(t, "storage subscribes to another family", "trove.backup.v1.>", false)
	if err := svcNC.Publish("$KV.trove_jobs_backup.j1", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	svcViolations.waitFor(t, "storage writes another family's job record", "$KV.trove_jobs_backup.j1", false)
	if _, err := svcNC.Request("$JS.API.STREAM.DELETE.KV_trove_jobs_storage", nil, 300*time.Millisecond); err == nil {
		t.Fatal("storage identity could delete its job bucket")
	}
	svcViolations.waitFor(t, "storage deletes its job bucket", "$JS.API.STREAM.DELETE.KV_trove_jobs_storage", false)

	// The cli identity cannot serve a storage endpoint (impersonate the service), nor read or write job
	// records behind the service's back, nor forge job events.
	if _, err := cliNC.QueueSubscribeSync("trove.storage.v1.put", "trove-storage"); err != nil {
		t.Fatal(err)
	}
	cliViolations.waitFor(t, "cli serves trove.storage.v1.put", "trove.storage.v1.put", false)
	if err := cliNC.Publish("$KV.trove_jobs_storage.j1", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	cliViolations.waitFor(t, "cli writes a job record", "$KV.trove_jobs_storage.j1", false)
	if _, err := cliNC.SubscribeSync("$KV.trove_jobs_storage.>"); err != nil {
		t.Fatal(err)
	}
	cliViolations.waitFor(t, "cli listens to job records", "$KV.trove_jobs_storage.>", false)
	js, _ := jetstream.New(cliNC)
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := js.KeyValue(short, jobs.BucketName(storage.Family)); err == nil {
		t.Fatal("cli identity opened the job bucket")
	}
	cliViolations.waitFor(t, "cli opens the job bucket", "$JS.API.STREAM.INFO.KV_trove_jobs_storage", false)
	if err := cliNC.Publish("trove.storage.v1.jobs.j1.events", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	cliViolations.waitFor(t, "cli forges a job event", "trove.storage.v1.jobs.j1.events", false)

	// None of it disturbed the service: the client's refused subscription took no requests away.
	c := storageclient.New(cliNC, testStream)
	for i := range 5 {
		if _, err := c.Put(ctx, "still/"+string(rune('a'+i)), strings.NewReader("ok"), nil); err != nil {
			t.Fatalf("put after the refusals: %v", err)
		}
	}

	// No identity, or one the server does not know: refused at connect.
	if _, err := nats.Connect(a.srv.ClientURL(), nats.MaxReconnects(0)); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("unauthenticated connect: %v", err)
	}
	stranger := filepath.Join(t.TempDir(), "stranger.nk")
	if _, err := natsauth.EnsureSeed(stranger); err != nil {
		t.Fatal(err)
	}
	opt, err := natsauth.SeedOption(stranger)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nats.Connect(a.srv.ClientURL(), opt, nats.MaxReconnects(0)); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("unknown identity connect: %v", err)
	}
}

// TestPermissionsDocumented keeps docs/operations.md's tables the sets the code grants.
func TestPermissionsDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	if err != nil {
		t.Skipf("docs not beside the module: %v", err)
	}
	sets := []natsauth.Permissions{storage.Permissions("<bucket>"), natsauth.ClientPermissions()}
	for _, p := range sets {
		for _, s := range append(append([]string{}, p.Publish...), p.Subscribe...) {
			if !strings.Contains(string(doc), "`"+s+"`") {
				t.Errorf("docs/operations.md does not list %s", s)
			}
		}
	}
}
