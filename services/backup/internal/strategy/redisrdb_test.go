package strategy

import (
	"context"
	"slices"
	"testing"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
)

const redisInfo = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n# Persistence\r\nloading:0\r\n" +
	"# Replication\r\nrole:master\r\nmaster_replid:abc123\r\nmaster_repl_offset:4242\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=5000\r\ndb2:keys=2,expires=0,avg_ttl=0\r\n"

func TestRedisArgs(t *testing.T) {
	reg := guestv1.Registration{}
	if got, want := rdbArgs(reg, "/var/lib/trove/.trove-backup-b1.rdb"), []string{"-h", "127.0.0.1", "-p", "6379", "--rdb", "/var/lib/trove/.trove-backup-b1.rdb"}; !slices.Equal(got, want) {
		t.Errorf("redis-cli: got %q", got)
	}
	if got, want := tarRDBArgs(".trove-backup-b1.rdb"), []string{"-c", "-f", "-", "-C", "/var/lib/trove", "--transform=s|.*|dump.rdb|", ".trove-backup-b1.rdb"}; !slices.Equal(got, want) {
		t.Errorf("tar: got %q", got)
	}
}

// The fake guest stands in for redis-cli INFO and --version only; the test checks what is parsed and
// recorded, the order of the two execs and the scratch file's cleanup.
func TestRedisRecords(t *testing.T) {
	g := &fakeGuest{answers: map[string]string{"6379 INFO": redisInfo, "redis-cli --version": "redis-cli 7.0.15\n"}}
	req := fakeRequest(g, guestv1.EngineRedis)
	req.Registration.Status.Port = 0
	res, err := redisRDB{}.Backup(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Positions["repl_offset"] != "4242" || res.Positions["replid"] != "abc123" {
		t.Errorf("positions %v", res.Positions)
	}
	if res.Options["keys"] != "5" || res.Options["rdb_version"] != "10" || res.Tools["redis"] != "7.0.15" || res.Tools["redis-cli"] != "7.0.15" {
		t.Errorf("options %v tools %v", res.Options, res.Tools)
	}
	if len(res.Artifacts) != 1 || res.Artifacts[0].Name != "rdb" {
		t.Errorf("artifacts %+v", res.Artifacts)
	}
	snap, tar := g.execsOf("redis-cli"), g.execsOf("tar")
	if len(snap) != 1 || len(tar) != 1 || tar[0].Stdout.Mode != guestv1.StdoutStorage || snap[0].Stdout.Mode == guestv1.StdoutStorage {
		t.Errorf("execs: redis-cli %+v tar %+v", snap, tar)
	}
	if !slices.Equal(g.removed, []string{"data/.trove-backup-b1.rdb", "data/.trove-backup-b1.rdb"}) {
		t.Errorf("scratch removals %q (want before and after)", g.removed)
	}
}

func TestRedisRefusesWhileLoading(t *testing.T) {
	g := &fakeGuest{answers: map[string]string{"6379 INFO": "redis_version:7.0.15\r\nloading:1\r\n"}}
	req := fakeRequest(g, guestv1.EngineRedis)
	req.Registration.Status.Port = 0
	if _, err := (redisRDB{}).Backup(context.Background(), req); !errs.Is(err, errs.Conflict) {
		t.Fatalf("got %v", err)
	}
}
