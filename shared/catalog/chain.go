package catalog

import (
	"sort"
	"time"

	"troveng.dev/shared/errs"
)

// Set is the catalog's manifests by id, as List read them.
type Set map[string]*Manifest

// NewSet indexes manifests by id.
func NewSet(ms []*Manifest) Set {
	s := make(Set, len(ms))
	for _, m := range ms {
		s[m.ID] = m
	}
	return s
}

// Chain returns the backups a restore of id needs, in apply order: the full backup first, then each
// incremental up to id. Every element must exist and be COMPLETED, or the chain is refused before any byte
// moves: a missing element is not_found, one not completed is conflict.
func (s Set) Chain(id string) ([]*Manifest, error) {
	var rev []*Manifest
	seen := map[string]bool{}
	for cur := id; ; {
		m, ok := s[cur]
		if !ok {
			if cur == id {
				return nil, errs.NotFoundf("backup %s does not exist", id)
			}
			return nil, errs.NotFoundf("backup %s needs %s, which is missing from the catalog: the chain is broken", id, cur)
		}
		if seen[cur] {
			return nil, errs.New(errs.Corrupt, "backup %s: its chain loops at %s", id, cur)
		}
		seen[cur] = true
		if m.State != StateCompleted {
			return nil, errs.Conflictf("backup %s needs %s, which is %s, not COMPLETED", id, cur, m.State)
		}
		rev = append(rev, m)
		if m.Type == TypeFull {
			break
		}
		parent := m.Parent
		if p, ok := s[parent]; ok && (p.Engine != m.Engine || p.Instance != m.Instance) {
			return nil, errs.New(errs.Corrupt, "backup %s: parent %s belongs to another instance or engine", cur, parent)
		}
		cur = parent
	}
	out := make([]*Manifest, len(rev))
	for i, m := range rev {
		out[len(rev)-1-i] = m
	}
	return out, nil
}

// Dependents returns the ids of every backup whose chain goes through id (children, grandchildren ...),
// children before their own children.
func (s Set) Dependents(id string) []string {
	children := map[string][]string{}
	for _, m := range s {
		if m.Type == TypeIncremental {
			children[m.Parent] = append(children[m.Parent], m.ID)
		}
	}
	var out []string
	queue := []string{id}
	seen := map[string]bool{id: true}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		kids := children[cur]
		sort.Strings(kids)
		for _, k := range kids {
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
				queue = append(queue, k)
			}
		}
	}
	return out
}

// Policy is a retention policy. A backup is kept if either rule keeps it; whole chains are kept or
// dropped together, so no incremental ever loses its parent.
type Policy struct {
	// KeepFullChains keeps the newest N chains (a full backup and its incrementals) per instance and engine.
	KeepFullChains int
	// KeepNewerThan keeps every chain with a backup newer than this (0: rule off).
	KeepNewerThan time.Duration
}

// Prune returns the ids a policy drops, dependents before what they depend on (the order to delete in).
// Chains with a RUNNING backup are never dropped (a job may be writing them); FAILED backups share their
// chain's fate; broken chains (no full backup) are left alone.
func (s Set) Prune(p Policy, now time.Time) ([]string, error) {
	if p.KeepFullChains <= 0 && p.KeepNewerThan <= 0 {
		return nil, errs.BadRequestf("a retention policy needs keep-last N chains or keep-newer-than a duration; with neither it would delete every backup")
	}
	type chain struct {
		root    *Manifest
		members []string
		newest  time.Time
		running bool
	}
	chains := map[string]*chain{}
	for _, m := range s {
		root := s.root(m)
		if root == nil {
			// A broken chain (its full backup is gone) is left for an operator to look at (verify reports
			// it): retention never deletes what it cannot reason about.
			continue
		}
		c := chains[root.ID]
		if c == nil {
			c = &chain{root: root}
			chains[root.ID] = c
		}
		c.members = append(c.members, m.ID)
		if m.Created.After(c.newest) {
			c.newest = m.Created
		}
		if m.State == StateRunning {
			c.running = true
		}
	}
	groups := map[string][]*chain{}
	for _, c := range chains {
		k := c.root.Instance + "\x00" + c.root.Engine
		groups[k] = append(groups[k], c)
	}
	var drop []string
	for _, cs := range groups {
		sort.Slice(cs, func(i, j int) bool { return cs[i].root.Created.After(cs[j].root.Created) })
		kept := 0
		for _, c := range cs {
			keep := c.running
			if p.KeepFullChains > 0 && c.root.State == StateCompleted && kept < p.KeepFullChains {
				keep = true
				kept++
			}
			if p.KeepNewerThan > 0 && now.Sub(c.newest) < p.KeepNewerThan {
				keep = true
			}
			if !keep {
				drop = append(drop, s.deleteOrder(c.root.ID)...)
			}
		}
	}
	return drop, nil
}

// root follows parents to the full backup (nil if the chain is broken).
func (s Set) root(m *Manifest) *Manifest {
	seen := map[string]bool{}
	for m != nil && m.Type == TypeIncremental {
		if seen[m.ID] {
			return nil
		}
		seen[m.ID] = true
		m = s[m.Parent]
	}
	return m
}

// deleteOrder lists id and its dependents, deepest first.
func (s Set) deleteOrder(id string) []string {
	deps := s.Dependents(id)
	out := make([]string, 0, len(deps)+1)
	for i := len(deps) - 1; i >= 0; i-- {
		out = append(out, deps[i])
	}
	return append(out, id)
}
