package strategy

import (
	"context"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/redis"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
)

// Redis in the guest image.
const (
	redisDefaultPort = 6379
	redisDataRoot    = "/var/lib/trove" // the agent's "data" root
	redisDefaultData = guestv1.RootData + "/redis"
	redisOwner       = "redis"
	// redisLoadWait bounds how long a restored guest may take to load its snapshot.
	redisLoadWait = 30 * time.Minute
	redisPoll     = 500 * time.Millisecond
)

// redisRDBRestore lays a redis-rdb backup's dump.rdb down as the guest's data and starts Redis on it
// (docs/strategies-redis.md).
type redisRDBRestore struct{}

func init() { Register(redisRDBRestore{}) }

func (redisRDBRestore) Name() string { return "redis-rdb" }

func (redisRDBRestore) Engine() string { return guestv1.EngineRedis }

// StagesChain: the extract replaces the data dir all or nothing, after the last frame and the index were checked.
func (redisRDBRestore) StagesChain() bool { return true }

func redisConn(reg guestv1.Registration) []string {
	port := reg.Status.Port
	if port == 0 {
		port = redisDefaultPort
	}
	return []string{"-h", "127.0.0.1", "-p", strconv.Itoa(port)}
}

// redisDataDir is the target's data dir as an agent path: its report, else the image's.
func redisDataDir(reg guestv1.Registration) (string, error) {
	d := reg.Status.DataDir
	if d == "" {
		return redisDefaultData, nil
	}
	rel, ok := strings.CutPrefix(path.Clean(d), redisDataRoot+"/")
	if !ok || rel == "" {
		return "", errs.Internalf("guest %s reports the data dir %q, outside the data root %s", reg.Instance, d, redisDataRoot)
	}
	return guestv1.RootData + "/" + rel, nil
}

// redisBackupVersion is the Redis release that wrote the snapshot, and the file's RDB version when recorded.
func redisBackupVersion(m *catalog.Manifest) (redis.Version, int, error) {
	s := m.Tools["redis"]
	if s == "" {
		s = m.EngineVersion
	}
	if s == "" {
		s = m.Options["server_version"]
	}
	v, err := redis.ParseVersion(s)
	if err != nil {
		return redis.Version{}, 0, errs.BadRequestf("backup %s records no readable Redis version (%q); it cannot be checked against the target", m.ID, s)
	}
	rdb := 0
	if o := m.Options[redis.RDBVersionOption]; o != "" {
		if rdb, err = strconv.Atoi(o); err != nil || rdb <= 0 {
			return redis.Version{}, 0, errs.BadRequestf("backup %s: option %s=%q is not an RDB version", m.ID, redis.RDBVersionOption, o)
		}
	}
	return v, rdb, nil
}

// Check: new guests only (the snapshot replaces the whole dataset), and the target's Redis must read the
// snapshot's RDB format version (the same or a newer release always does).
func (s redisRDBRestore) Check(req Request) error {
	if len(req.Chain) != 1 {
		return errs.BadRequestf("a redis-rdb backup is a full backup; got a chain of %d", len(req.Chain))
	}
	m := req.Target()
	if m.Strategy != s.Name() || m.Engine != guestv1.EngineRedis {
		return errs.BadRequestf("backup %s is a %s backup of %s, not a redis-rdb backup", m.ID, m.Strategy, m.Engine)
	}
	if req.Registration.Engine != guestv1.EngineRedis {
		return errs.BadRequestf("backup %s is a Redis backup but guest %s runs %s (wrong engine): restore into a redis guest", m.ID, req.Registration.Instance, req.Registration.Engine)
	}
	if req.Mode != "" && req.Mode != backupv1.ModeNew {
		return errs.BadRequestf("redis-rdb backups restore in mode new only (the snapshot replaces the whole dataset), not %s", req.Mode)
	}
	if len(req.Registration.Tools) > 0 && !slices.Contains(req.Registration.Tools, "redis-cli") {
		return errs.Unavailablef("guest %s cannot run redis-cli (its agent's tools: %v)", req.Registration.Instance, req.Registration.Tools)
	}
	if _, ok := m.Artifact(redis.RDBArtifact); !ok {
		return errs.BadRequestf("backup %s has no %q artifact", m.ID, redis.RDBArtifact)
	}
	src, rdb, err := redisBackupVersion(m)
	if err != nil {
		return err
	}
	ts := req.Registration.EngineVersion
	if ts == "" {
		ts = req.Registration.Status.Version
	}
	if ts == "" {
		return errs.Unavailablef("guest %s has not reported its Redis version yet; retry once it has registered", req.Registration.Instance)
	}
	t, err := redis.ParseVersion(ts)
	if err != nil {
		return err
	}
	if err := redis.CanLoad(src, rdb, t); err != nil {
		return errs.BadRequestf("backup %s onto guest %s: %s", m.ID, req.Registration.Instance, errs.From(err).Message)
	}
	return nil
}

