package catalog

import (
	"reflect"
	"testing"
	"time"

	"troveng.dev/shared/errs"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func mk(id, parent string, hours int, state string) *Manifest {
	m := &Manifest{ManifestVersion: ManifestVersion, ID: id, Instance: "db1", Engine: "mariadb", Strategy: "mariabackup",
		Type: TypeFull, State: state, Created: t0.Add(time.Duration(hours) * time.Hour)}
	if parent != "" {
		m.Type, m.Parent = TypeIncremental, parent
	}
	m.Artifacts = []Artifact{{Name: "data", Key: ArtifactKey(id, "data")}}
	return m
}

func idsOf(ms []*Manifest) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}

func TestChainOrderAndRefusals(t *testing.T) {
	s := NewSet([]*Manifest{
		mk("f1", "", 0, StateCompleted), mk("i1", "f1", 1, StateCompleted), mk("i2", "i1", 2, StateCompleted),
		mk("i3", "gone", 3, StateCompleted), mk("i4", "i2", 4, StateFailed), mk("i5", "i4", 5, StateCompleted),
	})
	c, err := s.Chain("i2")
	if err != nil || !reflect.DeepEqual(idsOf(c), []string{"f1", "i1", "i2"}) {
		t.Fatalf("chain %v %v", idsOf(c), err)
	}
	if c, err := s.Chain("f1"); err != nil || len(c) != 1 {
		t.Fatalf("full alone: %v %v", idsOf(c), err)
	}
	if _, err := s.Chain("nope"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	if _, err := s.Chain("i3"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("missing element: %v", err)
	}
	if _, err := s.Chain("i5"); !errs.Is(err, errs.Conflict) {
		t.Fatalf("failed element: %v", err)
	}
	loop := NewSet([]*Manifest{mk("a", "b", 0, StateCompleted), mk("b", "a", 1, StateCompleted)})
	if _, err := loop.Chain("a"); !errs.Is(err, errs.Corrupt) {
		t.Fatalf("loop: %v", err)
	}
	other := mk("x", "f1", 1, StateCompleted)
	other.Instance = "db2"
	s["x"] = other
	if _, err := s.Chain("x"); !errs.Is(err, errs.Corrupt) {
		t.Fatalf("foreign parent: %v", err)
	}
}

func TestDependents(t *testing.T) {
	s := NewSet([]*Manifest{mk("f1", "", 0, StateCompleted), mk("i1", "f1", 1, StateCompleted),
		mk("i2", "i1", 2, StateCompleted), mk("j1", "f1", 3, StateCompleted), mk("f2", "", 4, StateCompleted)})
	if got := s.Dependents("f1"); !reflect.DeepEqual(got, []string{"i1", "j1", "i2"}) {
		t.Fatalf("dependents %v", got)
	}
	if got := s.Dependents("f2"); len(got) != 0 {
		t.Fatalf("f2 dependents %v", got)
	}
	if got := s.deleteOrder("f1"); !reflect.DeepEqual(got, []string{"i2", "j1", "i1", "f1"}) {
		t.Fatalf("delete order %v", got)
	}
}

func TestPrune(t *testing.T) {
	s := NewSet([]*Manifest{
		mk("f1", "", 0, StateCompleted), mk("i1", "f1", 1, StateCompleted),
		mk("f2", "", 10, StateCompleted), mk("i2", "f2", 11, StateFailed),
		mk("f3", "", 20, StateCompleted), mk("i3", "f3", 21, StateCompleted),
		mk("f4", "", 30, StateRunning),
		mk("o1", "lost", 2, StateCompleted),
	})
	now := t0.Add(40 * time.Hour)
	got, err := s.Prune(Policy{KeepFullChains: 1}, now)
	if err != nil || !reflect.DeepEqual(got, []string{"i2", "f2", "i1", "f1"}) {
		t.Fatalf("keep 1: %v %v", got, err)
	}
	got, _ = s.Prune(Policy{KeepNewerThan: 30 * time.Hour}, now)
	if !reflect.DeepEqual(got, []string{"i1", "f1"}) {
		t.Fatalf("newer than 25h: %v", got)
	}
	got, _ = s.Prune(Policy{KeepFullChains: 5}, now)
	if len(got) != 0 {
		t.Fatalf("keep 5: %v", got)
	}
	if _, err := s.Prune(Policy{}, now); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("empty policy: %v", err)
	}
}

func TestManifestValidate(t *testing.T) {
	good := mk("b1", "", 0, StateCompleted)
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(m *Manifest){
		func(m *Manifest) { m.ManifestVersion = 2 },
		func(m *Manifest) { m.ID = "a.b" },
		func(m *Manifest) { m.Instance = "*" },
		func(m *Manifest) { m.State = "DONE" },
		func(m *Manifest) { m.Type = "diff" },
		func(m *Manifest) { m.Parent = "x" },
		func(m *Manifest) { m.Type, m.Parent = TypeIncremental, "b1" },
		func(m *Manifest) { m.Artifacts[0].Key = "backups/other/data" },
		func(m *Manifest) { m.Artifacts[0].Name = "../x" },
		func(m *Manifest) { m.Artifacts = nil },
		func(m *Manifest) { m.Engine = "" },
	}
	for i, f := range bad {
		m := mk("b1", "", 0, StateCompleted)
		f(m)
		if err := m.Validate(); !errs.Is(err, errs.BadRequest) {
			t.Errorf("case %d: %v", i, err)
		}
	}
}
