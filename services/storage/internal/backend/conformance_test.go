package backend

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/natstest"
	"troveng.dev/shared/s3test"
)

// strategyUnderTest opens a fresh, empty store of one strategy for each subtest.
type strategyUnderTest struct {
	name string
	// open returns an empty store (its own directory, prefix or bucket) and a function listing what a
	// failed put may have left behind (temporary files, multipart uploads, stream messages): it must be
	// empty after every failed put into an empty store.
	open func(t *testing.T) (Backend, func() []string)
	// partSize is the size above which the strategy uses its multipart/parallel paths (0: none).
	partSize int64
	// nestedKeys: keys "a" and "a/b" can both exist (not on a posix-backed S3 server, see s3.go).
	nestedKeys bool
}

var storeSeq atomic.Int64

func fsStrategy() strategyUnderTest {
	return strategyUnderTest{
		name:       "fs",
		nestedKeys: true,
		open: func(t *testing.T) (Backend, func() []string) {
			dir := t.TempDir()
			b, err := NewFS(dir)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b, func() []string {
				entries, err := os.ReadDir(filepath.Join(dir, fsTmpDir))
				if err != nil {
					t.Fatal(err)
				}
				var names []string
				for _, e := range entries {
					names = append(names, "tmp/"+e.Name())
				}
				return names
			}
		},
	}
}

func s3Strategy(srv *s3test.Server) strategyUnderTest {
	const partSize = S3MinPartSize
	return strategyUnderTest{
		name:     "s3",
		partSize: partSize,
		open: func(t *testing.T) (Backend, func() []string) {
			prefix := fmt.Sprintf("t%d/", storeSeq.Add(1))
			b, err := NewS3(t.Context(), s3ConfigFor(srv, prefix, partSize, 4))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b, func() []string { return s3Leftovers(t, b.(*s3Backend)) }
		},
	}
}

func s3ConfigFor(srv *s3test.Server, prefix string, partSize int64, concurrency int) S3Config {
	return S3Config{
		Endpoint: srv.Endpoint(), Region: srv.Region(), Bucket: srv.Bucket(), Prefix: prefix,
		AccessKey: srv.AccessKey(), SecretKey: srv.SecretKey(), PathStyle: true,
		PartSize: partSize, Concurrency: concurrency,
	}
}

// s3Leftovers lists unfinished multipart uploads and any object (data or record) under the store's prefix.
func s3Leftovers(t *testing.T, b *s3Backend) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	ups, err := b.client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &b.bucket, Prefix: &b.prefix})
	if err != nil {
		t.Fatalf("list multipart uploads: %v", err)
	}
	for _, u := range ups.Uploads {
		out = append(out, "upload "+*u.Key)
	}
	objs, err := b.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &b.bucket, Prefix: &b.prefix})
	if err != nil {
		t.Fatalf("list objects: %v", err)
	}
	for _, o := range objs.Contents {
		out = append(out, "object "+*o.Key)
	}
	return out
}

func natsStrategy(srv *natstest.Server) strategyUnderTest {
	return strategyUnderTest{
		name:       "nats",
		nestedKeys: true,
		open: func(t *testing.T) (Backend, func() []string) {
			js, err := jetstream.New(srv.Connect())
			if err != nil {
				t.Fatal(err)
			}
			bucket := fmt.Sprintf("t%d", storeSeq.Add(1))
			b, err := NewNATS(t.Context(), js, bucket)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b, func() []string {
				s, err := js.Stream(context.Background(), "OBJ_"+bucket)
				if err != nil {
					t.Fatal(err)
				}
				// Chunks only: a deleted object leaves its (empty) info message behind, by design.
				info, err := s.Info(context.Background(), jetstream.WithSubjectFilter("$O."+bucket+".C.>"))
				if err != nil {
					t.Fatal(err)
				}
				var left []string
				for subj, n := range info.State.Subjects {
					left = append(left, fmt.Sprintf("%d chunk messages on %s", n, subj))
				}
				return left
			}
		},
	}
}

