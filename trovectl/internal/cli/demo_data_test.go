package cli

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestDemoRedisCommands(t *testing.T) {
	script, n := demoRedisCommands(3)
	lines := strings.Split(strings.TrimRight(string(script), "\n"), "\n")
	if n != 3*len(demoKinds) || len(lines) != n {
		t.Fatalf("n %d, %d lines, want %d", n, len(lines), 3*len(demoKinds))
	}
	keys := map[string]bool{}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 3 || strings.ContainsAny(l, "\"'") {
			t.Fatalf("bad command %q", l)
		}
		if keys[f[1]] {
			t.Fatalf("key %s twice", f[1])
		}
		keys[f[1]] = true
	}
	again, _ := demoRedisCommands(3)
	if !bytes.Equal(script, again) {
		t.Fatal("the sample data is not deterministic")
	}
}

func TestParseScanAndDumps(t *testing.T) {
	keys := parseScan([]byte("b\na\r\nb\n\nc\n"))
	if !slices.Equal(keys, []string{"a", "b", "c"}) {
		t.Fatalf("keys %v", keys)
	}
	if got := string(dumpScript(keys)); got != "DUMP a\nDUMP b\nDUMP c\n" {
		t.Fatalf("script %q", got)
	}
	m, err := parseDumps(keys, []byte("\"\\x00a\"\n\"\\x00b\"\n(nil)\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m["a"] != `"\x00a"` || m["c"] != "(nil)" {
		t.Fatalf("dumps %v", m)
	}
	if bad := unreadableDumps(m); !slices.Equal(bad, []string{"c: (nil)"}) {
		t.Fatalf("unreadable %v", bad)
	}
	if _, err := parseDumps(keys, []byte("\"x\"\n")); err == nil {
		t.Fatal("a short answer was accepted")
	}
}

func TestCompareDumps(t *testing.T) {
	want := map[string]string{"a": `"1"`, "b": `"2"`, "c": `"3"`, "d": `"4"`}
	if d := compareDumps(want, map[string]string{"a": `"1"`, "b": `"2"`, "c": `"3"`, "d": `"4"`}); len(d) != 0 {
		t.Fatalf("identical datasets differ: %v", d)
	}
	got := map[string]string{"a": `"1"`, "b": `"X"`, "d": "(nil)", "e": `"5"`}
	d := compareDumps(want, got)
	if !slices.Equal(d, []string{"b: value differs", "c: missing", "d: missing", "e: unexpected"}) {
		t.Fatalf("diffs %v", d)
	}
}

func TestRedisErrors(t *testing.T) {
	bad := redisErrors([]byte("OK\n(integer) 3\n(error) WRONGTYPE Operation\nOK\n"))
	if len(bad) != 1 || !strings.Contains(bad[0], "WRONGTYPE") {
		t.Fatalf("errors %v", bad)
	}
}
