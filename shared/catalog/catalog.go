package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"sort"
	"strings"

	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// Store is what the catalog needs of the storage service (storageclient.Client has it).
type Store interface {
	Put(ctx context.Context, key string, r io.Reader, meta map[string]string) (storagev1.Object, error)
	Get(ctx context.Context, key string, offset, length int64, w io.Writer, onStart func(storagev1.GetReply)) (storagev1.GetReply, error)
	ListAll(ctx context.Context, prefix string, f func(storagev1.Object) error) error
	Delete(ctx context.Context, key string) error
	PurgeStaged(ctx context.Context, prefix string) (int, error)
}

// maxManifest bounds a manifest read back (a frame index is not in it; a few KiB is typical).
const maxManifest = 4 << 20

// Catalog reads and writes manifests in a Store.
type Catalog struct {
	store Store
}

// New returns a catalog over store.
func New(store Store) *Catalog { return &Catalog{store: store} }

// Save writes m (validated) as its manifest object, replacing an earlier version.
func (c *Catalog) Save(ctx context.Context, m *Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return errs.Wrap(errs.Internal, err, "encoding the manifest of backup %s", m.ID)
	}
	meta := map[string]string{"backup": m.ID, "state": m.State, "instance": m.Instance, "engine": m.Engine}
	if _, err := c.store.Put(ctx, ManifestKey(m.ID), bytes.NewReader(b), meta); err != nil {
		return err
	}
	return nil
}

// Load reads one backup's manifest.
func (c *Catalog) Load(ctx context.Context, id string) (*Manifest, error) {
	if err := ids.Validate("backup", id); err != nil {
		return nil, err
	}
	var buf limitedBuffer
	if _, err := c.store.Get(ctx, ManifestKey(id), 0, 0, &buf, nil); err != nil {
		if errs.Is(err, errs.NotFound) {
			return nil, errs.NotFoundf("backup %s does not exist", id)
		}
		return nil, err
	}
	if buf.over {
		return nil, errs.New(errs.Corrupt, "manifest of backup %s is larger than %d bytes", id, maxManifest)
	}
	var m Manifest
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		return nil, errs.New(errs.Corrupt, "manifest of backup %s is not valid JSON: %v", id, err)
	}
	if m.ID != id {
		return nil, errs.New(errs.Corrupt, "manifest stored for backup %s names backup %q", id, m.ID)
	}
	if err := m.Validate(); err != nil {
		return nil, errs.Wrap(errs.Corrupt, err, "manifest of backup %s", id)
	}
	return &m, nil
}

// Filter selects backups in List; empty fields match everything.
type Filter struct {
	Instance string
	Engine   string
	State    string
}

func (f Filter) match(m *Manifest) bool {
	return (f.Instance == "" || f.Instance == m.Instance) && (f.Engine == "" || f.Engine == m.Engine) &&
		(f.State == "" || strings.EqualFold(f.State, m.State))
}

// List returns the matching manifests, oldest first. Objects under backups/ that are not manifests are
// artifacts; a backup whose manifest can't be read is reported through onBad (if set) and skipped, so one
// damaged manifest does not hide the rest of the catalog.
func (c *Catalog) List(ctx context.Context, f Filter, onBad func(id string, err error)) ([]*Manifest, error) {
	var idsSeen []string
	err := c.store.ListAll(ctx, Prefix, func(o storagev1.Object) error {
		rest := strings.TrimPrefix(o.Key, Prefix)
		id, name, ok := strings.Cut(rest, "/")
		if ok && name == "manifest.json" {
			idsSeen = append(idsSeen, id)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []*Manifest
	for _, id := range idsSeen {
		m, err := c.Load(ctx, id)
		if err != nil {
			if onBad != nil {
				onBad(id, err)
			}
			continue
		}
		if f.match(m) {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Remove deletes every object under the backup's prefix, its manifest last, so an interrupted delete still
// leaves a manifest that says what remains; staged uploads under the prefix are dropped first. It does
// not check dependents: callers do (Set.Dependents).
func (c *Catalog) Remove(ctx context.Context, id string) error {
	if err := ids.Validate("backup", id); err != nil {
		return err
	}
	prefix := Prefix + id + "/"
	// Uploads a writer that is gone (a killed guest, a cancelled exec) left unfinished go first.
	if _, err := c.store.PurgeStaged(ctx, prefix); err != nil {
		return err
	}
	var keys []string
	if err := c.store.ListAll(ctx, prefix, func(o storagev1.Object) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		return err
	}
	if len(keys) == 0 {
		return errs.NotFoundf("backup %s does not exist", id)
	}
	manifest := ManifestKey(id)
	for _, k := range keys {
		if k == manifest {
			continue
		}
		if err := c.store.Delete(ctx, k); err != nil && !errs.Is(err, errs.NotFound) {
			return err
		}
	}
	if err := c.store.Delete(ctx, manifest); err != nil && !errs.Is(err, errs.NotFound) {
		return err
	}
	return nil
}

// limitedBuffer keeps at most maxManifest bytes and notes when more came.
type limitedBuffer struct {
	bytes.Buffer
	over bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > maxManifest {
		b.over = true
		return 0, errs.New(errs.Corrupt, "manifest larger than %d bytes", maxManifest)
	}
	return b.Buffer.Write(p)
}
