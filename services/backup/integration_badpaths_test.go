//go:build integration

package backup_test

// Bad paths of backup and restore jobs on real guests, while bytes move: a job cancelled mid-backup and
// mid-restore, frames swapped or dropped in a stored artifact, the storage service restarted mid-backup,
// the source guest killed mid-backup, and the target killed mid-restore. Each must end in a coded error (or, for the storage restart, a
// COMPLETED backup whose upload resumed) with nothing half-done left behind and the target untouched.
//
// One kit and one stack for all of it (subtests in order, sharing guests where that keeps them apart):
// redis guests (redis-rdb is the quickest strategy), a source holding ~64 MiB of incompressible values,
// and jobs slowed with their bandwidth limit so each one is still moving bytes when the test acts.
//
//	go tool task image:guest
//	cd services/backup && go test -tags integration -run IntegrationBadPaths -v .

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"troveng.dev/services/storage"
	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/engines/redis"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/testkit"
)

const (
	// bpBlobs values of 1 MiB from /dev/urandom: the RDB is ~64 MiB and does not compress.
	bpBlobs = 64
	// bpLimit slows a job's transfer to or from storage to ~8 s for the dataset.
	bpLimit = 8 << 20
)

// bpStack is the storage (fs), backup and restore services on a kit's NATS, with the storage service
// restartable on the same directory.
type bpStack struct {
	*pgrStack
	root     string
	storeCfg storage.Config
	storage  *storage.Service
	store    *storageclient.Client
	cat      *catalog.Catalog
}

func startBadPathStack(t *testing.T) (*bpStack, []*testkit.Guest) {
	t.Helper()
	k := testkit.Start(t, testkit.Options{Engine: guestv1.EngineRedis, Guests: 2, Prefix: "bad"})
	st := &bpStack{pgrStack: &pgrStack{kit: k}, root: t.TempDir()}
	st.storeCfg = storage.Config{Strategy: "fs", Options: map[string]string{"root": st.root}}
	st.startStorage(t)
	t.Cleanup(func() {
		if st.storage != nil {
			_ = st.storage.Stop()
		}
	})
	startBackupRestore(t, k.Conn(), false)
	st.store = storageclient.New(k.Conn(), stream.Options{})
	st.cat = catalog.New(st.store)
	return st, k.Guests()
}

func (st *bpStack) startStorage(t *testing.T) {
	t.Helper()
	ss, err := storage.Start(context.Background(), st.kit.Conn(), nil, st.storeCfg)
	if err != nil {
		t.Fatal(err)
	}
	st.storage = ss
}

func (st *bpStack) stopStorage(t *testing.T) {
	t.Helper()
	if err := st.storage.Stop(); err != nil {
		t.Logf("storage stop: %v", err)
	}
	st.storage = nil
}

// submit starts a job without waiting for it.
func (st *pgrStack) submit(t *testing.T, group, op string, req any) jobs.Job {
	t.Helper()
	var j jobs.Job
	if err := rpc.Call(t.Context(), st.kit.Conn(), backupv1.Subject(group, op), req, &j); err != nil {
		t.Fatalf("%s.%s: %v", group, op, err)
	}
	return j
}

func (st *pgrStack) status(t *testing.T, group, id string) jobs.Job {
	t.Helper()
	var j jobs.Job
	if err := rpc.Call(t.Context(), st.kit.Conn(), backupv1.Subject(group, backupv1.OpJobStatus), backupv1.IDRequest{ID: id}, &j); err != nil {
		t.Fatalf("job %s: %v", id, err)
	}
	return j
}

// cancel asks for a job's cancellation through the job machinery.
func (st *pgrStack) cancel(t *testing.T, group, id string) {
	t.Helper()
	var c jobs.Job
	if err := rpc.Call(t.Context(), st.kit.Conn(), backupv1.Subject(group, backupv1.OpJobCancel), backupv1.IDRequest{ID: id}, &c); err != nil {
		t.Fatalf("cancel %s: %v", id, err)
	}
}

