package cli

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"troveng.dev/shared/errs"
)

// Pure helpers of the guest demo: the sample data as redis-cli commands, and the comparison of two
// datasets read as key -> DUMP.

// demoKeysPerType is how many keys of each kind the demo loads.
const demoKeysPerType = 500

// demoKinds are the kinds of sample keys, each a prefix and a command maker.
var demoKinds = []struct {
	prefix string
	cmd    func(key string, i int) string
}{
	{"demo:str:", func(k string, i int) string { return fmt.Sprintf("SET %s %s", k, demoWord(i, 24)) }},
	{"demo:counter:", func(k string, i int) string { return fmt.Sprintf("SET %s %d", k, i*7919) }},
	{"demo:hash:", func(k string, i int) string {
		return fmt.Sprintf("HSET %s name %s email %s@example.com visits %d", k, demoWord(i, 8), demoWord(i+1, 6), i%97)
	}},
	{"demo:list:", func(k string, i int) string {
		parts := []string{"RPUSH", k}
		for j := range 8 {
			parts = append(parts, demoWord(i*8+j, 10))
		}
		return strings.Join(parts, " ")
	}},
	// Integer members keep small sets in the intset encoding, whose DUMP does not depend on hash order.
	{"demo:set:", func(k string, i int) string {
		parts := []string{"SADD", k}
		for j := range 6 {
			parts = append(parts, strconv.Itoa(i*31+j*1009))
		}
		return strings.Join(parts, " ")
	}},
	{"demo:zset:", func(k string, i int) string {
		parts := []string{"ZADD", k}
		for j := range 5 {
			parts = append(parts, strconv.FormatFloat(float64(i+j)/4, 'f', -1, 64), demoWord(i*5+j, 7))
		}
		return strings.Join(parts, " ")
	}},
}

// demoWord is a deterministic lowercase word of n letters.
func demoWord(i, n int) string {
	b := make([]byte, n)
	x := uint64(i)*0x9E3779B97F4A7C15 + 1
	for j := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[j] = 'a' + byte(x%26)
	}
	return string(b)
}

// demoRedisCommands is the sample data as redis-cli commands, one a line, perKind keys of every kind, and
// how many keys that is.
func demoRedisCommands(perKind int) ([]byte, int) {
	var b bytes.Buffer
	for _, k := range demoKinds {
		for i := range perKind {
			key := k.prefix + strconv.Itoa(i)
			b.WriteString(k.cmd(key, i))
			b.WriteByte('\n')
		}
	}
	return b.Bytes(), perKind * len(demoKinds)
}

// redisErrors are the error replies in redis-cli --no-raw output.
func redisErrors(out []byte) []string {
	var bad []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "(error)") {
			bad = append(bad, l)
		}
	}
	return bad
}

// parseScan reads `redis-cli --scan` output: one key a line, sorted, without duplicates (SCAN may repeat).
func parseScan(out []byte) []string {
	seen := map[string]bool{}
	var keys []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimRight(l, "\r")
		if l == "" || seen[l] {
			continue
		}
		seen[l] = true
		keys = append(keys, l)
	}
	sort.Strings(keys)
	return keys
}

// dumpScript asks for the DUMP of every key, one command a line. The demo's keys have no spaces or quotes.
func dumpScript(keys []string) []byte {
	var b bytes.Buffer
	for _, k := range keys {
		b.WriteString("DUMP ")
		b.WriteString(k)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// parseDumps pairs the keys with the --no-raw replies of dumpScript(keys): one quoted line each.
func parseDumps(keys []string, out []byte) (map[string]string, error) {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) != len(keys) {
		return nil, errs.Internalf("redis-cli answered %d lines to %d DUMP commands", len(lines), len(keys))
	}
	m := make(map[string]string, len(keys))
	for i, k := range keys {
		m[k] = strings.TrimRight(lines[i], "\r")
	}
	return m, nil
}

// dumpBytes is the size of a dataset's serialization as redis-cli quoted it (an approximation of its bytes).
func dumpBytes(m map[string]string) int64 {
	var n int64
	for _, v := range m {
		n += int64(len(v))
	}
	return n
}

// compareDumps lists the differences between two datasets, sorted by key: keys only in one, and keys
// whose serializations differ (a key that no longer exists DUMPs as "(nil)").
func compareDumps(want, got map[string]string) []string {
	var diffs []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok || g == "(nil)":
			diffs = append(diffs, k+": missing")
		case g != w:
			diffs = append(diffs, k+": value differs")
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, k+": unexpected")
		}
	}
	sort.Strings(diffs)
	return diffs
}

// unreadableDumps are the keys whose DUMP reply is not a quoted serialization (nil or an error), sorted.
func unreadableDumps(m map[string]string) []string {
	var bad []string
	for k, v := range m {
		if !strings.HasPrefix(v, "\"") {
			bad = append(bad, k+": "+v)
		}
	}
	sort.Strings(bad)
	return bad
}
