package backend

import (
	"slices"
	"strings"
	"testing"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/natstest"
	"troveng.dev/shared/s3test"
)

func TestRegistryNames(t *testing.T) {
	if got := Names(); !slices.Equal(got, []string{"fs", "nats", "s3"}) {
		t.Fatalf("Names() = %q", got)
	}
}

func TestOpenUnknownStrategy(t *testing.T) {
	_, err := Open(t.Context(), "swift", nil)
	wantCode(t, err, errs.BadRequest, "open unknown strategy")
	if !strings.Contains(err.Error(), "fs, nats, s3") {
		t.Fatalf("error does not list the known strategies: %v", err)
	}
}

func TestOpenBadConfig(t *testing.T) {
	for name, c := range map[string]struct {
		strategy string
		cfg      map[string]string
	}{
		"fs without root":          {"fs", nil},
		"fs unknown key":           {"fs", map[string]string{"root": t.TempDir(), "rooot": "x"}},
		"s3 without bucket":        {"s3", map[string]string{"endpoint": "http://127.0.0.1:1"}},
		"s3 part too small":        {"s3", map[string]string{"bucket": "b", "part_size": "1MiB"}},
		"s3 part not a size":       {"s3", map[string]string{"bucket": "b", "part_size": "big"}},
		"s3 concurrency 0":         {"s3", map[string]string{"bucket": "b", "concurrency": "0"}},
		"s3 path_style not bool":   {"s3", map[string]string{"bucket": "b", "path_style": "perhaps"}},
		"s3 access without secret": {"s3", map[string]string{"bucket": "b", "access_key": "AK"}},
		"s3 bad prefix":            {"s3", map[string]string{"bucket": "b", "prefix": "../x"}},
		"nats without url":         {"nats", map[string]string{"bucket": "b"}},
		"nats bad replicas":        {"nats", map[string]string{"url": "nats://127.0.0.1:1", "replicas": "9"}},
		"nats bad timeout":         {"nats", map[string]string{"url": "nats://127.0.0.1:1", "timeout": "soon"}},
	} {
		_, err := Open(t.Context(), c.strategy, c.cfg)
		wantCode(t, err, errs.BadRequest, name)
	}
	_, err := Open(t.Context(), "nats", map[string]string{"url": "nats://user:pw@127.0.0.1:1"})
	wantCode(t, err, errs.Unavailable, "nats server unreachable")
	if strings.Contains(err.Error(), "pw") {
		t.Fatalf("error reveals the password: %v", err)
	}
}

// Every strategy opens through the registry from string configuration and answers Ping.
func TestOpenEachStrategy(t *testing.T) {
	s3srv := s3test.Start(t)
	natsSrv := natstest.Start(t)
	for name, cfg := range map[string]map[string]string{
		"fs": {"root": t.TempDir()},
		"s3": {"endpoint": s3srv.Endpoint(), "bucket": s3srv.Bucket(), "prefix": "reg", "access_key": s3srv.AccessKey(),
			"secret_key": s3srv.SecretKey(), "path_style": "true", "part_size": "5MiB", "concurrency": "3"},
		"nats": {"url": natsSrv.URL(), "bucket": "registry", "replicas": "1", "max_bytes": "64MiB", "timeout": "5s"},
	} {
		b, err := Open(t.Context(), name, cfg)
		if err != nil {
			t.Fatalf("open %s: %v", name, err)
		}
		if err := b.Ping(t.Context()); err != nil {
			t.Fatalf("ping %s: %v", name, err)
		}
		info := put(t, b, "reg/x", []byte("x"), nil)
		if info.SHA256 != sha([]byte("x")) {
			t.Fatalf("%s: put through the registry: %+v", name, info)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("close %s: %v", name, err)
		}
	}
}

func TestConfigBytes(t *testing.T) {
	for v, want := range map[string]int64{"5242880": 5 << 20, "8MiB": 8 << 20, "8M": 8 << 20, "1GiB": 1 << 30, "64 KiB": 64 << 10} {
		c := &config{strategy: "t", values: map[string]string{"k": v}}
		got, err := c.bytes("k", 0, 0, 1<<40)
		if err != nil || got != want {
			t.Fatalf("bytes(%q) = %d, %v; want %d", v, got, err, want)
		}
	}
	c := &config{strategy: "t", values: map[string]string{"k": "-1"}}
	if _, err := c.bytes("k", 0, 0, 1<<40); err == nil {
		t.Fatal("negative size accepted")
	}
}
