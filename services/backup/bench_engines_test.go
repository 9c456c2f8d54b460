//go:build integration

package backup_test

// Engine benchmarks of issue 4 (scripts/bench-engines.sh, `go tool task bench:engines`; not in CI).
//
// Two guests of the bench image (localhost/trove-guest-bench:dev: the guest image plus age, openssl and
// pgBackRest for the baselines) on the test kit's NATS, versitygw from the kit, and the storage (s3
// strategy), backup and restore services as their own processes (the binaries in bin/, built by the
// script), so that each one's peak RSS (VmHWM) can be read from /proc. For each dataset size (default
// 1 GiB, then 2 GiB, grown in place on the source guest by a generator run with the engine's bulk path) the
// guests are restarted (fresh agents) and the services too; then a full physical backup of the source
// through the services and its restore into the other guest, timed by wall clock from the request to the
// job's end, and the peak RSS of every service and of both agents. At the largest size, the baselines run on
// the source guest with `podman exec` (outside the agent, on the same data):
//
//	MariaDB:    (a) mariadb-backup --stream | zstd -1 -T0 | age -r KEY > file, back with
//	                age -d | zstd -d | mbstream -x and mariadb-backup --prepare;
//	            (b) Trove's: mariadb-backup --stream | gzip | openssl enc -aes-256-cbc -pbkdf2, back with
//	                openssl enc -d | gzip -d | mbstream -x and --prepare.
//	PostgreSQL: pgBackRest (zstd level 1, process-max 2, repo on the guest's disk): backup --type=full, and
//	            restore into an empty directory.
//
//	TROVE_BENCH_SIZES=256MiB,512MiB  dataset sizes (default 1GiB,2GiB); the baselines run at the last one
//	TROVE_BENCH_BASELINES=0          skip the baselines
//	TROVE_BENCH_BIN=DIR              where storage, backup and restore are (default <repo>/bin)
//	TROVE_BENCH_IMAGE=IMAGE          the guest image (default localhost/trove-guest-bench:dev)

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/benchdata"
	"troveng.dev/shared/bytesize"
	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/datakey"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/testkit"
)

const engBenchImage = "localhost/trove-guest-bench:dev"

func BenchmarkEnginesMariaDB(b *testing.B) {
	e := startEngBench(b, guestv1.EngineMariaDB, "mariabackup")
	e.run(engMariaDB{})
}

func BenchmarkEnginesPostgreSQL(b *testing.B) {
	e := startEngBench(b, guestv1.EnginePostgreSQL, "pg_basebackup")
	e.run(engPostgreSQL{})
}

// engine is what differs per engine: the generator, a content digest and the baselines.
type engine interface {
	// grow loads generated tables into the guest until its data is at least size bytes; returns the size.
	grow(e *engBench, g *testkit.Guest, size int64) int64
	// digest is a comparable summary of the generated tables' content.
	digest(e *engBench, g *testkit.Guest) string
	// baselines runs the engine's baselines on g and returns their timings.
	baselines(e *engBench, g *testkit.Guest) []engTiming
}

type engBench struct {
	b                   *testing.B
	ctx                 context.Context
	kit                 *testkit.Kit
	nc                  *nats.Conn
	engine, strategy    string
	src, dst            *testkit.Guest
	bin, dir            string
	identity, recipient string
	procs               map[string]*engProc
	sizes               []int64
	results             []engSizeResult
	baseline            []engTiming
	raw                 int64 // the last size's raw backup bytes (the common denominator of MB/s)
}

// engTiming is one pipeline's one direction.
type engTiming struct {
	name, dir string // dir: backup or restore
	wall      time.Duration
	cpu       float64 // CPU seconds of the pipeline's processes (bash time), 0 if unknown
	stored    int64
	note      string
}

type engSizeResult struct {
	size, dataBytes, raw, stored int64
	gen, backup, restore         time.Duration
	backupStages                 map[string]int64
	hwm                          map[string]int64 // storage, backup, restore, agent-src, agent-dst
	cpu                          map[string]float64
	identical                    bool
}

