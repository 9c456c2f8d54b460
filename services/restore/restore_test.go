package restore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/services/restore"
	"troveng.dev/services/restore/internal/strategy"
	"troveng.dev/services/storage"
	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/datagen"
	"troveng.dev/shared/datakey"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/frames"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/natsauth"
	"troveng.dev/shared/natstest"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
)

var testStream = stream.Options{ChunkSize: 64 << 10, Window: 8, IdleTimeout: 5 * time.Second}

// probe is a restore strategy for the test engine "probe" that only records that it was reached: every
// refusal below must happen before a strategy (and so the target guest) is touched.
type probe struct{ checked, restored atomic.Int32 }

func (p *probe) Name() string   { return "probe-backup" }
func (p *probe) Engine() string { return "probe" }
func (p *probe) Check(strategy.Request) error {
	p.checked.Add(1)
	return nil
}
func (p *probe) Restore(context.Context, strategy.Request) error {
	p.restored.Add(1)
	return errs.Unavailablef("the probe strategy never restores")
}

var theProbe = &probe{}

// stagingProbe is a probe that says it stages the whole chain before touching the target (as the
// physical restores do), so the service checks its artifacts by stat, not by reading them back.
type stagingProbe struct{ probe }

func (p *stagingProbe) Name() string      { return "probe-staged-backup" }
func (p *stagingProbe) Engine() string    { return "probe-staged" }
func (p *stagingProbe) StagesChain() bool { return true }

var theStagingProbe = &stagingProbe{}

func init() {
	strategy.Register(theProbe)
	strategy.Register(theStagingProbe)
}

type stack struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	store    *storageclient.Client
	cat      *catalog.Catalog
	root     string
	identity string // the restore service's
	recip    string
}

func startStack(t *testing.T, identity string) *stack {
	t.Helper()
	ns := natstest.StartAuth(t, map[string]natsauth.Permissions{
		"storage": storage.Permissions(""), "restore": restore.Permissions(), "cli": natsauth.ClientPermissions(),
		"registry": {Publish: []string{">"}, Subscribe: []string{">"}}, // stands in for agents writing the registry
	})
	st := &stack{nc: ns.ConnectAs("cli"), root: t.TempDir()}
	ctx := context.Background()
	ss, err := storage.Start(ctx, ns.ConnectAs("storage"), nil, storage.Config{Strategy: "fs", Options: map[string]string{"root": st.root}, Stream: testStream})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ss.Stop() })
	st.identity, st.recip, _ = datakey.Generate()
	if identity == "" {
		identity = st.identity
	}
	rs, err := restore.Start(ctx, ns.ConnectAs("restore"), nil, restore.Config{Identities: identity, Stream: testStream, Jobs: jobs.Options{AckWait: 2 * time.Second, MaxAttempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rs.Stop() })
	st.store = storageclient.New(st.nc, testStream)
	st.cat = catalog.New(st.store)
	st.js, _ = jetstream.New(ns.ConnectAs("registry"))
	return st
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// register writes a fresh registration for a guest, as its agent's heartbeat would. No agent answers for
// it: a restore that got as far as calling the guest would fail differently from the refusals tested.
func (st *stack) register(t *testing.T, instance, engine string) {
	t.Helper()
	ctx := ctxT(t)
	kv, err := st.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: guestv1.RegistryBucket})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(guestv1.Registration{Instance: instance, Engine: engine, Heartbeat: time.Now().UTC(), HeartbeatMs: 60000,
		Status: guestv1.EngineStatus{Engine: engine, State: guestv1.EngineRunning, Healthy: true}})
	if _, err := kv.Put(ctx, instance, b); err != nil {
		t.Fatal(err)
	}
}

// put stores a COMPLETED probe backup with one sealed artifact whose key is wrapped for recipient.
func (st *stack) put(t *testing.T, id, parent, recipient string) *catalog.Manifest {
	t.Helper()
	return st.putAs(t, id, parent, recipient, "probe-backup", "probe")
}

