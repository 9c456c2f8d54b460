//go:build integration

package backup_test

// Redis backups (redis-rdb) and restores through the services, on real guests: the storage (fs), backup and
// restore services run in this process on the test kit's NATS; the guests are containers of the guest image
// with their agents. The dataset has every data type in several encodings, binary keys and values, TTLs and
// two logical databases; source and restored guests are compared key by key (type, content, DUMP where the
// encoding makes it deterministic, TTL within a tolerance).
//
//	go tool task image:guest
//	cd services/backup && go test -tags integration -run IntegrationRedis -v .

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"troveng.dev/services/backup"
	"troveng.dev/services/restore"
	"troveng.dev/services/storage"
	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/datakey"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/telemetry/telemetrytest"
	"troveng.dev/shared/testkit"
)

// pgrStack is the storage, backup and restore services on a kit's NATS (used by the tests of every engine).
type pgrStack struct {
	kit *testkit.Kit
}

func startPGRStack(t *testing.T, engine string, guests int, prefix string) (*pgrStack, []*testkit.Guest) {
	st, gs, _ := startPGRStackOn(t, engine, guests, prefix, false)
	return st, gs
}

// startPGRStackOn is startPGRStack with the storage service on fs, or, with direct, on the s3 strategy
// (the kit's versitygw) and the backup and restore services asking for direct transfers. It returns the
// spans the storage service ends.
func startPGRStackOn(t *testing.T, engine string, guests int, prefix string, direct bool) (*pgrStack, []*testkit.Guest, *tracetest.InMemoryExporter) {
	t.Helper()
	k := testkit.Start(t, testkit.Options{Engine: engine, Guests: guests, Prefix: prefix, S3: direct})
	ctx := context.Background()
	cfg := storage.Config{Strategy: "fs", Options: map[string]string{"root": t.TempDir()}}
	if direct {
		s3 := k.S3()
		cfg = storage.Config{Strategy: "s3", Options: map[string]string{"endpoint": s3.Endpoint(), "bucket": s3.Bucket(),
			"region": s3.Region(), "access_key": s3.AccessKey(), "secret_key": s3.SecretKey()}}
	}
	tel, spans := telemetrytest.New(t)
	ss, err := storage.Start(ctx, k.Conn(), tel, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ss.Stop() })
	startBackupRestore(t, k.Conn(), direct)
	return &pgrStack{kit: k}, k.Guests(), spans
}