// waitExtracting waits until a restore job's extract on g has written more than kib KiB into its staging
// dir beside the data dir (the agent's all-or-nothing extract: .<dir>.extract-<id>).
func (st *pgrStack) waitExtracting(t *testing.T, g *testkit.Guest, id string, kib int) {
	t.Helper()
	st.waitStaging(t, g, id, "/var/lib/trove/.*.extract-*", kib)
}

// waitStaging waits until a directory matching glob on g holds more than kib KiB (a restore's staging).
func (st *pgrStack) waitStaging(t *testing.T, g *testkit.Guest, id, glob string, kib int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out := pgrShell(t, g, `for d in `+glob+`; do [ -d "$d" ] && du -sk "$d"; done; true`)
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var n int
			if _, err := fmt.Sscan(l, &n); err == nil && n > kib {
				return
			}
		}
		if j := st.status(t, backupv1.RestoreGroup, id); j.State.Final() || time.Now().After(deadline) {
			t.Fatalf("restore %s never got to its download: %s %v", id, j.State, j.Error)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFinal follows a job to its final state, failing the test if that takes longer than within.
func (st *pgrStack) waitFinal(t *testing.T, group, id string, within time.Duration) jobs.Job {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		j := st.status(t, group, id)
		if j.State.Final() {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s still %s after %s (attempts %d, progress %+v, error %v)", id, j.State, within, j.Attempts, j.Progress, j.Error)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// midUpload waits until a backup job reports raw bytes of its artifact moving to storage and a partial
// object is being written in the fs strategy's tmp/ (the bandwidth limit keeps it there for seconds).
func (st *bpStack) midUpload(t *testing.T, id string) jobs.Job {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		j := st.status(t, backupv1.BackupGroup, id)
		if j.State.Final() {
			t.Fatalf("backup %s ended (%s %v) before the test could act mid-upload", id, j.State, j.Error)
		}
		if j.Progress.Stage == redis.RDBArtifact && j.Progress.Done > 0 && st.partialPuts(t) > 0 {
			t.Logf("backup %s mid-upload: %d raw bytes sent, %d partial object(s) in storage", id, j.Progress.Done, st.partialPuts(t))
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup %s never got to its upload: %s %+v", id, j.State, j.Progress)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// partialPuts counts the fs strategy's puts in progress (tmp/*.part; services/storage/internal/backend/fs.go).
func (st *bpStack) partialPuts(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(st.root, "tmp"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(es)
}

// waitNoPartialPuts waits for storage to drop the temporary file of an abandoned put.
func (st *bpStack) waitNoPartialPuts(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for st.partialPuts(t) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d partial put(s) still in the storage's tmp/ after %s", st.partialPuts(t), within)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// objects lists the stored keys under a backup's prefix.
func (st *bpStack) objects(t *testing.T, id string) []string {
	t.Helper()
	var keys []string
	if err := st.store.ListAll(t.Context(), catalog.Prefix+id+"/", func(o storagev1.Object) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

// notCompleted checks the catalog neither shows nor lists backup id as COMPLETED.
func (st *bpStack) notCompleted(t *testing.T, instance, id string) {
	t.Helper()
	var l backupv1.ListReply
	if err := rpc.Call(t.Context(), st.kit.Conn(), backupv1.Subject(backupv1.BackupGroup, backupv1.OpList), backupv1.ListRequest{Instance: instance}, &l); err != nil {
		t.Fatal(err)
	}
	for _, m := range l.Backups {
		if m.ID == id && m.State == catalog.StateCompleted {
			t.Errorf("the catalog lists %s as COMPLETED", id)
		}
	}
}

// redisUp checks a guest's Redis answers and its registration is healthy; it returns the server's run_id
// (which changes when the server restarts).
func redisUp(t *testing.T, g *testkit.Guest) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := g.WaitFor(ctx, "healthy", func(r guestv1.Registration, err error) bool { return err == nil && r.Status.Healthy }); err != nil {
		t.Fatalf("%s is not healthy: %v", g.Instance, err)
	}
	info := redis.ParseInfo(pgrShell(t, g, `redis-cli INFO server`))
	if info["run_id"] == "" {
		t.Fatalf("%s: Redis gave no run_id", g.Instance)
	}
	return info["run_id"]
}

// noScratch checks nothing of a backup's or restore's staging is left in a guest's data root.
func noScratch(t *testing.T, g *testkit.Guest) {
	t.Helper()
	if out := pgrShell(t, g, `ls -A /var/lib/trove`); strings.Contains(out, ".trove-") || strings.Contains(out, ".extract-") {
		t.Errorf("staging left on %s: %s", g.Instance, out)
	}
}

// untouched checks dst still holds exactly its own dataset (the marker, none of the source's keys).
func untouched(t *testing.T, dst *testkit.Guest, want []redisKey) {
	t.Helper()
	got := redisKeys(t, dst, 0)
	if len(got) != len(want) {
		t.Fatalf("the target holds %d keys, had %d", len(got), len(want))
	}
	sameRedis(t, want, got, time.Minute)
	noScratch(t, dst)
}

// bpFrames locates the frame records of a framed artifact (docs/frame-format.md): the header is
// 16 + L + 32 bytes (+16 when sealed), each record 24 + S + 32 bytes, the last one flagged final.
func bpFrames(t *testing.T, art []byte) (records [][2]int) {
	t.Helper()
	if len(art) < 16 || string(art[:8]) != "TRVFRAME" {
		t.Fatalf("not a framed artifact")
	}
	off := 16 + int(art[11]) + 32
	if art[10]&1 != 0 {
		off += 16
	}
	for {
		if off+24 > len(art) || string(art[off:off+4]) != "TVFR" {
			t.Fatalf("no frame record at %d", off)
		}
		end := off + 24 + int(binary.BigEndian.Uint32(art[off+16:])) + 32
		records = append(records, [2]int{off, end})
		if art[off+20]&1 != 0 {
			return records
		}
		off = end
	}
}

// swapFrames exchanges frame records i and j (i < j) whole, digests included.
func swapFrames(art []byte, rs [][2]int, i, j int) []byte {
	var b bytes.Buffer
	b.Write(art[:rs[i][0]])
	b.Write(art[rs[j][0]:rs[j][1]])
	b.Write(art[rs[i][1]:rs[j][0]])
	b.Write(art[rs[i][0]:rs[i][1]])
	b.Write(art[rs[j][1]:])
	return b.Bytes()
}

// dropFrame removes frame record i.
func dropFrame(art []byte, rs [][2]int, i int) []byte {
	return append(bytes.Clone(art[:rs[i][0]]), art[rs[i][1]:]...)
}

func TestIntegrationBadPaths(t *testing.T) {
	st, gs := startBadPathStack(t)
	src, dst := gs[0], gs[1]
	start := time.Now()
	pgrShell(t, src, `for i in $(seq 1 "$1"); do head -c 1048576 /dev/urandom | redis-cli -x SET "blob:$i" >/dev/null; done
redis-cli SET small "hello" >/dev/null`, fmt.Sprint(bpBlobs))
	srcKeys := redisKeys(t, src, 0)
	pgrShell(t, dst, `redis-cli SET marker "the target's own" >/dev/null`)
	dstKeys := redisKeys(t, dst, 0)
	t.Logf("%d keys loaded into %s in %s", len(srcKeys), src.Instance, time.Since(start).Round(time.Millisecond))

	good := st.backupOK(t, backupv1.CreateRequest{Instance: src.Instance})

	t.Run("backup cancelled mid-upload", func(t *testing.T) {
		srcRun := redisUp(t, src)
		j := st.submit(t, backupv1.BackupGroup, backupv1.OpCreate, backupv1.CreateRequest{Instance: src.Instance, BandwidthLimit: bpLimit})
		st.midUpload(t, j.ID)
		asked := time.Now()
		st.cancel(t, backupv1.BackupGroup, j.ID)
		j = st.waitFinal(t, backupv1.BackupGroup, j.ID, 30*time.Second)
		t.Logf("cancelled in %s: %s %v", time.Since(asked).Round(time.Millisecond), j.State, j.Error)
		if j.State != jobs.StateCancelled || pgrJobCode(j) != errs.Cancelled {
			t.Fatalf("want cancelled with code cancelled; got %s %v", j.State, j.Error)
		}
		st.notCompleted(t, src.Instance, j.ID)
		if keys := st.objects(t, j.ID); len(keys) != 0 {
			t.Errorf("a cancelled backup left objects: %v", keys)
		}
		st.waitNoPartialPuts(t, 10*time.Second)
		if run := redisUp(t, src); run != srcRun {
			t.Errorf("the source's Redis restarted (run_id %s, was %s)", run, srcRun)
		}
		noScratch(t, src)
		if out := pgrShell(t, src, `ps -eo comm | grep -cx tar || true`); strings.TrimSpace(out) != "0" {
			t.Errorf("the backup's tar still runs on the source")
		}
	})

	t.Run("restore cancelled mid-download", func(t *testing.T) {
		j := st.submit(t, backupv1.RestoreGroup, backupv1.OpRestore, backupv1.RestoreRequest{Backup: good.ID, Instance: dst.Instance, BandwidthLimit: bpLimit})
		// Mid-flight: the agent's extract is writing dump.rdb into its staging dir beside the data dir.
		st.waitExtracting(t, dst, j.ID, 1024)
		asked := time.Now()
		st.cancel(t, backupv1.RestoreGroup, j.ID)
		j = st.waitFinal(t, backupv1.RestoreGroup, j.ID, 30*time.Second)
		t.Logf("cancelled in %s: %s %v", time.Since(asked).Round(time.Millisecond), j.State, j.Error)
		if j.State != jobs.StateCancelled || pgrJobCode(j) != errs.Cancelled {
			t.Fatalf("want cancelled with code cancelled; got %s %v", j.State, j.Error)
		}
		// The extract is all or nothing: the data dir is the target's own, and Redis runs on it again.
		redisUp(t, dst)
		untouched(t, dst, dstKeys)
	})

	// Frames swapped or dropped in the stored artifact, written through the storage service (so its own
	// checksum record agrees with the damaged bytes): verify reports corrupt, and a restore is refused
	// before the target is touched (its Redis is not even restarted). Then the same damage with the
	// manifest rewritten to match (an intruder with write access to storage but no data key): the
	// restore's own checks pass, the agent's frame reader refuses the artifact, and the target keeps its
	// data.
	t.Run("frames swapped or dropped in storage", func(t *testing.T) {
		a, ok := good.Artifact(redis.RDBArtifact)
		if !ok {
			t.Fatalf("no %s artifact in %+v", redis.RDBArtifact, good.Artifacts)
		}
		obj, err := st.store.Stat(t.Context(), a.Key)
		if err != nil {
			t.Fatal(err)
		}
		var orig bytes.Buffer
		if _, err := st.store.Get(t.Context(), a.Key, 0, 0, &orig, nil); err != nil {
			t.Fatal(err)
		}
		rs := bpFrames(t, orig.Bytes())
		if len(rs) < 4 || len(rs) != a.Frames {
			t.Fatalf("%d frame records found, manifest says %d; need at least 4", len(rs), a.Frames)
		}
		manifest, err := st.cat.Load(t.Context(), good.ID)
		if err != nil {
			t.Fatal(err)
		}
		put := func(b []byte) storagev1.Object {
			t.Helper()
			o, err := st.store.Put(t.Context(), a.Key, bytes.NewReader(b), obj.Metadata)
			if err != nil {
				t.Fatal(err)
			}
			return o
		}
		defer func() {
			put(orig.Bytes())
			if err := st.cat.Save(context.Background(), manifest); err != nil {
				t.Error(err)
			}
		}()
		for _, c := range []struct {
			name string
			art  []byte
		}{
			{"swapped", swapFrames(orig.Bytes(), rs, 1, 2)},
			{"dropped", dropFrame(orig.Bytes(), rs, 2)},
		} {
			t.Run(c.name, func(t *testing.T) {
				put(c.art)
				if err := st.cat.Save(t.Context(), manifest); err != nil {
					t.Fatal(err)
				}
				v := st.run(t, backupv1.BackupGroup, backupv1.OpVerify, backupv1.VerifyRequest{ID: good.ID})
				if v.State != jobs.StateFailed || pgrJobCode(v) != errs.Corrupt {
					t.Fatalf("verify: want failed, corrupt; got %s %v", v.State, v.Error)
				}
				t.Logf("verify: %v", v.Error)
				run := redisUp(t, dst)
				r := st.restoreJob(t, good.ID, dst.Instance, backupv1.ModeNew)
				if r.State != jobs.StateFailed || pgrJobCode(r) != errs.Corrupt {
					t.Fatalf("restore: want failed, corrupt; got %s %v", r.State, r.Error)
				}
				t.Logf("restore: %v", r.Error)
				if now := redisUp(t, dst); now != run {
					t.Errorf("the target's Redis was restarted by a refused restore")
				}
				untouched(t, dst, dstKeys)

				// The manifest rewritten to match the damaged object: only the frames can tell now.
				forged := *manifest
				forged.Artifacts = append([]catalog.Artifact(nil), manifest.Artifacts...)
				o, err := st.store.Stat(t.Context(), a.Key)
				if err != nil {
					t.Fatal(err)
				}
				for i := range forged.Artifacts {
					if forged.Artifacts[i].Name == a.Name {
						forged.Artifacts[i].Size, forged.Artifacts[i].SHA256 = o.Size, o.SHA256
					}
				}
				if err := st.cat.Save(t.Context(), &forged); err != nil {
					t.Fatal(err)
				}
				v = st.run(t, backupv1.BackupGroup, backupv1.OpVerify, backupv1.VerifyRequest{ID: good.ID})
				if v.State != jobs.StateFailed || pgrJobCode(v) != errs.Corrupt {
					t.Fatalf("verify with a forged manifest: want failed, corrupt; got %s %v", v.State, v.Error)
				}
				r = st.restoreJob(t, good.ID, dst.Instance, backupv1.ModeNew)
				if r.State != jobs.StateFailed || pgrJobCode(r) != errs.Corrupt {
					t.Fatalf("restore with a forged manifest: want failed, corrupt; got %s %v", r.State, r.Error)
				}
				t.Logf("restore with a forged manifest: %v", r.Error)
				redisUp(t, dst)
				untouched(t, dst, dstKeys)
			})
		}
	})

	t.Run("storage restarted mid-backup", func(t *testing.T) {
		j := st.submit(t, backupv1.BackupGroup, backupv1.OpCreate, backupv1.CreateRequest{Instance: src.Instance, BandwidthLimit: bpLimit})
		st.midUpload(t, j.ID)
		st.stopStorage(t)
		stopped := time.Now()
		time.Sleep(3 * time.Second)
		st.startStorage(t)
		t.Logf("storage was down for %s", time.Since(stopped).Round(time.Millisecond))
		j = st.waitFinal(t, backupv1.BackupGroup, j.ID, 2*time.Minute)
		t.Logf("backup %s: %s after %d attempts, last error %v", j.ID, j.State, j.Attempts, j.Error)
		if j.State != jobs.StateSucceeded {
			t.Fatalf("want the backup COMPLETED after the storage came back; got %s %v", j.State, j.Error)
		}
		// The upload resumed inside the one attempt (the agent kept the segment storage had not
		// acknowledged and sent it again), instead of the job starting the backup over.
		if j.Attempts != 1 {
			t.Errorf("the backup took %d attempts; a resumed upload needs one", j.Attempts)
		}
		m, err := st.cat.Load(t.Context(), j.ID)
		if err != nil || m.State != catalog.StateCompleted {
			t.Fatalf("manifest %v %v", m, err)
		}
		if len(m.Artifacts) != 1 || m.Artifacts[0].Resumes < 1 {
			t.Errorf("want the artifact's upload resumed at least once; manifest artifacts %+v", m.Artifacts)
		} else {
			t.Logf("the upload resumed %d time(s)", m.Artifacts[0].Resumes)
		}
		keys := st.objects(t, j.ID)
		want := []string{catalog.ArtifactKey(j.ID, redis.RDBArtifact), catalog.ManifestKey(j.ID)}
		slices.Sort(keys)
		slices.Sort(want)
		if !slices.Equal(keys, want) {
			t.Errorf("objects under the backup: %v, want %v", keys, want)
		}
		st.waitNoPartialPuts(t, 40*time.Second)
		noScratch(t, src)
		st.restoreOK(t, j.ID, dst.Instance, backupv1.ModeNew)
		sameRedis(t, srcKeys, redisKeys(t, dst, 0), time.Minute)
	})

	// Last: it kills the source.
	t.Run("guest killed mid-backup", func(t *testing.T) {
		j := st.submit(t, backupv1.BackupGroup, backupv1.OpCreate, backupv1.CreateRequest{Instance: src.Instance, BandwidthLimit: bpLimit})
		st.midUpload(t, j.ID)
		if err := src.Kill(t.Context()); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		j = st.waitFinal(t, backupv1.BackupGroup, j.ID, 60*time.Second)
		t.Logf("backup %s: %s %s after the kill, %d attempts: %v", j.ID, j.State, time.Since(killed).Round(time.Millisecond), j.Attempts, j.Error)
		if j.State != jobs.StateFailed || pgrJobCode(j) != errs.Unavailable {
			t.Fatalf("want failed with code unavailable; got %s %v", j.State, j.Error)
		}
		st.notCompleted(t, src.Instance, j.ID)
		// Each attempt removes the one before's leftovers; the last one, refused before it wrote a manifest
		// (the guest's registration went stale), leaves none. An attempt that failed later leaves a FAILED
		// manifest with its error and no data.
		keys := st.objects(t, j.ID)
		for _, k := range keys {
			if k != catalog.ManifestKey(j.ID) {
				t.Errorf("the failed backup left %s", k)
			}
		}
		if m, err := st.cat.Load(t.Context(), j.ID); err == nil {
			if m.State != catalog.StateFailed || m.Error == nil || len(m.Artifacts) != 0 {
				t.Errorf("want a FAILED manifest with its error and no artifacts; got %+v", m)
			}
		} else if !errs.Is(err, errs.NotFound) {
			t.Error(err)
		}
		// The agent died with its upload open: the backup's cleanup purges its staged upload (a plain put's
		// partial object would go at the stream's idle timeout).
		st.waitNoPartialPuts(t, stream.DefaultIdleTimeout+15*time.Second)
	})

	// After the source: it kills the target. The restore fails unavailable (its worker does not hang on a
	// dead guest), and the backup it read is untouched: still COMPLETED and verifying.
	t.Run("target guest killed mid-restore", func(t *testing.T) {
		j := st.submit(t, backupv1.RestoreGroup, backupv1.OpRestore, backupv1.RestoreRequest{Backup: good.ID, Instance: dst.Instance, BandwidthLimit: bpLimit})
		st.waitExtracting(t, dst, j.ID, 1024)
		if err := dst.Kill(t.Context()); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		j = st.waitFinal(t, backupv1.RestoreGroup, j.ID, 90*time.Second)
		t.Logf("restore %s: %s %s after the kill, %d attempts: %v", j.ID, j.State, time.Since(killed).Round(time.Millisecond), j.Attempts, j.Error)
		if j.State != jobs.StateFailed || pgrJobCode(j) != errs.Unavailable {
			t.Fatalf("want failed with code unavailable; got %s %v", j.State, j.Error)
		}
		m, err := st.cat.Load(t.Context(), good.ID)
		if err != nil || m.State != catalog.StateCompleted {
			t.Fatalf("the backup after a failed restore: %+v %v", m, err)
		}
		v := st.run(t, backupv1.BackupGroup, backupv1.OpVerify, backupv1.VerifyRequest{ID: good.ID})
		if v.State != jobs.StateSucceeded {
			t.Fatalf("verify of the backup after a failed restore: %s %v", v.State, v.Error)
		}
	})
}
