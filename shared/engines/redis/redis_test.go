package redis

import "testing"

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]string{
		"7.0.15": "7.0.15",
		"Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64": "7.0.15",
		"redis-cli 7.0.15\n": "7.0.15",
		"6.2":                "6.2.0",
	} {
		v, err := ParseVersion(in)
		if err != nil || v.String() != want {
			t.Errorf("%q: got %v %v, want %s", in, v, err, want)
		}
	}
	for _, bad := range []string{"", "7", "7.x.1", "1.2.3.4", "-1.0"} {
		if _, err := ParseVersion(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func v(t *testing.T, s string) Version {
	t.Helper()
	x, err := ParseVersion(s)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestCompareAndRDB(t *testing.T) {
	if v(t, "7.0.15").Compare(v(t, "7.0.9")) != 1 || v(t, "6.2.14").Compare(v(t, "7.0.0")) != -1 || v(t, "7.0.0").Compare(v(t, "7.0")) != 0 {
		t.Fatal("compare")
	}
	if r, ok := RDBVersion(v(t, "7.0.15")); !ok || r != 10 {
		t.Fatalf("7.0: %d %v", r, ok)
	}
	if _, ok := RDBVersion(v(t, "9.9.0")); ok {
		t.Fatal("unknown release known")
	}
}

func TestCanLoad(t *testing.T) {
	cases := []struct {
		src    string
		rdb    int
		target string
		ok     bool
	}{
		{"7.0.15", 0, "7.0.15", true},
		{"7.0.15", 0, "7.0.11", true}, // same line, same RDB version
		{"6.2.14", 0, "7.0.15", true}, // older onto newer
		{"7.2.4", 0, "7.0.15", false}, // RDB 11 onto a reader of 10
		{"7.2.4", 10, "7.0.15", true}, // a file known to be RDB 10
		{"9.0.0", 0, "7.0.15", false}, // unknown and newer
		{"9.0.0", 0, "9.1.0", true},   // unknown but older than the target
		{"7.0.15", 0, "6.9.0", false}, // target line unknown and older
	}
	for _, c := range cases {
		err := CanLoad(v(t, c.src), c.rdb, v(t, c.target))
		if (err == nil) != c.ok {
			t.Errorf("%s (rdb %d) onto %s: got %v", c.src, c.rdb, c.target, err)
		}
	}
}

// INFO as redis-cli prints it from Redis 7.0.15 (abridged), with CRLF line ends.
const info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\r\n# Persistence\r\nloading:0\r\n" +
	"rdb_last_load_keys_expired:0\r\nrdb_last_load_keys_loaded:2\r\n\r\n# Replication\r\nrole:master\r\n" +
	"master_replid:4c3e5c3a9b7d8f2e1a0b9c8d7e6f5a4b3c2d1e0f\r\nmaster_repl_offset:1234\r\n\r\n# Keyspace\r\n" +
	"db0:keys=2,expires=1,avg_ttl=99846\r\ndb3:keys=5,expires=0,avg_ttl=0\r\n"

func TestParseInfo(t *testing.T) {
	i := ParseInfo(info)
	if i["redis_version"] != "7.0.15" || i["role"] != "master" {
		t.Fatalf("got %v", i)
	}
	if n, ok := i.Int("master_repl_offset"); !ok || n != 1234 {
		t.Fatalf("offset %d %v", n, ok)
	}
	if _, ok := i.Int("role"); ok {
		t.Fatal("role is not a number")
	}
	ks, err := i.Keyspace()
	if err != nil || len(ks) != 2 || ks[0] != (Keyspace{Keys: 2, Expires: 1}) || ks[3].Keys != 5 {
		t.Fatalf("keyspace %v %v", ks, err)
	}
	if n, err := i.TotalKeys(); err != nil || n != 7 {
		t.Fatalf("total %d %v", n, err)
	}
	if _, err := ParseInfo("db0:keys=x,expires=0\n").Keyspace(); err == nil {
		t.Fatal("bad keyspace parsed")
	}
}