// TestConformance runs one suite against every strategy: fs on a temporary directory, s3 on a real
// versitygw, nats on an embedded NATS server.
func TestConformance(t *testing.T) {
	s3srv := s3test.Start(t)
	natsSrv := natstest.Start(t)
	for _, st := range []strategyUnderTest{fsStrategy(), s3Strategy(s3srv), natsStrategy(natsSrv)} {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			runConformance(t, st)
		})
	}
}

func runConformance(t *testing.T, st strategyUnderTest) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st strategyUnderTest)
	}{
		{"RoundTrip", testRoundTrip},
		{"Empty", testEmpty},
		{"Overwrite", testOverwrite},
		{"Metadata", testMetadata},
		{"Ranges", testRanges},
		{"Stat", testStat},
		{"ListPagination", testListPagination},
		{"KeysWithSlashAndUnicode", testKeys},
		{"Delete", testDelete},
		{"NotFoundAndInvalid", testNotFoundAndInvalid},
		{"ReaderFailsMidway", testReaderFails},
		{"CancelledContext", testCancelled},
		{"Large", testLarge},
		{"Ping", testPing},
		{"Staged", testStaged},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, st) })
	}
}

// randomBytes returns n incompressible bytes from a seeded generator.
func randomBytes(n int, seed uint64) []byte {
	var s [32]byte
	s[0] = byte(seed)
	s[1] = byte(seed >> 8)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func put(t *testing.T, b Backend, key string, data []byte, meta map[string]string) ObjectInfo {
	t.Helper()
	info, err := b.Put(t.Context(), key, bytes.NewReader(data), meta)
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	return info
}

func get(t *testing.T, b Backend, key string, offset, length int64) ([]byte, ObjectInfo) {
	t.Helper()
	rc, info, err := b.Get(t.Context(), key, offset, length)
	if err != nil {
		t.Fatalf("get %q [%d,+%d): %v", key, offset, length, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("get %q [%d,+%d): read: %v", key, offset, length, err)
	}
	return data, info
}

func wantCode(t *testing.T, err error, code errs.Code, what string) {
	t.Helper()
	if errs.CodeOf(err) != code {
		t.Fatalf("%s: got error %v (code %q), want code %q", what, err, errs.CodeOf(err), code)
	}
}

func sameInfo(t *testing.T, got, want ObjectInfo, what string) {
	t.Helper()
	if got.Key != want.Key || got.Size != want.Size || got.SHA256 != want.SHA256 || !mapsEqual(got.Metadata, want.Metadata) {
		t.Fatalf("%s: info %+v, want %+v", what, got, want)
	}
	if d := got.Modified.Sub(want.Modified).Abs(); d > 2*time.Second {
		t.Fatalf("%s: modified %v, want about %v", what, got.Modified, want.Modified)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func listAll(t *testing.T, b Backend, prefix string) []string {
	t.Helper()
	var keys []string
	after := ""
	for range 100 {
		page, next, err := b.List(t.Context(), prefix, after, 0)
		if err != nil {
			t.Fatalf("list %q: %v", prefix, err)
		}
		for _, o := range page {
			keys = append(keys, o.Key)
		}
		if next == "" {
			return keys
		}
		after = next
	}
	t.Fatal("list does not end")
	return nil
}

func testRoundTrip(t *testing.T, st strategyUnderTest) {
	b, _ := st.open(t)
	data := randomBytes(100<<10+7, 1)
	before := time.Now()
	info := put(t, b, "backups/one/data", data, map[string]string{"engine": "mariadb"})
	want := ObjectInfo{Key: "backups/one/data", Size: int64(len(data)), SHA256: sha(data), Metadata: map[string]string{"engine": "mariadb"}, Modified: before}
	sameInfo(t, info, want, "put")
	got, ginfo := get(t, b, "backups/one/data", 0, -1)
	if !bytes.Equal(got, data) {
		t.Fatalf("get returned %d bytes (sha %s), want %d (sha %s)", len(got), sha(got), len(data), sha(data))
	}
	sameInfo(t, ginfo, info, "get info")
}

func testEmpty(t *testing.T, st strategyUnderTest) {
	b, _ := st.open(t)
	info := put(t, b, "empty", nil, nil)
	if info.Size != 0 || info.SHA256 != sha(nil) {
		t.Fatalf("empty put: %+v", info)
	}
	for _, length := range []int64{-1, 0, 10} {
		got, ginfo := get(t, b, "empty", 0, length)
		if len(got) != 0 || ginfo.Size != 0 {
			t.Fatalf("get empty (length %d): %d bytes, info %+v", length, len(got), ginfo)
		}
	}
	_, _, err := b.Get(t.Context(), "empty", 1, -1)
	wantCode(t, err, errs.BadRequest, "get empty at offset 1")
	sinfo, err := b.Stat(t.Context(), "empty")
	if err != nil {
		t.Fatal(err)
	}
	sameInfo(t, sinfo, info, "stat empty")
}

func testOverwrite(t *testing.T, st strategyUnderTest) {
	b, _ := st.open(t)
	first := randomBytes(3000, 2)
	second := randomBytes(1000, 3)
	put(t, b, "k", first, map[string]string{"v": "1", "only-first": "x"})
	info := put(t, b, "k", second, map[string]string{"v": "2"})
	got, ginfo := get(t, b, "k", 0, -1)
	if !bytes.Equal(got, second) {
		t.Fatalf("after overwrite get returned %d bytes, want the second version (%d)", len(got), len(second))
	}
	sameInfo(t, ginfo, info, "get after overwrite")
	sinfo, err := b.Stat(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	sameInfo(t, sinfo, info, "stat after overwrite")
	if keys := listAll(t, b, ""); !slices.Equal(keys, []string{"k"}) {
		t.Fatalf("list after overwrite: %q", keys)
	}
	// A larger second version (multipart where the strategy has it) replacing a small one.
	if st.partSize > 0 {
		big := randomBytes(int(st.partSize)*2+5, 4)
		put(t, b, "k", big, nil)
		got, _ := get(t, b, "k", 0, -1)
		if sha(got) != sha(big) {
			t.Fatal("multipart overwrite: wrong bytes")
		}
	}
}

func testMetadata(t *testing.T, st strategyUnderTest) {
	b, _ := st.open(t)
	meta := map[string]string{
		"engine": "postgresql", "Engine-Version": "15.4", "backup.type": "incremental", "parent_id": "01h",
		"note": "naïve façade 日本語 with spaces & symbols=;,\"'", "empty": "",
	}
	put(t, b, "m", []byte("x"), meta)
	sinfo, err := b.Stat(t.Context(), "m")
	if err != nil {
		t.Fatal(err)
	}
	if !mapsEqual(sinfo.Metadata, meta) {
		t.Fatalf("stat metadata %q, want %q", sinfo.Metadata, meta)
	}
	page, _, err := b.List(t.Context(), "m", "", 10)
	if err != nil || len(page) != 1 || !mapsEqual(page[0].Metadata, meta) {
		t.Fatalf("list metadata: %+v, %v", page, err)
	}
	put(t, b, "none", []byte("x"), nil)
	if sinfo, _ := b.Stat(t.Context(), "none"); sinfo.Metadata != nil {
		t.Fatalf("no metadata came back as %q", sinfo.Metadata)
	}
	for name, bad := range map[string]map[string]string{
		"key with space":   {"a b": "x"},
		"key with slash":   {"a/b": "x"},
		"empty key":        {"": "x"},
		"control in value": {"k": "a\nb"},
		"too large":        {"k": strings.Repeat("v", MaxMetadataBytes)},
		"long key":         {strings.Repeat("k", MaxMetadataKeyLen+1): "v"},
	} {
		_, err := b.Put(t.Context(), "bad-meta", strings.NewReader("x"), bad)
		wantCode(t, err, errs.BadRequest, "put with metadata: "+name)
	}
	if _, err := b.Stat(t.Context(), "bad-meta"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("put with bad metadata stored something: %v", err)
	}
}

func testRanges(t *testing.T, st strategyUnderTest) {
	b, _ := st.open(t)
	size := int64(1<<20 + 3)
	if st.partSize > 0 {
		size = 2*st.partSize + 3 // so long ranges take the parallel path
	}
	data := randomBytes(int(size), 5)
	put(t, b, "r", data, nil)
	cases := []struct {
		name           string
		offset, length int64
		want           []byte
	}{
		{"start", 0, 10, data[:10]},
		{"middle", 500, 1000, data[500:1500]},
		{"to end", size - 7, -1, data[size-7:]},
		{"length past end is cut", size - 5, 100, data[size-5:]},
		{"zero length", 10, 0, nil},
		{"whole", 0, -1, data},
		{"last byte", size - 1, 1, data[size-1:]},
	}
	if st.partSize > 0 {
		cases = append(cases,
			struct {
				name           string
				offset, length int64
				want           []byte
			}{"across parts", st.partSize - 100, st.partSize + 50, data[st.partSize-100 : 2*st.partSize-50]},
			struct {
				name           string
				offset, length int64
				want           []byte
			}{"unaligned to end", 12345, -1, data[12345:]})
	}
	for _, c := range cases {
		got, info := get(t, b, "r", c.offset, c.length)
		if !bytes.Equal(got, c.want) {
			t.Fatalf("range %s [%d,+%d): got %d bytes, want %d (equal prefix: %v)", c.name, c.offset, c.length, len(got), len(c.want), bytes.HasPrefix(c.want, got))
		}
		if info.Size != size || info.SHA256 != sha(data) {
			t.Fatalf("range %s: info %+v describes not the whole object", c.name, info)
		}
	}
	for _, c := range []struct {
		name           string
		offset, length int64
	}{{"at end", size, -1}, {"past end", size + 1, 10}, {"far past end", 1 << 40, -1}, {"negative offset", -1, 10}} {
		rc, _, err := b.Get(t.Context(), "r", c.offset, c.length)
		if rc != nil {
			rc.Close()
		}
		wantCode(t, err, errs.BadRequest, "range "+c.name)
	}
}

func testStat(t *testing.T, st strategyUnderTest) {
	b, _ := st.open(t)
	before := time.Now().Add(-2 * time.Second)
	data := randomBytes(4321, 6)
	info := put(t, b, "dir/stat-me", data, map[string]string{"a": "b"})
	after := time.Now().Add(2 * time.Second)
	sinfo, err := b.Stat(t.Context(), "dir/stat-me")
	if err != nil {
		t.Fatal(err)
	}
	sameInfo(t, sinfo, info, "stat")
	if sinfo.Size != 4321 || sinfo.SHA256 != sha(data) {
		t.Fatalf("stat: %+v", sinfo)
	}
	if sinfo.Modified.Before(before) || sinfo.Modified.After(after) {
		t.Fatalf("stat: modified %v not within the put (%v..%v)", sinfo.Modified, before, after)
	}
}

func testListPagination(t *testing.T, st strategyUnderTest) {
	b, _ := st.open(t)
	var want []string
	for i := 24; i >= 0; i-- { // put out of order: the listing must sort
		k := fmt.Sprintf("list/k%02d", i)
		put(t, b, k, []byte(k), map[string]string{"i": fmt.Sprint(i)})
		want = append(want, k)
	}
	slices.Sort(want)
	put(t, b, "lisa", []byte("x"), nil)
	put(t, b, "other/x", []byte("x"), nil)

	var got []string
	after, pages := "", 0
	for {
		page, next, err := b.List(t.Context(), "list/", after, 10)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(page) > 10 {
			t.Fatalf("page %d has %d entries, limit 10", pages, len(page))
		}
		for _, o := range page {
			got = append(got, o.Key)
			if o.Size != int64(len(o.Key)) || o.SHA256 != sha([]byte(o.Key)) || o.Metadata["i"] == "" {
				t.Fatalf("list entry %+v lacks its record", o)
			}
		}
		if next == "" {
			break
		}
		if next != page[len(page)-1].Key {
			t.Fatalf("continuation token %q is not the page's last key %q", next, page[len(page)-1].Key)
		}
		after = next
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
	}
	if pages != 3 || !slices.Equal(got, want) {
		t.Fatalf("paged listing: %d pages, keys %q; want 3 pages of %q", pages, got, want)
	}
	// Starting in the middle of the range.
	page, _, err := b.List(t.Context(), "list/", "list/k19", 10)
	if err != nil {
		t.Fatal(err)
	}
	if keysOf(page)[0] != "list/k20" || len(page) != 5 {
		t.Fatalf("list after list/k19: %q", keysOf(page))
	}
	// A prefix that is not a whole segment, startAfter outside the prefix, and everything.
	if keys := listAll(t, b, "lis"); len(keys) != 26 || keys[0] != "lisa" {
		t.Fatalf("list lis: %q", keys)
	}
	if keys := listAll(t, b, ""); len(keys) != 27 || keys[26] != "other/x" {
		t.Fatalf("list all: %q", keys)
	}
	if page, _, _ := b.List(t.Context(), "list/", "a", 2); !slices.Equal(keysOf(page), want[:2]) {
		t.Fatalf("list with startAfter before the prefix: %q", keysOf(page))
	}
	if page, next, _ := b.List(t.Context(), "list/", "m", 10); len(page) != 0 || next != "" {
		t.Fatalf("list with startAfter after the prefix: %q %q", keysOf(page), next)
	}
	if page, next, _ := b.List(t.Context(), "nothing/", "", 10); len(page) != 0 || next != "" {
		t.Fatalf("list of an empty prefix: %q %q", keysOf(page), next)
	}
	_, _, err = b.List(t.Context(), "../", "", 10)
	wantCode(t, err, errs.BadRequest, "list with a bad prefix")
}

func keysOf(infos []ObjectInfo) []string {
	keys := make([]string, len(infos))
	for i, o := range infos {
		keys[i] = o.Key
	}
	return keys
}

func testKeys(t *testing.T, st strategyUnderTest) {
	b, _ := st.open(t)
	keys := []string{
		"a/b/c", "a/b/ç/日本語", "a/b c/d", "a-b", "a.b", "a0", "x/y/z/deep/er", "emoji/🎉", "spaces in key",
		"symbols/!$&'()*+,;=:@%", "long/" + strings.Repeat("s", 200),
	}
	if st.nestedKeys {
		keys = append(keys, "a", "a/b", "x/y")
	}
	for i, k := range keys {
		put(t, b, k, []byte(k), map[string]string{"n": fmt.Sprint(i)})
	}
	for _, k := range keys {
		got, info := get(t, b, k, 0, -1)
		if string(got) != k || info.Key != k {
			t.Fatalf("get %q: %q (info key %q)", k, got, info.Key)
		}
	}
	want := slices.Clone(keys)
	slices.Sort(want) // byte order of UTF-8, as S3 lists
	if got := listAll(t, b, ""); !slices.Equal(got, want) {
		t.Fatalf("list all:\n got %q\nwant %q", got, want)
	}
	var underA []string
	for _, k := range want {
		if strings.HasPrefix(k, "a/") {
			underA = append(underA, k)
		}
	}
	if got := listAll(t, b, "a/"); !slices.Equal(got, underA) {
		t.Fatalf("list a/: %q, want %q", got, underA)
	}
	// Deleting a nested key leaves its neighbours and parents intact.
	if err := b.Delete(t.Context(), "a/b/c"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(t.Context(), "a/b/ç/日本語"); err != nil {
		t.Fatalf("neighbour after delete: %v", err)
	}
	if st.nestedKeys {
		if _, err := b.Stat(t.Context(), "a/b"); err != nil {
			t.Fatalf("parent key after delete: %v", err)
		}
	}
}

func testDelete(t *testing.T, st strategyUnderTest) {
	b, _ := st.open(t)
	data := randomBytes(10000, 7)
	put(t, b, "d/x", data, nil)
	put(t, b, "d/keep", data, nil)
	if err := b.Delete(t.Context(), "d/x"); err != nil {
		t.Fatal(err)
	}
	_, err := b.Stat(t.Context(), "d/x")
	wantCode(t, err, errs.NotFound, "stat after delete")
	_, _, err = b.Get(t.Context(), "d/x", 0, -1)
	wantCode(t, err, errs.NotFound, "get after delete")
	wantCode(t, b.Delete(t.Context(), "d/x"), errs.NotFound, "second delete")
	if keys := listAll(t, b, ""); !slices.Equal(keys, []string{"d/keep"}) {
		t.Fatalf("list after delete: %q", keys)
	}
	// A key can be put again after a delete.
	put(t, b, "d/x", []byte("again"), nil)
	if got, _ := get(t, b, "d/x", 0, -1); string(got) != "again" {
		t.Fatalf("put after delete: %q", got)
	}
	if st.partSize > 0 { // a multipart object is deleted whole
		put(t, b, "d/big", randomBytes(int(st.partSize)+10, 8), nil)
		if err := b.Delete(t.Context(), "d/big"); err != nil {
			t.Fatal(err)
		}
		wantCode(t, b.Delete(t.Context(), "d/big"), errs.NotFound, "delete big again")
	}
}

func testNotFoundAndInvalid(t *testing.T, st strategyUnderTest) {
	b, _ := st.open(t)
	put(t, b, "exists/x", []byte("x"), nil)
	for _, k := range []string{"missing", "exists", "exists/x/y", "exists/y"} {
		_, err := b.Stat(t.Context(), k)
		wantCode(t, err, errs.NotFound, "stat "+k)
		_, _, err = b.Get(t.Context(), k, 0, -1)
		wantCode(t, err, errs.NotFound, "get "+k)
		wantCode(t, b.Delete(t.Context(), k), errs.NotFound, "delete "+k)
	}
	for _, k := range []string{"", "../etc/passwd", "/abs", "a//b", "a/../b", "trailing/", "back\\slash", "ctl\x01"} {
		_, err := b.Put(t.Context(), k, strings.NewReader("x"), nil)
		wantCode(t, err, errs.BadRequest, fmt.Sprintf("put %q", k))
		_, err = b.Stat(t.Context(), k)
		wantCode(t, err, errs.BadRequest, fmt.Sprintf("stat %q", k))
		_, _, err = b.Get(t.Context(), k, 0, -1)
		wantCode(t, err, errs.BadRequest, fmt.Sprintf("get %q", k))
		wantCode(t, b.Delete(t.Context(), k), errs.BadRequest, fmt.Sprintf("delete %q", k))
	}
	_, err := b.Put(t.Context(), "nil-reader", nil, nil)
	wantCode(t, err, errs.BadRequest, "put with a nil reader")
}

var errBoom = errors.New("boom: the source broke off")

// failingReader yields n bytes of data, then fails.
type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func assertNothingStored(t *testing.T, b Backend, leftovers func() []string, key string) {
	t.Helper()
	_, err := b.Stat(t.Context(), key)
	wantCode(t, err, errs.NotFound, "stat after a failed put")
	if keys := listAll(t, b, ""); len(keys) != 0 {
		t.Fatalf("list after a failed put shows %q", keys)
	}
	if left := leftovers(); len(left) != 0 {
		t.Fatalf("a failed put left %q", left)
	}
}

func testReaderFails(t *testing.T, st strategyUnderTest) {
	sizes := []int{0, 100 << 10}
	if st.partSize > 0 {
		sizes = append(sizes, int(st.partSize)*3+1000) // mid multipart upload
	}
	for _, n := range sizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			b, leftovers := st.open(t)
			_, err := b.Put(t.Context(), "f/x", &failingReader{data: randomBytes(n, 9), err: errBoom}, nil)
			if err == nil || !errors.Is(err, errBoom) {
				t.Fatalf("put with a failing reader: %v, want the reader's error", err)
			}
			wantCode(t, err, errs.BadRequest, "put with a failing reader")
			assertNothingStored(t, b, leftovers, "f/x")
			// A coded reader error keeps its code.
			_, err = b.Put(t.Context(), "f/x", &failingReader{data: randomBytes(n, 9), err: errs.Unavailablef("agent gone")}, nil)
			wantCode(t, err, errs.Unavailable, "put with a coded failing reader")
			assertNothingStored(t, b, leftovers, "f/x")
			// An existing object survives a failed overwrite.
			put(t, b, "f/x", []byte("old"), nil)
			_, err = b.Put(t.Context(), "f/x", &failingReader{data: randomBytes(n, 9), err: errBoom}, nil)
			if err == nil {
				t.Fatal("failed overwrite succeeded")
			}
			if got, _ := get(t, b, "f/x", 0, -1); string(got) != "old" {
				t.Fatalf("after a failed overwrite: %q", got)
			}
		})
	}
}

// cancellingReader yields data and cancels the put's context after n bytes.
type cancellingReader struct {
	data   []byte
	n      int
	cancel context.CancelFunc
	read   int
}

func (r *cancellingReader) Read(p []byte) (int, error) {
	if r.read >= r.n {
		r.cancel()
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	r.read += n
	return n, nil
}

func testCancelled(t *testing.T, st strategyUnderTest) {
	size, cut := 1<<20, 300<<10
	if st.partSize > 0 {
		size, cut = int(st.partSize)*4, int(st.partSize)*2+100
	}
	b, leftovers := st.open(t)
	ctx, cancel := context.WithCancel(t.Context())
	_, err := b.Put(ctx, "c/x", &cancellingReader{data: randomBytes(size, 10), n: cut, cancel: cancel}, nil)
	wantCode(t, err, errs.Cancelled, "put cancelled midway")
	assertNothingStored(t, b, leftovers, "c/x")

	ctx, cancel = context.WithCancel(t.Context())
	cancel()
	_, err = b.Put(ctx, "c/x", bytes.NewReader(randomBytes(1000, 11)), nil)
	wantCode(t, err, errs.Cancelled, "put with a cancelled context")
	assertNothingStored(t, b, leftovers, "c/x")

	ctx, cancel = context.WithTimeout(t.Context(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	_, err = b.Put(ctx, "c/x", bytes.NewReader(randomBytes(1000, 11)), nil)
	wantCode(t, err, errs.Timeout, "put after its deadline")
	assertNothingStored(t, b, leftovers, "c/x")
}

func testLarge(t *testing.T, st strategyUnderTest) {
	b, leftovers := st.open(t)
	data := randomBytes(40<<20+123, 12)
	info := put(t, b, "large/obj", data, map[string]string{"kind": "large"})
	if info.Size != int64(len(data)) || info.SHA256 != sha(data) {
		t.Fatalf("large put: %+v", info)
	}
	rc, ginfo, err := b.Get(t.Context(), "large/obj", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, rc) // exercises WriterTo where the reader has it
	rc.Close()
	if err != nil || n != int64(len(data)) || hex.EncodeToString(h.Sum(nil)) != sha(data) {
		t.Fatalf("large get: %d bytes, err %v, sha match %v", n, err, hex.EncodeToString(h.Sum(nil)) == sha(data))
	}
	sameInfo(t, ginfo, info, "large get")
	// A middle range read with small buffers (exercises Read across chunk boundaries).
	off, length := int64(7<<20+11), int64(13<<20+5)
	rc, _, err = b.Get(t.Context(), "large/obj", off, length)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(struct{ io.Reader }{rc})
	rc.Close()
	if err != nil || !bytes.Equal(got, data[off:off+length]) {
		t.Fatalf("large middle range: %d bytes, err %v", len(got), err)
	}
	// Closing a reader early, mid-stream, must release everything and not disturb later gets.
	rc, _, err = b.Get(t.Context(), "large/obj", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(t.Context(), "large/obj"); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(); len(left) != 0 {
		t.Fatalf("after deleting the large object: %q", left)
	}
}

func testPing(t *testing.T, st strategyUnderTest) {
	b, _ := st.open(t)
	if err := b.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
}