// startBackupRestore starts a backup and a restore service on nc with a fresh age key pair (the backup
// service wraps for the recipient, the restore service holds the identity), stopped when the test ends.
func startBackupRestore(t *testing.T, nc *nats.Conn, direct bool) {
	t.Helper()
	ctx := context.Background()
	identity, recipient, err := datakey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	bs, err := backup.Start(ctx, nc, nil, backup.Config{Recipients: recipient, Direct: direct, Jobs: jobs.Options{AckWait: 10 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bs.Stop() })
	rs, err := restore.Start(ctx, nc, nil, restore.Config{Identities: identity, Direct: direct, Jobs: jobs.Options{AckWait: 10 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rs.Stop() })
}

// run submits a job and follows it to its end.
func (st *pgrStack) run(t *testing.T, group, op string, req any) jobs.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	nc := st.kit.Conn()
	var j jobs.Job
	if err := rpc.Call(ctx, nc, backupv1.Subject(group, op), req, &j); err != nil {
		t.Fatalf("%s.%s: %v", group, op, err)
	}
	for !j.State.Final() {
		time.Sleep(200 * time.Millisecond)
		if err := rpc.Call(ctx, nc, backupv1.Subject(group, backupv1.OpJobStatus), backupv1.IDRequest{ID: j.ID}, &j); err != nil {
			t.Fatalf("job %s: %v", j.ID, err)
		}
	}
	return j
}

// backupOK makes a backup and requires it COMPLETED.
func (st *pgrStack) backupOK(t *testing.T, req backupv1.CreateRequest) catalog.Manifest {
	t.Helper()
	start := time.Now()
	j := st.run(t, backupv1.BackupGroup, backupv1.OpCreate, req)
	if j.State != jobs.StateSucceeded {
		t.Fatalf("backup %s %s of %s: %s: %v", req.Strategy, req.Type, req.Instance, j.State, j.Error)
	}
	var m catalog.Manifest
	if err := rpc.Call(context.Background(), st.kit.Conn(), backupv1.Subject(backupv1.BackupGroup, backupv1.OpShow), backupv1.IDRequest{ID: j.ID}, &m); err != nil {
		t.Fatalf("show %s: %v", j.ID, err)
	}
	t.Logf("backup %s (%s %s): %d raw bytes, %d stored, positions %v, tools %v, options %v, %s", m.ID, m.Strategy, m.Type, m.RawSize, m.StoredSize, m.Positions, m.Tools, m.Options, time.Since(start).Round(time.Millisecond))
	if m.State != catalog.StateCompleted {
		t.Fatalf("backup %s is %s", m.ID, m.State)
	}
	return m
}

// restoreJob restores a backup into a guest and returns the finished job.
func (st *pgrStack) restoreJob(t *testing.T, backupID, instance, mode string) jobs.Job {
	t.Helper()
	start := time.Now()
	j := st.run(t, backupv1.RestoreGroup, backupv1.OpRestore, backupv1.RestoreRequest{Backup: backupID, Instance: instance, Mode: mode})
	t.Logf("restore %s into %s (%s): %s in %s", backupID, instance, mode, j.State, time.Since(start).Round(time.Millisecond))
	return j
}

func (st *pgrStack) restoreOK(t *testing.T, backupID, instance, mode string) {
	t.Helper()
	if j := st.restoreJob(t, backupID, instance, mode); j.State != jobs.StateSucceeded {
		t.Fatalf("restore %s into %s: %s: %v", backupID, instance, j.State, j.Error)
	}
}

// pgrJobCode is the error code of a failed job.
func pgrJobCode(j jobs.Job) errs.Code {
	if j.Error == nil {
		return ""
	}
	return errs.CodeOf(j.Error)
}

// pgrShell runs a shell command inside a guest's container (the harness, not the system under test).
func pgrShell(t *testing.T, g *testkit.Guest, script string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r, err := g.Exec(ctx, append([]string{"sh", "-c", script, "sh"}, args...)...)
	if err != nil {
		t.Fatalf("on %s: %v", g.Instance, err)
	}
	if r.Code != 0 {
		t.Fatalf("on %s: %q exited %d: %s", g.Instance, script, r.Code, r)
	}
	return string(r.Stdout)
}

// redisDataset is fed to redis-cli on stdin: its quoted strings take \xHH escapes, so keys and values can
// hold any byte. Every type, in its small (listpack, intset, embstr/int) and large (quicklist, hashtable,
// skiplist, raw) encodings (Redis 7.0 keeps every list a quicklist and has no listpack sets), binary keys and
// values, TTLs, a stream with a consumer group, and db 3.
const redisDataset = `SET str "hello w\xc3\xb6rld"
SET "bin\x00key\xff\x01" "\x00\x01\x02\xfe\xff"
SET int 1234567
EVAL "redis.call('SET', KEYS[1], string.rep('0123456789abcdef', 65536)) return 1" 1 big:str
EVAL "math.randomseed(7) local b = {} for i = 1, 1048576 do b[i] = string.char(math.random(0, 255)) end redis.call('SET', KEYS[1], table.concat(b)) return 1" 1 big:random
EVAL "for i = 1, 20000 do redis.call('SET', 'many:' .. i, i * 7) end return 1" 0
RPUSH list a "b b" "\xe2\x9c\x93"
EVAL "for i = 1, 5000 do redis.call('RPUSH', KEYS[1], 'item-' .. i) end return 1" 1 big:list
SADD set a b c
SADD intset 1 2 3 -4
EVAL "for i = 1, 2000 do redis.call('SADD', KEYS[1], 'member-' .. i) end return 1" 1 big:set
ZADD zset 1 a 2.5 b -3 c
EVAL "for i = 1, 500 do redis.call('ZADD', KEYS[1], i / 3, 'z' .. i) end return 1" 1 big:zset
HSET hash f1 v1 "f\x002" "v\xff2"
EVAL "for i = 1, 1000 do redis.call('HSET', KEYS[1], 'field-' .. i, string.rep('v', i)) end return 1" 1 big:hash
XADD stream 1-1 k v
XADD stream 2-0 a b c "\x00d"
XGROUP CREATE stream g1 0
XREADGROUP GROUP g1 alice COUNT 1 STREAMS stream >
SET ttl:str v EX 3600
HSET ttl:hash a b
PEXPIRE ttl:hash 7200000
RPUSH "\xe2\x98\x83 snowman list" x y
SELECT 3
SET db3:str "in db 3"
SADD db3:set x y z
EXPIRE db3:set 86400
`

// redisCanon describes every key of one logical db, sorted by key: hex key, type, encoding, PTTL, the SHA-1
// of a canonical rendering of its content (sets and hashes sorted), and the SHA-1 of its DUMP.
const redisCanon = `
local function hex(s) return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end)) end
local function lp(t) local b = {} for _, s in ipairs(t) do b[#b + 1] = #s .. ':' .. s end return table.concat(b) end
local out = {}
local keys = redis.call('KEYS', '*')
table.sort(keys)
for _, k in ipairs(keys) do
  local t = redis.call('TYPE', k)['ok']
  local c
  if t == 'string' then c = redis.call('GET', k)
  elseif t == 'list' then c = lp(redis.call('LRANGE', k, 0, -1))
  elseif t == 'set' then local m = redis.call('SMEMBERS', k) table.sort(m) c = lp(m)
  elseif t == 'zset' then c = lp(redis.call('ZRANGE', k, 0, -1, 'WITHSCORES'))
  elseif t == 'hash' then
    local h = redis.call('HGETALL', k) local p = {}
    for i = 1, #h, 2 do p[#p + 1] = #h[i] .. ':' .. h[i] .. #h[i + 1] .. ':' .. h[i + 1] end
    table.sort(p) c = table.concat(p)
  elseif t == 'stream' then
    local b = {}
    for _, e in ipairs(redis.call('XRANGE', k, '-', '+')) do b[#b + 1] = e[1] .. '=' .. lp(e[2]) end
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', k)) do b[#b + 1] = 'group:' .. lp({tostring(g[2]), tostring(g[6]), tostring(g[8])}) end
    c = table.concat(b, ';')
  end
  out[#out + 1] = hex(k) .. ' ' .. t .. ' ' .. redis.call('OBJECT', 'ENCODING', k) .. ' ' .. redis.call('PTTL', k) .. ' ' .. redis.sha1hex(c) .. ' ' .. redis.sha1hex(redis.call('DUMP', k))
end
return out
`

// redisKey is one key's line of redisCanon.
type redisKey struct {
	key, typ, enc string
	pttl          int64
	content, dump string
}

func redisKeys(t *testing.T, g *testkit.Guest, db int) []redisKey {
	t.Helper()
	out := pgrShell(t, g, `redis-cli -n "$1" EVAL "$2" 0`, strconv.Itoa(db), redisCanon)
	var keys []redisKey
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) != 6 {
			t.Fatalf("redisCanon line %q", l)
		}
		p, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			t.Fatalf("pttl %q", f[3])
		}
		keys = append(keys, redisKey{key: f[0], typ: f[1], enc: f[2], pttl: p, content: f[4], dump: f[5]})
	}
	return keys
}