func startEngBench(b *testing.B, engineName, strategy string) *engBench {
	if b.N > 1 {
		b.Skip("run with -benchtime 1x")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Minute)
	b.Cleanup(cancel)
	image := os.Getenv("TROVE_BENCH_IMAGE")
	if image == "" {
		image = engBenchImage
	}
	sizes := []int64{1 << 30, 2 << 30}
	if v := os.Getenv("TROVE_BENCH_SIZES"); v != "" {
		sizes = nil
		for _, s := range strings.Split(v, ",") {
			n, err := bytesize.Parse(s)
			if err != nil {
				b.Fatal(err)
			}
			sizes = append(sizes, n)
		}
	}
	bin := os.Getenv("TROVE_BENCH_BIN")
	if bin == "" {
		root, err := testkit.RepoRoot()
		if err != nil {
			b.Fatal(err)
		}
		bin = filepath.Join(root, "bin")
	}
	for _, name := range []string{"storage", "backup", "restore"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			b.Fatalf("%s: build the services first (scripts/bench-engines.sh does): %v", name, err)
		}
	}
	k := testkit.Start(b, testkit.Options{Engine: engineName, Guests: 2, Image: image, S3: true, Prefix: "bench", ReadyTimeout: 5 * time.Minute})
	identity, recipient, err := datakey.Generate()
	if err != nil {
		b.Fatal(err)
	}
	e := &engBench{b: b, ctx: ctx, kit: k, nc: k.Conn(), engine: engineName, strategy: strategy,
		src: k.Guests()[0], dst: k.Guests()[1], bin: bin, dir: b.TempDir(),
		identity: identity, recipient: recipient, procs: map[string]*engProc{}, sizes: sizes}
	b.Cleanup(e.stopServices)
	return e
}

func (e *engBench) run(eng engine) {
	b := e.b
	b.Logf("machine: %d cores, load average %s", engNproc(), engLoadavg())
	for _, size := range e.sizes {
		r := engSizeResult{size: size, hwm: map[string]int64{}, cpu: map[string]float64{}}
		t0 := time.Now()
		r.dataBytes = eng.grow(e, e.src, size)
		r.gen = time.Since(t0)
		b.Logf("%s: generated %s of data on %s in %s", engSizeName(size), engMB(r.dataBytes), e.src.Instance, r.gen.Round(time.Second))
		// Fresh agents and services for every size, so each peak RSS is this size's alone.
		e.restartGuests()
		e.startServices()
		srcPID, dstPID := e.agentPID(e.src), e.agentPID(e.dst)
		cpu0 := e.cpuSnapshot(srcPID, dstPID)

		t0 = time.Now()
		m := e.backupThroughServices()
		r.backup = time.Since(t0)
		r.raw, r.stored, r.backupStages = m.RawSize, m.StoredSize, m.Stages
		cpu1 := e.cpuSnapshot(srcPID, dstPID)
		t0 = time.Now()
		e.restoreThroughServices(m.ID)
		r.restore = time.Since(t0)
		cpu2 := e.cpuSnapshot(srcPID, dstPID)
		for k, v := range cpu1 {
			r.cpu["backup "+k] = v - cpu0[k]
			r.cpu["restore "+k] = cpu2[k] - v
		}
		for name, p := range e.procs {
			r.hwm[name] = p.status("VmHWM")
		}
		r.hwm["agent (source)"] = e.agentHWM(e.src, srcPID)
		r.hwm["agent (target)"] = e.agentHWM(e.dst, dstPID)
		b.Logf("%s: services backup %s raw %s stored in %s (%.0f MB/s; stages ms %v); restore in %s (%.0f MB/s); peak RSS %v; CPU s %v",
			engSizeName(size), engMB(r.raw), engMB(r.stored), r.backup.Round(time.Millisecond), engRate(r.raw, r.backup), r.backupStages,
			r.restore.Round(time.Millisecond), engRate(r.raw, r.restore), engMiBMap(r.hwm), engRound(r.cpu))
		ds, dd := eng.digest(e, e.src), eng.digest(e, e.dst)
		r.identical = ds == dd
		if !r.identical {
			b.Errorf("%s: restored content differs:\nsource %s\ntarget %s", engSizeName(size), ds, dd)
		}
		e.deleteBackup(m.ID)
		e.results = append(e.results, r)
		e.raw = r.raw
	}
	e.stopServices()
	if os.Getenv("TROVE_BENCH_BASELINES") != "0" {
		e.baseline = eng.baselines(e, e.src)
	}
	e.report()
}

