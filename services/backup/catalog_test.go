package backup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/services/backup"
	"troveng.dev/services/storage"
	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/storagev1"
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

// stack is the backup service and a storage service (fs) on one real NATS server.
type stack struct {
	nc        *nats.Conn
	store     *storageclient.Client
	cat       *catalog.Catalog
	root      string
	recipient string
	identity  string
}

func startStack(t *testing.T) *stack {
	t.Helper()
	// Every party connects under its production permission set; any refusal fails the test.
	ns := natstest.StartAuth(t, map[string]natsauth.Permissions{
		"storage": storage.Permissions(""), "backup": backup.Permissions(), "cli": natsauth.ClientPermissions(),
	})
	st := &stack{nc: ns.ConnectAs("cli"), root: t.TempDir()}
	ctx := context.Background()
	ss, err := storage.Start(ctx, ns.ConnectAs("storage"), nil, storage.Config{Strategy: "fs", Options: map[string]string{"root": st.root}, Stream: testStream})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ss.Stop() })
	st.identity, st.recipient, err = datakey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	bs, err := backup.Start(ctx, ns.ConnectAs("backup"), nil, backup.Config{Recipients: st.recipient, Stream: testStream, Jobs: jobs.Options{AckWait: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bs.Stop() })
	st.store = storageclient.New(st.nc, testStream)
	st.cat = catalog.New(st.store)
	return st
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// put stores a backup the way a backup job leaves it: a framed, sealed artifact and a COMPLETED manifest.
func (st *stack) put(t *testing.T, id, parent string, created time.Time, size int64) *catalog.Manifest {
	t.Helper()
	ctx := ctxT(t)
	key, _ := datakey.New()
	m := &catalog.Manifest{ManifestVersion: catalog.ManifestVersion, ID: id, Instance: "db1", Engine: "mariadb",
		Strategy: "mariabackup", Type: catalog.TypeFull, State: catalog.StateCompleted, Created: created}
	if parent != "" {
		m.Type, m.Parent = catalog.TypeIncremental, parent
	}
	var buf bytes.Buffer
	w, err := frames.NewWriter(&buf, frames.Options{ArtifactID: id + "/data", Key: key, FrameSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w, io.LimitReader(datagen.New(created.Unix()), size)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	sum := w.Summary()
	obj, err := st.store.Put(ctx, catalog.ArtifactKey(id, "data"), &buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.Artifacts = []catalog.Artifact{{Name: "data", Key: obj.Key, Size: obj.Size, SHA256: obj.SHA256, RawSize: sum.RawSize,
		Codec: sum.Codec, Frames: sum.Frames, IndexSHA256: sum.IndexSHA256, ArtifactID: id + "/data", FrameSize: 64 << 10}}
	if err := st.cat.Save(ctx, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func call[T any](t *testing.T, st *stack, op string, req any) (T, error) {
	t.Helper()
	var out T
	err := rpc.Call(ctxT(t), st.nc, backupv1.Subject(backupv1.BackupGroup, op), req, &out)
	return out, err
}

func waitJob(t *testing.T, st *stack, j jobs.Job) jobs.Job {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !j.State.Final() {
		if time.Now().After(deadline) {
			t.Fatalf("job %s still %s", j.ID, j.State)
		}
		time.Sleep(50 * time.Millisecond)
		var err error
		if j, err = call[jobs.Job](t, st, backupv1.OpJobStatus, backupv1.IDRequest{ID: j.ID}); err != nil {
			t.Fatal(err)
		}
	}
	return j
}

func TestCatalogListShowDeletePrune(t *testing.T) {
	st := startStack(t)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	st.put(t, "f1", "", t0, 200<<10)
	st.put(t, "i1", "f1", t0.Add(time.Hour), 100<<10)
	st.put(t, "f2", "", t0.Add(2*time.Hour), 200<<10)

	list, err := call[backupv1.ListReply](t, st, backupv1.OpList, backupv1.ListRequest{Instance: "db1"})
	if err != nil || len(list.Backups) != 3 || list.Backups[0].ID != "f1" || list.Backups[2].ID != "f2" {
		t.Fatalf("list: %+v %v", list, err)
	}
	if l, _ := call[backupv1.ListReply](t, st, backupv1.OpList, backupv1.ListRequest{Instance: "other"}); len(l.Backups) != 0 {
		t.Fatalf("filter by instance: %+v", l)
	}
	m, err := call[catalog.Manifest](t, st, backupv1.OpShow, backupv1.IDRequest{ID: "i1"})
	if err != nil || m.Parent != "f1" {
		t.Fatalf("show: %+v %v", m, err)
	}
	if _, err := call[catalog.Manifest](t, st, backupv1.OpShow, backupv1.IDRequest{ID: "nope"}); !errs.Is(err, errs.NotFound) {
		t.Fatalf("show unknown: %v", err)
	}
	if _, err := call[catalog.Manifest](t, st, backupv1.OpShow, backupv1.IDRequest{ID: "a.b"}); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("show bad id: %v", err)
	}

	// f1 has a dependent: refused without cascade, nothing deleted.
	if _, err := call[backupv1.DeleteReply](t, st, backupv1.OpDelete, backupv1.DeleteRequest{ID: "f1"}); !errs.Is(err, errs.Conflict) {
		t.Fatalf("delete with dependents: %v", err)
	}
	if _, err := st.cat.Load(ctxT(t), "f1"); err != nil {
		t.Fatalf("refused delete removed f1: %v", err)
	}

	// Prune keeping the newest chain: a dry run changes nothing, the real one drops i1 then f1.
	dry, err := call[backupv1.DeleteReply](t, st, backupv1.OpPrune, backupv1.PruneRequest{Instance: "db1", KeepLast: 1, DryRun: true})
	if err != nil || !dry.DryRun || len(dry.Deleted) != 2 || dry.Deleted[0] != "i1" || dry.Deleted[1] != "f1" {
		t.Fatalf("dry prune: %+v %v", dry, err)
	}
	if l, _ := call[backupv1.ListReply](t, st, backupv1.OpList, backupv1.ListRequest{}); len(l.Backups) != 3 {
		t.Fatalf("dry run deleted: %d left", len(l.Backups))
	}
	if _, err := call[backupv1.DeleteReply](t, st, backupv1.OpPrune, backupv1.PruneRequest{}); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("prune with no policy: %v", err)
	}
	del, err := call[backupv1.DeleteReply](t, st, backupv1.OpPrune, backupv1.PruneRequest{Instance: "db1", KeepLast: 1})
	if err != nil || len(del.Deleted) != 2 {
		t.Fatalf("prune: %+v %v", del, err)
	}
	var left int
	_ = st.store.ListAll(ctxT(t), catalog.Prefix, func(o storagev1.Object) error { left++; return nil })
	if left != 2 { // f2's manifest and data
		t.Fatalf("%d objects left after prune, want 2", left)
	}

	// Cascade delete of a chain.
	st.put(t, "i2", "f2", t0.Add(3*time.Hour), 50<<10)
	del, err = call[backupv1.DeleteReply](t, st, backupv1.OpDelete, backupv1.DeleteRequest{ID: "f2", Cascade: true})
	if err != nil || len(del.Deleted) != 2 || del.Deleted[0] != "i2" || del.Deleted[1] != "f2" {
		t.Fatalf("cascade: %+v %v", del, err)
	}
}

func TestVerifyFindsDamage(t *testing.T) {
	st := startStack(t)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	st.put(t, "f1", "", t0, 1<<20)
	st.put(t, "i1", "f1", t0.Add(time.Hour), 300<<10)

	j, err := call[jobs.Job](t, st, backupv1.OpVerify, backupv1.VerifyRequest{ID: "i1", Chain: true})
	if err != nil {
		t.Fatal(err)
	}
	j = waitJob(t, st, j)
	var res backupv1.VerifyResult
	if j.State != jobs.StateSucceeded || json.Unmarshal(j.Result, &res) != nil || len(res.Verified) != 2 || res.Frames < 2 {
		t.Fatalf("verify: %+v %s", j, j.Result)
	}

	// One byte flipped in f1's stored data (on the fs strategy's disk): the chain's verify fails as corrupt.
	// The fs strategy's layout (services/storage/internal/backend/fs.go): objects/d<dir>/.../f<name>.
	path := filepath.Join(st.root, "objects", "dbackups", "df1", "fdata")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("fs layout changed? %v", err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	j, err = call[jobs.Job](t, st, backupv1.OpVerify, backupv1.VerifyRequest{ID: "i1", Chain: true})
	if err != nil {
		t.Fatal(err)
	}
	j = waitJob(t, st, j)
	if j.State != jobs.StateFailed || j.Error == nil || j.Error.Code != errs.Corrupt {
		t.Fatalf("verify of a damaged chain: %s %+v", j.State, j.Error)
	}

	// The same damage written through the storage service (so its own checksum record agrees): the frames
	// and the manifest's recorded hashes still catch it.
	var stored bytes.Buffer
	if _, err := st.store.Get(ctxT(t), catalog.ArtifactKey("i1", "data"), 0, 0, &stored, nil); err != nil {
		t.Fatal(err)
	}
	raw := stored.Bytes()
	raw[len(raw)/3] ^= 0x01
	if _, err := st.store.Put(ctxT(t), catalog.ArtifactKey("i1", "data"), bytes.NewReader(raw), nil); err != nil {
		t.Fatal(err)
	}
	j, _ = call[jobs.Job](t, st, backupv1.OpVerify, backupv1.VerifyRequest{ID: "i1"})
	j = waitJob(t, st, j)
	if j.State != jobs.StateFailed || j.Error == nil || j.Error.Code != errs.Corrupt {
		t.Fatalf("verify of a re-stored damaged artifact: %s %+v", j.State, j.Error)
	}

	// A missing chain element is named.
	if err := st.cat.Remove(ctxT(t), "f1"); err != nil {
		t.Fatal(err)
	}
	j, _ = call[jobs.Job](t, st, backupv1.OpVerify, backupv1.VerifyRequest{ID: "i1", Chain: true})
	j = waitJob(t, st, j)
	if j.State != jobs.StateFailed || j.Error == nil || j.Error.Code != errs.NotFound {
		t.Fatalf("verify of a broken chain: %s %+v", j.State, j.Error)
	}
}