// sameRedis compares two guests' dbs key by key. DUMP is compared except for hashtable encodings, whose
// element order follows a per-process hash seed (their content is compared sorted instead). A TTL must have
// gone down by no more than elapsed (plus a second), and never up.
func sameRedis(t *testing.T, src, dst []redisKey, elapsed time.Duration) {
	t.Helper()
	if len(src) != len(dst) {
		t.Fatalf("source has %d keys, restored %d", len(src), len(dst))
	}
	for i := range src {
		s, d := src[i], dst[i]
		if s.key != d.key || s.typ != d.typ || s.enc != d.enc || s.content != d.content {
			t.Errorf("key %s: source %+v, restored %+v", s.key, s, d)
			continue
		}
		if s.enc != "hashtable" && s.dump != d.dump {
			t.Errorf("key %s (%s, %s): DUMP differs", s.key, s.typ, s.enc)
		}
		switch {
		case s.pttl < 0 || d.pttl < 0:
			if s.pttl != d.pttl {
				t.Errorf("key %s: TTL %d ms at the source, %d ms restored", s.key, s.pttl, d.pttl)
			}
		case d.pttl > s.pttl || s.pttl-d.pttl > (elapsed+time.Second).Milliseconds():
			t.Errorf("key %s: TTL %d ms at the source, %d ms restored %s later", s.key, s.pttl, d.pttl, elapsed)
		}
	}
}