// ---- services ----

// engProc is a service process whose memory and CPU come from /proc.
type engProc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func (e *engBench) startProc(name string, args, env []string) *engProc {
	logPath := filepath.Join(e.dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		e.b.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(e.bin, name), append([]string{"-nats-url", e.kit.NATSURL(), "-admin-addr="}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		e.b.Fatalf("start %s: %v", name, err)
	}
	p := &engProc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = f.Close(); close(p.done) }()
	return p
}

func (p *engProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// status is a field of /proc/<pid>/status in bytes (the kB fields).
func (p *engProc) status(field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	return engStatusField(string(b), field)
}

// cpu is the process's user+system CPU time, s.
func (p *engProc) cpu() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	return engStatCPU(string(b))
}

func engStatusField(status, field string) int64 {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return -1
}

// engStatCPU sums utime, stime, cutime and cstime (fields 14-17) of a /proc/<pid>/stat line, s.
func engStatCPU(stat string) float64 {
	f := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	var ticks float64
	for _, v := range f[11:15] {
		n, _ := strconv.ParseFloat(v, 64)
		ticks += n
	}
	return ticks / 100
}

func (e *engBench) startServices() {
	e.stopServices()
	s3 := e.kit.S3()
	e.procs["storage"] = e.startProc("storage",
		[]string{"-strategy", "s3", "-opt", "endpoint=" + s3.Endpoint(), "-opt", "bucket=" + s3.Bucket(), "-opt", "region=" + s3.Region()},
		[]string{"TROVE_STORAGE_OPT_ACCESS_KEY=" + s3.AccessKey(), "TROVE_STORAGE_OPT_SECRET_KEY=" + s3.SecretKey()})
	e.procs["backup"] = e.startProc("backup", nil, []string{"TROVE_BACKUP_RECIPIENTS=" + e.recipient})
	idFile := filepath.Join(e.dir, "restore.age")
	if err := os.WriteFile(idFile, []byte(e.identity+"\n"), 0o600); err != nil {
		e.b.Fatal(err)
	}
	e.procs["restore"] = e.startProc("restore", []string{"-identity-file", idFile}, nil)
	// Ready: the backup service answers a list (which reads the storage service), the restore service a
	// job list.
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
		var list json.RawMessage
		err := rpc.Call(ctx, e.nc, backupv1.Subject(backupv1.BackupGroup, backupv1.OpList), backupv1.ListRequest{}, &list)
		if err == nil {
			err = rpc.Call(ctx, e.nc, backupv1.Subject(backupv1.RestoreGroup, backupv1.OpJobList), struct{}{}, &list)
		}
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range e.procs {
				b, _ := os.ReadFile(p.log)
				e.b.Logf("%s log:\n%s", p.name, b)
			}
			e.b.Fatalf("services not ready: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *engBench) stopServices() {
	var wg sync.WaitGroup
	for name, p := range e.procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop() }()
		delete(e.procs, name)
	}
	wg.Wait()
}

// job submits a job and follows it to its end (polling every 100 ms).
func (e *engBench) job(group, op string, req any) jobs.Job {
	e.b.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 40*time.Minute)
	defer cancel()
	var j jobs.Job
	if err := rpc.Call(ctx, e.nc, backupv1.Subject(group, op), req, &j); err != nil {
		e.b.Fatalf("%s.%s: %v", group, op, err)
	}
	for !j.State.Final() {
		time.Sleep(100 * time.Millisecond)
		if err := rpc.Call(ctx, e.nc, backupv1.Subject(group, backupv1.OpJobStatus), backupv1.IDRequest{ID: j.ID}, &j); err != nil {
			e.b.Fatalf("job %s: %v", j.ID, err)
		}
	}
	if j.State != jobs.StateSucceeded {
		e.b.Fatalf("%s.%s: %s: %v", group, op, j.State, j.Error)
	}
	return j
}