func (st *stack) putAs(t *testing.T, id, parent, recipient, strategyName, engine string) *catalog.Manifest {
	t.Helper()
	ctx := ctxT(t)
	key, _ := datakey.New()
	rs, err := datakey.ParseRecipients(recipient)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, _ := datakey.Wrap(key, rs)
	m := &catalog.Manifest{ManifestVersion: catalog.ManifestVersion, ID: id, Instance: "src", Engine: engine,
		Strategy: strategyName, Type: catalog.TypeFull, State: catalog.StateCompleted, Created: time.Now().UTC(), DataKey: &wrapped}
	if parent != "" {
		m.Type, m.Parent = catalog.TypeIncremental, parent
	}
	var buf bytes.Buffer
	w, _ := frames.NewWriter(&buf, frames.Options{ArtifactID: id + "/data", Key: key, FrameSize: 64 << 10})
	_, _ = io.Copy(w, io.LimitReader(datagen.New(7), 300<<10))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	sum := w.Summary()
	obj, err := st.store.Put(ctx, catalog.ArtifactKey(id, "data"), &buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.Artifacts = []catalog.Artifact{{Name: "data", Key: obj.Key, Size: obj.Size, SHA256: obj.SHA256, RawSize: sum.RawSize,
		Codec: sum.Codec, Frames: sum.Frames, IndexSHA256: sum.IndexSHA256, ArtifactID: id + "/data"}}
	if err := st.cat.Save(ctx, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func (st *stack) restore(t *testing.T, req backupv1.RestoreRequest) (jobs.Job, error) {
	t.Helper()
	var j jobs.Job
	if err := rpc.Call(ctxT(t), st.nc, backupv1.Subject(backupv1.RestoreGroup, backupv1.OpRestore), req, &j); err != nil {
		return j, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for !j.State.Final() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		if err := rpc.Call(ctxT(t), st.nc, backupv1.Subject(backupv1.RestoreGroup, "job_status"), map[string]string{"id": j.ID}, &j); err != nil {
			return j, err
		}
	}
	if j.Error != nil {
		return j, j.Error
	}
	return j, nil
}

// TestRefusedBeforeTheTargetIsTouched walks the restore's pre-checks in order; each bad case fails with its
// code and never reaches the strategy (so nothing of the target guest is touched).
func TestRefusedBeforeTheTargetIsTouched(t *testing.T) {
	st := startStack(t, "")
	st.register(t, "target", "probe")
	st.register(t, "redis1", "redis")
	st.put(t, "f1", "", st.recip)
	st.put(t, "i1", "f1", st.recip)
	_, otherRecipient, _ := datakey.Generate()
	st.put(t, "foreign", "", otherRecipient)
	st.put(t, "orphan", "gone", st.recip)

	cases := []struct {
		name string
		req  backupv1.RestoreRequest
		code errs.Code
	}{
		{"unknown backup", backupv1.RestoreRequest{Backup: "nope", Instance: "target"}, errs.NotFound},
		{"bad backup id", backupv1.RestoreRequest{Backup: "a.b", Instance: "target"}, errs.BadRequest},
		{"instance id with subject tokens", backupv1.RestoreRequest{Backup: "f1", Instance: "x.>"}, errs.BadRequest},
		{"unknown mode", backupv1.RestoreRequest{Backup: "f1", Instance: "target", Mode: "merge"}, errs.BadRequest},
		{"missing chain element", backupv1.RestoreRequest{Backup: "orphan", Instance: "target"}, errs.NotFound},
		{"target not registered", backupv1.RestoreRequest{Backup: "f1", Instance: "ghost"}, errs.NotFound},
		{"wrong engine", backupv1.RestoreRequest{Backup: "f1", Instance: "redis1"}, errs.BadRequest},
		{"key wrapped for someone else", backupv1.RestoreRequest{Backup: "foreign", Instance: "target"}, errs.Unauthorized},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := st.restore(t, c.req)
			if !errs.Is(err, c.code) {
				t.Fatalf("got %v, want %s", err, c.code)
			}
		})
	}

	// One byte flipped in the full backup's stored data: the incremental's restore is refused as corrupt.
	path := filepath.Join(st.root, "objects", "dbackups", "df1", "fdata") // fs layout, see backend/fs.go
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x08
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := st.restore(t, backupv1.RestoreRequest{Backup: "i1", Instance: "target"}); !errs.Is(err, errs.Corrupt) {
		t.Fatalf("flipped byte: %v", err)
	}
	if n := theProbe.checked.Load() + theProbe.restored.Load(); n != 0 {
		t.Fatalf("the strategy was reached %d times by refused restores", n)
	}

	// A healthy chain gets as far as the strategy (which then refuses, being a probe).
	st.put(t, "f2", "", st.recip)
	if _, err := st.restore(t, backupv1.RestoreRequest{Backup: "f2", Instance: "target"}); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("healthy chain: %v", err)
	}
	if theProbe.checked.Load() != 1 || theProbe.restored.Load() != 1 {
		t.Fatalf("strategy reached check %d, restore %d times; want 1 and 1", theProbe.checked.Load(), theProbe.restored.Load())
	}
}

// TestStagingStrategyChecksByStat: for a strategy that stages the chain (the physical restores), the
// service does not read every artifact back before the restore (the agent checks each frame as it reads
// and nothing is applied before the end), but a missing or replaced object is still refused before the
// strategy is reached.
func TestStagingStrategyChecksByStat(t *testing.T) {
	st := startStack(t, "")
	st.register(t, "target", "probe-staged")
	p := theStagingProbe
	reached := func() int32 { return p.checked.Load() + p.restored.Load() }

	// A byte flipped inside the stored object: the size and recorded SHA-256 are unchanged, so the restore
	// goes on to the strategy, whose agent would find the damaged frame (tested on real guests).
	st.putAs(t, "s1", "", st.recip, "probe-staged-backup", "probe-staged")
	path := filepath.Join(st.root, "objects", "dbackups", "ds1", "fdata") // fs layout, see backend/fs.go
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x08
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := st.restore(t, backupv1.RestoreRequest{Backup: "s1", Instance: "target"}); !errs.Is(err, errs.Unavailable) || reached() != 2 {
		t.Fatalf("flipped byte, staging strategy: %v, strategy reached %d times; want the probe's unavailable, reached twice", err, reached())
	}

	// The object replaced by another (a different recorded SHA-256): corrupt, strategy not reached.
	st.putAs(t, "s2", "", st.recip, "probe-staged-backup", "probe-staged")
	if _, err := st.store.Put(ctxT(t), catalog.ArtifactKey("s2", "data"), bytes.NewReader([]byte("something else")), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := st.restore(t, backupv1.RestoreRequest{Backup: "s2", Instance: "target"}); !errs.Is(err, errs.Corrupt) || reached() != 2 {
		t.Fatalf("replaced object: %v, strategy reached %d times; want corrupt, not reached", err, reached())
	}

	// The object gone: not_found, strategy not reached.
	st.putAs(t, "s3", "", st.recip, "probe-staged-backup", "probe-staged")
	if err := st.store.Delete(ctxT(t), catalog.ArtifactKey("s3", "data")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.restore(t, backupv1.RestoreRequest{Backup: "s3", Instance: "target"}); !errs.Is(err, errs.NotFound) || reached() != 2 {
		t.Fatalf("missing object: %v, strategy reached %d times; want not_found, not reached", err, reached())
	}
}