func TestIntegrationRedisRDB(t *testing.T) {
	st, gs := startPGRStack(t, guestv1.EngineRedis, 2, "rdb")
	src, dst := gs[0], gs[1]
	pgrShell(t, src, `printf '%s' "$1" | redis-cli >/dev/null`, redisDataset)
	before := map[int][]redisKey{0: redisKeys(t, src, 0), 3: redisKeys(t, src, 3)}
	encs := map[string]bool{}
	for _, k := range before[0] {
		encs[k.typ+"/"+k.enc] = true
	}
	for _, want := range []string{"string/embstr", "string/int", "string/raw", "list/quicklist", "set/intset", "set/hashtable", "zset/listpack", "zset/skiplist", "hash/listpack", "hash/hashtable", "stream/stream"} {
		if !encs[want] {
			t.Errorf("the dataset has no %s key (encodings: %v)", want, encs)
		}
	}
	snap := time.Now()

	m := st.backupOK(t, backupv1.CreateRequest{Instance: src.Instance}) // the default strategy: redis-rdb
	if m.Strategy != "redis-rdb" || m.Positions["repl_offset"] == "" || m.Options["rdb_version"] != "10" || m.Options["keys"] != strconv.Itoa(len(before[0])+len(before[3])) {
		t.Errorf("manifest: strategy %s, positions %v, options %v", m.Strategy, m.Positions, m.Options)
	}
	if out := pgrShell(t, src, `ls -A /var/lib/trove`); strings.Contains(out, ".trove-backup") {
		t.Errorf("the snapshot's scratch file was left behind: %s", out)
	}

	// A write after the backup must not be in the restore.
	pgrShell(t, src, `redis-cli SET after:backup 1 >/dev/null`)
	st.restoreOK(t, m.ID, dst.Instance, backupv1.ModeNew)
	elapsed := time.Since(snap)
	for _, db := range []int{0, 3} {
		sameRedis(t, before[db], redisKeys(t, dst, db), elapsed)
	}
	if out := pgrShell(t, dst, `redis-cli EXISTS after:backup`); strings.TrimSpace(out) != "0" {
		t.Errorf("a key written after the backup is in the restore")
	}

	t.Run("existing mode refused", func(t *testing.T) {
		j := st.restoreJob(t, m.ID, dst.Instance, backupv1.ModeExisting)
		if j.State == jobs.StateSucceeded || pgrJobCode(j) != errs.BadRequest {
			t.Fatalf("got %s %v", j.State, j.Error)
		}
		sameRedis(t, before[0], redisKeys(t, dst, 0), time.Since(snap))
	})
	t.Run("restored twice", func(t *testing.T) {
		// A restore replaces what the target holds.
		pgrShell(t, dst, `redis-cli SET extra 1 >/dev/null`)
		st.restoreOK(t, m.ID, dst.Instance, backupv1.ModeNew)
		sameRedis(t, before[0], redisKeys(t, dst, 0), time.Since(snap))
	})
	t.Logf("%d keys compared", len(before[0])+len(before[3]))
}

// TestIntegrationRedisRDBDirect: with direct transfers on and the storage service on S3 (versitygw), the
// agents put and get the artifact straight to and from object storage by presigned parts (the storage
// service only presigns and completes; manifests still go through its stream endpoints), and the restore
// is identical.
func TestIntegrationRedisRDBDirect(t *testing.T) {
	st, gs, spans := startPGRStackOn(t, guestv1.EngineRedis, 2, "rdbs3", true)
	src, dst := gs[0], gs[1]
	pgrShell(t, src, `printf '%s' "$1" | redis-cli >/dev/null`, redisDataset)
	before := redisKeys(t, src, 0)
	snap := time.Now()
	m := st.backupOK(t, backupv1.CreateRequest{Instance: src.Instance})
	st.restoreOK(t, m.ID, dst.Instance, backupv1.ModeNew)
	sameRedis(t, before, redisKeys(t, dst, 0), time.Since(snap))

	names := map[string]int{} // the storage service's own request spans
	for _, s := range spans.GetSpans() {
		if strings.HasPrefix(s.Name, "storage.") {
			names[s.Name]++
		}
	}
	for _, want := range []string{"storage.put_direct", "storage.complete_direct", "storage.get_direct"} {
		if names[want] == 0 {
			t.Errorf("no %s request reached the storage service (spans: %v)", want, names)
		}
	}
	// Nothing read the artifact back a second time: complete_direct did (its record says when), so the
	// backup's completion only stat'ed it, and redis-rdb's restore stages the artifact, so its pre-check
	// stat'ed it too.
	if names["storage.verify"] != 0 {
		t.Errorf("%d verify jobs were submitted for a direct backup and its restore; want none (spans: %v)", names["storage.verify"], names)
	}
	t.Logf("%d keys compared; storage requests: %v", len(before), names)
}