func (e *engBench) backupThroughServices() catalog.Manifest {
	j := e.job(backupv1.BackupGroup, backupv1.OpCreate, backupv1.CreateRequest{Instance: e.src.Instance, Strategy: e.strategy})
	var res backupv1.BackupResult
	if err := json.Unmarshal(j.Result, &res); err != nil {
		e.b.Fatal(err)
	}
	return res.Backup
}

func (e *engBench) restoreThroughServices(id string) backupv1.RestoreResult {
	j := e.job(backupv1.RestoreGroup, backupv1.OpRestore, backupv1.RestoreRequest{Backup: id, Instance: e.dst.Instance, Mode: "new"})
	var res backupv1.RestoreResult
	if err := json.Unmarshal(j.Result, &res); err != nil {
		e.b.Fatal(err)
	}
	return res
}

func (e *engBench) deleteBackup(id string) {
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	if err := rpc.Call(ctx, e.nc, backupv1.Subject(backupv1.BackupGroup, backupv1.OpDelete), backupv1.DeleteRequest{ID: id}, nil); err != nil {
		e.b.Fatalf("delete %s: %v", id, err)
	}
}

// ---- guests ----

func (e *engBench) restartGuests() {
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	for _, g := range []*testkit.Guest{e.src, e.dst} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.Stop(e.ctx, 2*time.Minute); err != nil {
				errc <- err
				return
			}
			if _, err := g.Restart(e.ctx); err != nil {
				errc <- err
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		e.b.Fatal(err)
	}
}

func (e *engBench) agentPID(g *testkit.Guest) int {
	pid, err := g.AgentPID(e.ctx)
	if err != nil {
		e.b.Fatal(err)
	}
	return pid
}

func (e *engBench) agentHWM(g *testkit.Guest, pid int) int64 {
	n, err := g.ProcStatus(e.ctx, pid, "VmHWM")
	if err != nil {
		e.b.Fatal(err)
	}
	return n
}

// cpuSnapshot: CPU seconds so far of the services, versitygw, the agents (with their reaped children: the
// tools) and this process (the embedded NATS server, the harness's polling).
func (e *engBench) cpuSnapshot(srcPID, dstPID int) map[string]float64 {
	m := map[string]float64{"test process (NATS)": engSelfCPU()}
	for name, p := range e.procs {
		m[name] = p.cpu()
	}
	if pid := engChildPID("versitygw"); pid > 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			m["versitygw"] = engStatCPU(string(b))
		}
	}
	for name, gp := range map[string]struct {
		g   *testkit.Guest
		pid int
	}{"agent+tools (source)": {e.src, srcPID}, "agent+tools (target)": {e.dst, dstPID}} {
		out, err := gp.g.Output(e.ctx, "cat", fmt.Sprintf("/proc/%d/stat", gp.pid))
		if err != nil {
			e.b.Fatal(err)
		}
		m[name] = engStatCPU(out)
	}
	return m
}

// sh runs a bash script in the guest (the harness: podman exec, outside the agent) and returns stdout.
func (e *engBench) sh(g *testkit.Guest, script string, args ...string) string {
	e.b.Helper()
	out, err := e.shErr(g, script, args...)
	if err != nil {
		e.b.Fatal(err)
	}
	return out
}

// shErr is sh for goroutines (which must not call Fatal).
func (e *engBench) shErr(g *testkit.Guest, script string, args ...string) (string, error) {
	r, err := g.Exec(e.ctx, append([]string{"bash", "-c", "set -euo pipefail\n" + script, "bash"}, args...)...)
	if err != nil {
		return "", fmt.Errorf("%s: %w", g.Instance, err)
	}
	if r.Code != 0 {
		return "", fmt.Errorf("%s: exit %d running\n%s\nstdout: %s\nstderr: %s", g.Instance, r.Code, script, engTail(r.Stdout), engTail(r.Stderr))
	}
	return string(r.Stdout), nil
}

