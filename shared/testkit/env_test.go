package testkit

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseEnv(t *testing.T) {
	in := `# Written by scripts/setup-containers.sh
DOCKER_HOST=unix:///run/podman/podman.sock

export TESTCONTAINERS_RYUK_DISABLED=true
QUOTED="a b"
SINGLE='c=d'
EMPTY=
`
	got, err := ParseEnv(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]string{
		{"DOCKER_HOST", "unix:///run/podman/podman.sock"},
		{"TESTCONTAINERS_RYUK_DISABLED", "true"},
		{"QUOTED", "a b"},
		{"SINGLE", "c=d"},
		{"EMPTY", ""},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"no equals sign", "1X=y", "A-B=c", "=v"} {
		if _, err := ParseEnv(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestTailLines(t *testing.T) {
	if got := tailLines("a\nb\nc\n", 2); got != "b\nc" {
		t.Fatalf("got %q", got)
	}
	if got := tailLines("a", 5); got != "a" {
		t.Fatalf("got %q", got)
	}
}
