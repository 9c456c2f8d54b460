// Package redis holds what the strategy services know about Redis that is not strategy logic: versions, the
// RDB format version each release writes, and parsing INFO. It runs nothing.
package redis

import (
	"fmt"
	"strconv"
	"strings"

	"troveng.dev/shared/errs"
)

// Version is a Redis release: 7.0.15.
type Version struct {
	Major, Minor, Patch int
}

// ParseVersion reads "7.0.15" (also "v=7.0.15" as redis-server --version prints it, or "redis-cli 7.0.15").
func ParseVersion(s string) (Version, error) {
	s = strings.TrimSpace(s)
	if i := strings.Index(s, "v="); i >= 0 {
		s = s[i+2:]
	} else if f := strings.Fields(s); len(f) > 1 {
		s = f[len(f)-1]
	}
	if i := strings.IndexAny(s, " \t"); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return Version{}, errs.BadRequestf("cannot read a Redis version from %q (want e.g. 7.0.15)", clip(s))
	}
	var n [3]int
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 {
			return Version{}, errs.BadRequestf("cannot read a Redis version from %q (want e.g. 7.0.15)", clip(s))
		}
		n[i] = v
	}
	return Version{Major: n[0], Minor: n[1], Patch: n[2]}, nil
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// Compare is -1, 0 or 1 as v is older than, the same as, or newer than w.
func (v Version) Compare(w Version) int {
	for _, d := range [3]int{v.Major - w.Major, v.Minor - w.Minor, v.Patch - w.Patch} {
		if d < 0 {
			return -1
		}
		if d > 0 {
			return 1
		}
	}
	return 0
}

// rdbVersions is the RDB format version each release line writes (src/rdb.h RDB_VERSION). A release reads
// every RDB version up to its own and refuses newer ones ("Can't handle RDB format version").
var rdbVersions = []struct {
	major, minor, rdb int
}{
	{2, 6, 6}, {2, 8, 6}, {3, 0, 6}, {3, 2, 7}, {4, 0, 8}, {5, 0, 9}, {6, 0, 9}, {6, 2, 9},
	{7, 0, 10}, {7, 2, 11}, {7, 4, 12},
}

// RDBVersion is the RDB format version v writes; ok is false for a release line this table does not know.
func RDBVersion(v Version) (rdb int, ok bool) {
	for _, e := range rdbVersions {
		if e.major == v.Major && e.minor == v.Minor {
			return e.rdb, true
		}
	}
	return 0, false
}

// CanLoad reports whether a server at version target can load an RDB file that a server at version source
// wrote (with rdb, the file's RDB version, when known; 0 takes it from the table). A target at the same or a
// newer release always can; an older one only when its own RDB version is at least the file's.
func CanLoad(source Version, rdb int, target Version) error {
	if target.Compare(source) >= 0 {
		return nil
	}
	if rdb == 0 {
		var ok bool
		if rdb, ok = RDBVersion(source); !ok {
			return errs.BadRequestf("the backup was made by Redis %s, newer than this guest's %s, and its RDB format version is unknown here: restore onto Redis %s or newer", source, target, source)
		}
	}
	t, ok := RDBVersion(target)
	if !ok {
		return errs.BadRequestf("this guest's Redis %s is older than the backup's %s and its RDB format version is unknown here: restore onto Redis %s or newer", target, source, source)
	}
	if rdb > t {
		return errs.BadRequestf("the backup is RDB format version %d (Redis %s) but this guest's Redis %s reads up to version %d: restore onto Redis %s or newer", rdb, source, target, t, source)
	}
	return nil
}

// Info is the parsed output of INFO: field -> value over all sections.
type Info map[string]string

// ParseInfo reads INFO's "field:value" lines (CRLF or LF), skipping "# Section" headers and blank lines.
func ParseInfo(out string) Info {
	info := Info{}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		info[k] = v
	}
	return info
}

// Int reads a numeric field; ok is false when it is missing or not a number.
func (i Info) Int(field string) (int64, bool) {
	v, ok := i[field]
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// Keyspace is the number of keys and of keys with a TTL in one logical database.
type Keyspace struct {
	Keys, Expires int64
}

// Keyspace reads the "db0:keys=2,expires=1,avg_ttl=99846" lines.
func (i Info) Keyspace() (map[int]Keyspace, error) {
	out := map[int]Keyspace{}
	for k, v := range i {
		if !strings.HasPrefix(k, "db") {
			continue
		}
		n, err := strconv.Atoi(k[2:])
		if err != nil {
			continue
		}
		var ks Keyspace
		for _, kv := range strings.Split(v, ",") {
			name, val, _ := strings.Cut(kv, "=")
			x, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				if name == "keys" || name == "expires" {
					return nil, errs.Internalf("INFO keyspace line %s:%s is not keys=N,expires=N,...", k, clip(v))
				}
				continue
			}
			switch name {
			case "keys":
				ks.Keys = x
			case "expires":
				ks.Expires = x
			}
		}
		out[n] = ks
	}
	return out, nil
}

// TotalKeys sums the keys of every logical database.
func (i Info) TotalKeys() (int64, error) {
	ks, err := i.Keyspace()
	if err != nil {
		return 0, err
	}
	var n int64
	for _, k := range ks {
		n += k.Keys
	}
	return n, nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// The layout of a redis-rdb backup, shared by the backup and restore strategies.
const (
	// RDBArtifact is a tar holding one file, dump.rdb.
	RDBArtifact = "rdb"
	// RDBFile is the file's name in the tar and in the data dir.
	RDBFile = "dump.rdb"
	// Manifest options: the RDB format version (when known), the key count INFO reported just before the
	// snapshot, and the server's version string.
	RDBVersionOption = "rdb_version"
	KeysOption       = "keys"
)
