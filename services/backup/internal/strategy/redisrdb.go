package strategy

import (
	"context"
	"path"
	"strconv"
	"time"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/redis"
	"troveng.dev/shared/errs"
)

// Redis in the guest image.
const (
	redisDefaultPort = 6379
	// redisDataRoot is the agent's "data" root in the guest; the snapshot's scratch file goes there, beside
	// (not inside) the engine's data dir.
	redisDataRoot = "/var/lib/trove"
)

// redisRDB is a snapshot of a Redis instance: redis-cli --rdb asks the server for a fresh RDB over the
// replication protocol (the server forks and serialises its dataset as of that moment), see
// docs/strategies-redis.md.
type redisRDB struct{}

func init() { Register(redisRDB{}, true) }

func (redisRDB) Name() string      { return "redis-rdb" }
func (redisRDB) Engine() string    { return guestv1.EngineRedis }
func (redisRDB) Incremental() bool { return false }

func redisConn(reg guestv1.Registration) []string {
	port := reg.Status.Port
	if port == 0 {
		port = redisDefaultPort
	}
	return []string{"-h", "127.0.0.1", "-p", strconv.Itoa(port)}
}

// redisScratch is the snapshot's file name in the data root, unique to the backup.
func redisScratch(backupID string) string { return ".trove-backup-" + backupID + ".rdb" }

// rdbArgs asks the server for a snapshot into file (absolute).
func rdbArgs(reg guestv1.Registration, file string) []string {
	return append(redisConn(reg), "--rdb", file)
}

// tarRDBArgs writes a tar holding the scratch file as dump.rdb to stdout, so a restore lays it down with the
// agent's all-or-nothing extract.
func tarRDBArgs(scratch string) []string {
	return []string{"-c", "-f", "-", "-C", redisDataRoot, "--transform=s|.*|" + redis.RDBFile + "|", scratch}
}

func (s redisRDB) Backup(ctx context.Context, req Request) (Result, error) {
	if err := fullOnly(s.Name(), req); err != nil {
		return Result{}, err
	}
	out, err := Capture(ctx, req, "redis-cli", append(redisConn(req.Registration), "INFO")...)
	if err != nil {
		return Result{}, errs.Wrap(errs.CodeOf(err), err, "asking Redis for INFO")
	}
	info := redis.ParseInfo(out)
	if info["loading"] == "1" {
		return Result{}, errs.Conflictf("Redis is still loading its dataset; back up once it has loaded")
	}
	ver, err := redis.ParseVersion(info["redis_version"])
	if err != nil {
		return Result{}, errs.Wrap(errs.Internal, err, "INFO server")
	}
	keys, err := info.TotalKeys()
	if err != nil {
		return Result{}, err
	}
	cli, err := Capture(ctx, req, "redis-cli", "--version")
	if err != nil {
		return Result{}, errs.Wrap(errs.CodeOf(err), err, "asking redis-cli its version")
	}
	cliVer, err := redis.ParseVersion(cli)
	if err != nil {
		return Result{}, err
	}

	scratch := redisScratch(req.BackupID)
	rel := guestv1.RootData + "/" + scratch
	// A retried job may find the previous attempt's file: start clean, and leave nothing behind.
	if err := redisRemoveScratch(ctx, req, rel); err != nil {
		return Result{}, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = redisRemoveScratch(cctx, req, rel) // best effort: the backup's outcome is already decided
	}()

	if _, err := Run(ctx, req, "snapshot", guestv1.ExecRequest{Tool: "redis-cli", Args: rdbArgs(req.Registration, path.Join(redisDataRoot, scratch))}); err != nil {
		return Result{}, errs.Wrap(errs.CodeOf(err), err, "taking the RDB snapshot")
	}
	r, err := Run(ctx, req, redis.RDBArtifact, ToStorage(req, redis.RDBArtifact, "tar", tarRDBArgs(scratch)...))
	if err != nil {
		return Result{}, errs.Wrap(errs.CodeOf(err), err, "storing the RDB snapshot")
	}
	p, err := Produce(redis.RDBArtifact, r)
	if err != nil {
		return Result{}, err
	}
	res := Result{
		Artifacts: []Produced{p},
		Positions: map[string]string{},
		Tools:     map[string]string{"redis-cli": cliVer.String(), "redis": ver.String()},
		Options: map[string]string{
			"server_version":   info["redis_version"],
			redis.KeysOption:   strconv.FormatInt(keys, 10),
			"format":           "tar",
			"redis_mode":       info["redis_mode"],
			"replication_role": info["role"],
		},
	}
	if v, ok := redis.RDBVersion(ver); ok {
		res.Options[redis.RDBVersionOption] = strconv.Itoa(v)
	}
	if off, ok := info.Int("master_repl_offset"); ok {
		res.Positions["repl_offset"] = strconv.FormatInt(off, 10)
	}
	if id := info["master_replid"]; id != "" {
		res.Positions["replid"] = id
	}
	return res, nil
}

// redisRemoveScratch removes the snapshot's scratch file (absent is fine).
func redisRemoveScratch(ctx context.Context, req Request, rel string) error {
	if _, err := req.Guest.Remove(ctx, guestv1.FileRemoveRequest{Path: rel}); err != nil && !errs.Is(err, errs.NotFound) {
		return errs.Wrap(errs.CodeOf(err), err, "removing %s on the guest", rel)
	}
	return nil
}