// grow loads the generated tables of shared/benchdata (what bench:gen makes) into g through its agent, two
// at a time (one session keeps one core busy), until the data is at least size bytes.
func (e *engBench) grow(eng benchdata.Engine, g *testkit.Guest, size int64) int64 {
	e.b.Helper()
	reg, err := g.Registration(e.ctx)
	if err != nil {
		e.b.Fatal(err)
	}
	admin, bench, err := benchdata.AgentQueries(g.Client, reg)
	if err != nil {
		e.b.Fatal(err)
	}
	have, err := eng.Grow(e.ctx, admin, bench, size, 0, 2, nil)
	if err != nil {
		e.b.Fatalf("generating %s data on %s: %v", eng.Name, g.Instance, err)
	}
	return have
}

// timed runs a bash pipeline in the guest under bash's `time` and returns its wall time (measured here),
// its CPU seconds (user+system of the pipeline's processes) and the rest of its stdout.
func (e *engBench) timed(g *testkit.Guest, pipeline string) (time.Duration, float64, string) {
	e.b.Helper()
	t0 := time.Now()
	out := e.sh(g, "TIMEFORMAT='cpu %3U %3S'\n{ time { "+pipeline+" ; } ; } 2>/tmp/bench-time || { cat /tmp/bench-time >&2; exit 1; }\n")
	d := time.Since(t0)
	tm := e.sh(g, "tail -n1 /tmp/bench-time")
	var user, sys float64
	if _, err := fmt.Sscanf(strings.TrimSpace(tm), "cpu %f %f", &user, &sys); err != nil {
		e.b.Fatalf("time output %q: %v", tm, err)
	}
	return d, user + sys, out
}

// ---- MariaDB ----

type engMariaDB struct{}

func (engMariaDB) grow(e *engBench, g *testkit.Guest, size int64) int64 {
	return e.grow(benchdata.MariaDB, g, size)
}

func (m engMariaDB) digest(e *engBench, g *testkit.Guest) string {
	out := e.sh(g, `mariadb -N -B -e "SELECT GROUP_CONCAT(table_name ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'bench'"`)
	var names []string
	for _, n := range strings.Split(strings.TrimSpace(out), ",") {
		names = append(names, "bench."+n)
	}
	return strings.Join(strings.Fields(e.sh(g, `mariadb -N -B -e "$1"`, "CHECKSUM TABLE "+strings.Join(names, ", "))), " ")
}

const engMariaBackup = `mariadb-backup --no-defaults --user=root --socket=/run/mysqld/mysqld.sock --backup --stream=mbstream ` +
	`--target-dir=/var/lib/trove/.bench-scratch --extra-lsndir=/var/lib/trove/.bench-lsn --parallel=1 --innodb-log-checkpoint-now 2>/tmp/bench-mb.log`

func (m engMariaDB) baselines(e *engBench, g *testkit.Guest) []engTiming {
	e.sh(g, `umask 077 && printf '%s\n' "$1" > /root/bench.age`, e.identity)
	const pass = "bench-passphrase-not-a-secret"
	var out []engTiming
	// The tool alone into /dev/null: what no pipeline behind it can beat.
	e.sh(g, "rm -rf /var/lib/trove/.bench-scratch /var/lib/trove/.bench-lsn")
	d, cpu, _ := e.timed(g, engMariaBackup+" > /dev/null")
	out = append(out, engTiming{name: "mariadb-backup > /dev/null", dir: "backup", wall: d, cpu: cpu})
	e.b.Logf("mariadb-backup alone: %s, %.1f CPU s", d.Round(time.Millisecond), cpu)
	for _, p := range []struct{ name, enc, dec string }{
		{"(a) mariadb-backup | zstd -1 -T0 | age", "zstd -1 -T0 -q | age -r " + e.recipient, "age -d -i /root/bench.age | zstd -d -q"},
		{"(b) Trove: mariadb-backup | gzip | openssl aes-256-cbc", "gzip | openssl enc -aes-256-cbc -salt -pbkdf2 -pass pass:" + pass, "openssl enc -d -aes-256-cbc -pbkdf2 -pass pass:" + pass + " | gzip -d"},
	} {
		e.sh(g, "rm -rf /var/lib/trove/.bench-scratch /var/lib/trove/.bench-lsn /var/lib/trove/bench-restore /var/lib/trove/bench.out")
		d, cpu, _ := e.timed(g, engMariaBackup+" | "+p.enc+" > /var/lib/trove/bench.out")
		stored, _ := strconv.ParseInt(strings.TrimSpace(e.sh(g, "stat -c %s /var/lib/trove/bench.out")), 10, 64)
		out = append(out, engTiming{name: p.name, dir: "backup", wall: d, cpu: cpu, stored: stored})
		e.b.Logf("%s backup: %s, %.1f CPU s, %s stored", p.name, d.Round(time.Millisecond), cpu, engMB(stored))
		e.sh(g, "rm -rf /var/lib/trove/.bench-scratch /var/lib/trove/.bench-lsn && mkdir -p /var/lib/trove/bench-restore")
		dx, cpux, _ := e.timed(g, "< /var/lib/trove/bench.out "+p.dec+" | mbstream -x -C /var/lib/trove/bench-restore")
		dp, cpup, _ := e.timed(g, "mariadb-backup --no-defaults --prepare --target-dir=/var/lib/trove/bench-restore 2>/tmp/bench-prepare.log")
		out = append(out, engTiming{name: p.name, dir: "restore", wall: dx + dp, cpu: cpux + cpup,
			note: fmt.Sprintf("extract %s + prepare %s", dx.Round(time.Millisecond), dp.Round(time.Millisecond))})
		e.b.Logf("%s restore: extract %s (%.1f CPU s) + prepare %s (%.1f CPU s)", p.name, dx.Round(time.Millisecond), cpux, dp.Round(time.Millisecond), cpup)
		e.sh(g, "rm -rf /var/lib/trove/bench-restore /var/lib/trove/bench.out")
	}
	return out
}