func (s redisRDBRestore) Restore(ctx context.Context, req Request) error {
	if err := s.Check(req); err != nil {
		return err
	}
	m := req.Target()
	dataDir, err := redisDataDir(req.Registration)
	if err != nil {
		return err
	}
	src, err := req.Source(m, redis.RDBArtifact)
	if err != nil {
		return err
	}
	// Stopped first: a running Redis would write its own dump.rdb over ours on shutdown or BGSAVE. The
	// extract replaces the data dir all or nothing, so a failed download (a bad frame, a cancelled job,
	// storage gone) leaves the guest's data as it was, and Redis is started again on it: the target is left
	// as the restore found it.
	before, err := req.Guest.EngineStatus(ctx)
	if err != nil {
		return errs.Wrap(errs.CodeOf(err), err, "asking Redis's state before the restore")
	}
	if _, err := req.Guest.EngineStop(ctx, guestv1.EngineRequest{}); err != nil {
		return errs.Wrap(errs.CodeOf(err), err, "stopping Redis before the restore")
	}
	r, err := req.Guest.Extract(ctx, guestv1.ExtractRequest{
		Path:           dataDir,
		Source:         guestv1.SourceStorage,
		Storage:        src,
		Replace:        true,
		Owner:          redisOwner,
		BandwidthLimit: req.BandwidthLimit,
	}, nil)
	if err == nil {
		err = guestclient.Check(r)
	}
	if err != nil {
		err = errs.Wrap(errs.CodeOf(err), err, "laying down %s in %s", redis.RDBFile, dataDir)
		if before.State == guestv1.EngineRunning {
			return restartUntouched(ctx, req, "Redis", err)
		}
		return err
	}
	if r.Extracted != nil {
		if r.Extracted.Entries != 1 {
			return errs.New(errs.Corrupt, "backup %s: the rdb artifact held %d entries; want exactly %s", m.ID, r.Extracted.Entries, redis.RDBFile)
		}
		if req.Progress != nil {
			req.Progress(redis.RDBArtifact, r.Extracted.Bytes)
		}
	}
	if _, err := req.Guest.Stat(ctx, dataDir+"/"+redis.RDBFile); err != nil {
		return errs.Wrap(errs.CodeOf(err), err, "the restored %s is not in %s", redis.RDBFile, dataDir)
	}
	st, err := req.Guest.EngineStart(ctx, guestv1.EngineRequest{NoInit: true, WaitMs: redisLoadWait.Milliseconds()})
	if err != nil {
		return errs.Wrap(errs.CodeOf(err), err, "starting Redis on the restored snapshot")
	}
	if st.State != guestv1.EngineRunning {
		return errs.Internalf("Redis did not start on the restored snapshot (state %s): %s", st.State, st.Message)
	}
	info, err := redisLoaded(ctx, req)
	if err != nil {
		return err
	}
	if st, err = req.Guest.EngineStatus(ctx); err != nil {
		return errs.Wrap(errs.CodeOf(err), err, "asking Redis's state after the load")
	}
	if !st.Healthy {
		return errs.Internalf("Redis loaded the snapshot but is not healthy (state %s): %s", st.State, st.Message)
	}
	return redisCheckKeys(m, info)
}

// redisLoaded waits until Redis has finished loading (INFO answers while loading; most commands do not).
func redisLoaded(ctx context.Context, req Request) (redis.Info, error) {
	deadline := time.Now().Add(redisLoadWait)
	for {
		out, err := Capture(ctx, req, "redis-cli", append(redisConn(req.Registration), "INFO")...)
		switch {
		case err == nil:
			info := redis.ParseInfo(out)
			if info["loading"] == "0" {
				return info, nil
			}
		case !errs.Is(err, errs.Internal):
			// Not redis-cli failing to connect yet, but the agent: gone, cancelled, refused.
			return nil, errs.Wrap(errs.CodeOf(err), err, "asking Redis whether it has loaded the snapshot")
		}
		if time.Now().After(deadline) {
			if err != nil {
				return nil, errs.Wrap(errs.Timeout, err, "Redis did not answer INFO within %s of its start", redisLoadWait)
			}
			return nil, errs.New(errs.Timeout, "Redis was still loading the snapshot %s after its start", redisLoadWait)
		}
		select {
		case <-ctx.Done():
			return nil, errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "waiting for Redis to load the snapshot")
		case <-time.After(redisPoll):
		}
	}
}

// redisCheckKeys checks Redis loaded this snapshot: every key in the keyspace came from the load, and a
// backup that had keys did not come up empty (as it would when the server's configuration made it load an
// append-only file instead). The key count the backup recorded was taken just before the snapshot, so writes
// in between may change it: it is not compared exactly.
func redisCheckKeys(m *catalog.Manifest, info redis.Info) error {
	total, err := info.TotalKeys()
	if err != nil {
		return err
	}
	loaded, okL := info.Int("rdb_last_load_keys_loaded")
	expired, _ := info.Int("rdb_last_load_keys_expired")
	if okL && total > loaded {
		return errs.Internalf("Redis holds %d keys after the restore but loaded %d from the snapshot: it did not start from the restored %s alone", total, loaded, redis.RDBFile)
	}
	backupKeys, _ := strconv.ParseInt(m.Options[redis.KeysOption], 10, 64)
	if backupKeys > 0 && total == 0 && (!okL || loaded+expired == 0) {
		aof := ""
		if info["aof_enabled"] == "1" {
			aof = " (appendonly is on, so Redis loads an append-only file instead of dump.rdb: restore with appendonly off and turn it on afterwards)"
		}
		return errs.Internalf("Redis came up empty after the restore, but backup %s had %d keys%s", m.ID, backupKeys, aof)
	}
	return nil
}