// ---- PostgreSQL ----

type engPostgreSQL struct{}

const engPSQL = `runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -h /run/postgresql -d bench -c "$1"`

func (engPostgreSQL) psql(e *engBench, g *testkit.Guest, sql string) string {
	return e.sh(g, engPSQL, sql)
}

func (engPostgreSQL) grow(e *engBench, g *testkit.Guest, size int64) int64 {
	return e.grow(benchdata.PostgreSQL, g, size)
}

func (p engPostgreSQL) digest(e *engBench, g *testkit.Guest) string {
	tables := strings.Fields(p.psql(e, g, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"))
	var parts []string
	for _, t := range tables {
		parts = append(parts, fmt.Sprintf("SELECT '%[1]s', count(*), sum(customer), sum(hashtext(note)), sum(hashtext(encode(token, 'hex'))) FROM %[1]s", t))
	}
	return strings.Join(strings.Fields(p.psql(e, g, strings.Join(parts, " UNION ALL ")+" ORDER BY 1")), " ")
}

const engPGBackRestConf = `[global]
repo1-path=/var/lib/trove/pgbackrest
repo1-retention-full=1
compress-type=zst
compress-level=1
process-max=2
start-fast=y
log-level-console=warn
log-level-file=off

[bench]
pg1-path=%s
pg1-socket-path=/run/postgresql
pg1-port=5432
`

func (p engPostgreSQL) baselines(e *engBench, g *testkit.Guest) []engTiming {
	dataDir := strings.TrimSpace(p.psql(e, g, "SHOW data_directory"))
	e.sh(g, `printf '%s' "$1" > /etc/pgbackrest/pgbackrest.conf && install -d -o postgres -g postgres -m 0750 /var/lib/trove/pgbackrest`, fmt.Sprintf(engPGBackRestConf, dataDir))
	// pgBackRest needs WAL archiving (archive_mode needs a restart: through the agent, as it supervises
	// the server).
	p.psql(e, g, "ALTER SYSTEM SET archive_mode = on")
	p.psql(e, g, "ALTER SYSTEM SET archive_command = 'pgbackrest --stanza=bench archive-push %p'")
	if _, err := g.Client.EngineStop(e.ctx, guestv1.EngineRequest{WaitMs: 120000}); err != nil {
		e.b.Fatal(err)
	}
	if _, err := g.Client.EngineStart(e.ctx, guestv1.EngineRequest{NoInit: true, WaitMs: 120000}); err != nil {
		e.b.Fatal(err)
	}
	// pg_basebackup alone (as the strategy runs it) into /dev/null: what no pipeline behind it can beat.
	d0, cpu0, _ := e.timed(g, "runuser -u postgres -- pg_basebackup -h /run/postgresql -p 5432 -U postgres -D - -F tar -X fetch -c fast > /dev/null")
	e.b.Logf("pg_basebackup alone: %s, %.1f CPU s", d0.Round(time.Millisecond), cpu0)
	e.sh(g, "runuser -u postgres -- pgbackrest --stanza=bench stanza-create")
	d, cpu, _ := e.timed(g, "runuser -u postgres -- pgbackrest --stanza=bench --type=full backup")
	info := e.sh(g, "runuser -u postgres -- pgbackrest --stanza=bench --output=json info")
	var stanzas []struct {
		Backup []struct {
			Info struct {
				Size       int64 `json:"size"`
				Repository struct {
					Delta int64 `json:"delta"`
				} `json:"repository"`
			} `json:"info"`
		} `json:"backup"`
	}
	if err := json.Unmarshal([]byte(info), &stanzas); err != nil || len(stanzas) == 0 || len(stanzas[0].Backup) == 0 {
		e.b.Fatalf("pgbackrest info %q: %v", info, err)
	}
	bi := stanzas[0].Backup[len(stanzas[0].Backup)-1].Info
	out := []engTiming{{name: "pgBackRest (zstd-1, process-max 2)", dir: "backup", wall: d, cpu: cpu, stored: bi.Repository.Delta,
		note: fmt.Sprintf("database size %s", engMB(bi.Size))}}
	e.b.Logf("pgBackRest backup: %s, %.1f CPU s, database %s, repository %s", d.Round(time.Millisecond), cpu, engMB(bi.Size), engMB(bi.Repository.Delta))
	e.sh(g, "rm -rf /var/lib/trove/bench-pgrestore && install -d -o postgres -g postgres -m 0700 /var/lib/trove/bench-pgrestore")
	d, cpu, _ = e.timed(g, "runuser -u postgres -- pgbackrest --stanza=bench --pg1-path=/var/lib/trove/bench-pgrestore restore")
	out = append(out, engTiming{name: out[0].name, dir: "restore", wall: d, cpu: cpu, note: "into an empty directory; no server start"})
	e.b.Logf("pgBackRest restore: %s, %.1f CPU s", d.Round(time.Millisecond), cpu)
	e.sh(g, "rm -rf /var/lib/trove/bench-pgrestore")
	return append(out, engTiming{name: "pg_basebackup > /dev/null", dir: "backup", wall: d0, cpu: cpu0})
}

// ---- report ----

func (e *engBench) report() {
	b := e.b
	var sb strings.Builder
	last := e.results[len(e.results)-1]
	fmt.Fprintf(&sb, "\n#### %s: %s through the services vs baselines (%s data, %s raw backup stream; MB/s = raw bytes / wall s)\n\n",
		e.engine, e.strategy, engMB(last.dataBytes), engMB(last.raw))
	sb.WriteString("| pipeline | backup s | backup MB/s | restore s | restore MB/s | stored | backup CPU s | restore CPU s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	svcCPU := func(dir string) float64 {
		var s float64
		for k, v := range last.cpu {
			if strings.HasPrefix(k, dir+" ") {
				s += v
			}
		}
		return s
	}
	fmt.Fprintf(&sb, "| services (agent frames zstd-1 + AES-256-GCM, storage s3 on versitygw) | %.1f | %.0f | %.1f | %.0f | %s | %.1f | %.1f |\n",
		last.backup.Seconds(), engRate(last.raw, last.backup), last.restore.Seconds(), engRate(last.raw, last.restore), engMB(last.stored), svcCPU("backup"), svcCPU("restore"))
	byName := map[string]map[string]engTiming{}
	var names []string
	for _, t := range e.baseline {
		if byName[t.name] == nil {
			byName[t.name] = map[string]engTiming{}
			names = append(names, t.name)
		}
		byName[t.name][t.dir] = t
	}
	for _, n := range names {
		bk, rs := byName[n]["backup"], byName[n]["restore"]
		restore := "– | – "
		if rs.wall > 0 {
			restore = fmt.Sprintf("%.1f | %.0f ", rs.wall.Seconds(), engRate(last.raw, rs.wall))
		}
		stored := "–"
		if bk.stored > 0 {
			stored = engMB(bk.stored)
		}
		rsCPU := "–"
		if rs.wall > 0 {
			rsCPU = fmt.Sprintf("%.1f", rs.cpu)
		}
		fmt.Fprintf(&sb, "| %s | %.1f | %.0f | %s| %s | %.1f | %s |\n", engCell(n), bk.wall.Seconds(), engRate(last.raw, bk.wall), restore, stored, bk.cpu, rsCPU)
	}
	sb.WriteString("\nRatios (services MB/s / baseline MB/s, i.e. baseline time / services time):\n\n| baseline | backup ratio | restore ratio |\n|---|---:|---:|\n")
	for _, n := range names {
		bk, rs := byName[n]["backup"], byName[n]["restore"]
		if rs.wall == 0 {
			fmt.Fprintf(&sb, "| %s (tool alone, a bound) | %.2f | – |\n", engCell(n), bk.wall.Seconds()/last.backup.Seconds())
			continue
		}
		fmt.Fprintf(&sb, "| %s | %.2f | %.2f |\n", engCell(n), bk.wall.Seconds()/last.backup.Seconds(), rs.wall.Seconds()/last.restore.Seconds())
	}
	sb.WriteString("\nPer size (fresh service processes and agents for each):\n\n| size | data | raw | stored | generate s | backup s | backup MB/s | restore s | restore MB/s | identical |")
	keys := []string{"storage", "backup", "restore", "agent (source)", "agent (target)"}
	for _, k := range keys {
		fmt.Fprintf(&sb, " %s peak RSS |", k)
	}
	sb.WriteString("\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|" + strings.Repeat("---:|", len(keys)) + "\n")
	for _, r := range e.results {
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %.0f | %.1f | %.0f | %.1f | %.0f | %v |", engSizeName(r.size), engMB(r.dataBytes), engMB(r.raw), engMB(r.stored),
			r.gen.Seconds(), r.backup.Seconds(), engRate(r.raw, r.backup), r.restore.Seconds(), engRate(r.raw, r.restore), r.identical)
		for _, k := range keys {
			fmt.Fprintf(&sb, " %.0f MiB |", float64(r.hwm[k])/(1<<20))
		}
		sb.WriteString("\n")
	}
	sb.WriteString("\nCPU seconds per process during the services' backup and restore, and the backup's stage busy times:\n\n")
	for _, r := range e.results {
		fmt.Fprintf(&sb, "- %s: %v; backup stages ms %v\n", engSizeName(r.size), engRound(r.cpu), r.backupStages)
	}
	for _, t := range e.baseline {
		if t.note != "" {
			fmt.Fprintf(&sb, "- %s %s: %s\n", t.name, t.dir, t.note)
		}
	}
	b.Log(sb.String())
	b.ReportMetric(engRate(last.raw, last.backup), "backup-MB/s")
	b.ReportMetric(engRate(last.raw, last.restore), "restore-MB/s")
}

// ---- small helpers ----

func engSizeName(n int64) string {
	if n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

func engMB(n int64) string { return fmt.Sprintf("%.0f MB", float64(n)/1e6) }

func engRate(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }

func engMiBMap(m map[string]int64) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = fmt.Sprintf("%.1fMiB", float64(v)/(1<<20))
	}
	return out
}

func engRound(m map[string]float64) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = fmt.Sprintf("%.1f", v)
	}
	return out
}

// engCell escapes a Markdown table cell.
func engCell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func engTail(b []byte) string {
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// engChildPID is the pid of this process's child whose command name is comm (0: none).
func engChildPID(comm string) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	self := os.Getpid()
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		st := string(b)
		open, end := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
		if open < 0 || end < open || st[open+1:end] != comm {
			continue
		}
		f := strings.Fields(st[end+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(self) {
			pid, _ := strconv.Atoi(strings.Fields(st)[0])
			return pid
		}
	}
	return 0
}

func engLoadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// engSelfCPU is this process's CPU time (user+system), s.
func engSelfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func engNproc() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\nprocessor") + 1
}
