package backend

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/s3test"
)

// uploadPart PUTs one part to its presigned URL with plain net/http, as a client would, and returns the ETag.
func uploadPart(t *testing.T, req PresignedRequest, data []byte) string {
	t.Helper()
	hr, err := http.NewRequest(req.Method, req.URL, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range req.Header {
		hr.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatalf("PUT part %d: %v", req.Part, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("PUT part %d: %s: %s", req.Part, resp.Status, body)
	}
	return resp.Header.Get("ETag")
}

// directUpload uploads data as parts of partSize through presigned URLs and returns the completed parts.
func directUpload(t *testing.T, b *s3Backend, key, token string, data []byte, partSize int64) []CompletedPart {
	t.Helper()
	var nums []int32
	for off, n := int64(0), int32(1); off < int64(len(data)) || n == 1; off, n = off+partSize, n+1 {
		nums = append(nums, n)
	}
	reqs, err := b.PresignParts(t.Context(), key, token, nums)
	if err != nil {
		t.Fatalf("presign: %v", err)
	}
	var parts []CompletedPart
	for i, req := range reqs {
		if req.Part != nums[i] || req.Method != http.MethodPut || !req.Expires.After(time.Now()) {
			t.Fatalf("presigned request %d: part %d method %s expires %v", i, req.Part, req.Method, req.Expires)
		}
		off := int64(i) * partSize
		end := min(off+partSize, int64(len(data)))
		parts = append(parts, CompletedPart{Number: req.Part, ETag: uploadPart(t, req, data[off:end])})
	}
	return parts
}

func TestS3Direct(t *testing.T) {
	srv := s3test.Start(t)
	be, err := NewS3(t.Context(), s3ConfigFor(srv, "direct/", S3MinPartSize, 3))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	b := be.(*s3Backend)
	ctx := t.Context()

	t.Run("round trip", func(t *testing.T) {
		data := randomBytes(2*S3MinPartSize+12345, 7)
		up, err := b.CreateDirectUpload(ctx, "db/full", map[string]string{"engine": "mariadb"})
		if err != nil {
			t.Fatal(err)
		}
		if up.PartSize != S3MinPartSize || up.Key != "db/full" {
			t.Fatalf("upload %+v", up)
		}
		parts := directUpload(t, b, "db/full", up.Token, data, up.PartSize)
		if _, err := b.Stat(ctx, "db/full"); !errs.Is(err, errs.NotFound) {
			t.Fatalf("visible before completion: %v", err)
		}
		info, err := b.CompleteDirectUpload(ctx, "db/full", up.Token, parts, int64(len(data)), sha(data))
		if err != nil {
			t.Fatalf("complete: %v", err)
		}
		if info.Size != int64(len(data)) || info.SHA256 != sha(data) || info.Metadata["engine"] != "mariadb" {
			t.Fatalf("info %+v", info)
		}
		rc, got, err := b.Get(ctx, "db/full", 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		all, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil || !bytes.Equal(all, data) || got.SHA256 != sha(data) {
			t.Fatalf("get back: %d bytes, %v", len(all), err)
		}

		// The presigned GET reads the same bytes, ranges included.
		req, ginfo, err := b.PresignGet(ctx, "db/full")
		if err != nil || ginfo.Size != int64(len(data)) {
			t.Fatalf("presign get: %v %+v", err, ginfo)
		}
		hr, _ := http.NewRequest(req.Method, req.URL, nil)
		hr.Header.Set("Range", "bytes=100-199")
		resp, err := http.DefaultClient.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		rng, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(rng, data[100:200]) {
			t.Fatalf("ranged presigned GET: %s, %d bytes", resp.Status, len(rng))
		}

		// Overwrite by another direct upload: the old data object goes.
		small := []byte("small")
		up2, err := b.CreateDirectUpload(ctx, "db/full", nil)
		if err != nil {
			t.Fatal(err)
		}
		parts2 := directUpload(t, b, "db/full", up2.Token, small, up2.PartSize)
		if _, err := b.CompleteDirectUpload(ctx, "db/full", up2.Token, parts2, int64(len(small)), sha(small)); err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(ctx, "db/full"); err != nil {
			t.Fatal(err)
		}
		if left := s3Leftovers(t, b); len(left) != 0 {
			t.Fatalf("leftovers: %v", left)
		}
	})

	t.Run("empty object", func(t *testing.T) {
		up, err := b.CreateDirectUpload(ctx, "empty", nil)
		if err != nil {
			t.Fatal(err)
		}
		parts := directUpload(t, b, "empty", up.Token, nil, up.PartSize)
		info, err := b.CompleteDirectUpload(ctx, "empty", up.Token, parts, 0, sha(nil))
		if err != nil || info.Size != 0 {
			t.Fatalf("complete empty: %+v %v", info, err)
		}
		if err := b.Delete(ctx, "empty"); err != nil {
			t.Fatal(err)
		}
	})

	for _, lie := range []struct {
		name string
		size func(n int64) int64
		sum  func(s string) string
	}{
		{"sha256", func(n int64) int64 { return n }, func(s string) string { return strings.Repeat("0", 64) }},
		{"size", func(n int64) int64 { return n - 1 }, func(s string) string { return s }},
	} {
		t.Run("lie about "+lie.name, func(t *testing.T) {
			data := randomBytes(S3MinPartSize+99, 8)
			// An existing object under the key must survive a failed completion unchanged.
			old := []byte("the old object")
			if _, err := b.Put(ctx, "liar", bytes.NewReader(old), nil); err != nil {
				t.Fatal(err)
			}
			up, err := b.CreateDirectUpload(ctx, "liar", nil)
			if err != nil {
				t.Fatal(err)
			}
			parts := directUpload(t, b, "liar", up.Token, data, up.PartSize)
			_, err = b.CompleteDirectUpload(ctx, "liar", up.Token, parts, lie.size(int64(len(data))), lie.sum(sha(data)))
			wantCode(t, err, errs.Corrupt, "complete with a lie")
			info, err := b.Stat(ctx, "liar")
			if err != nil || info.SHA256 != sha(old) {
				t.Fatalf("the old object changed: %+v %v", info, err)
			}
			if err := b.Delete(ctx, "liar"); err != nil {
				t.Fatal(err)
			}
			if left := s3Leftovers(t, b); len(left) != 0 {
				t.Fatalf("leftovers after a refused completion: %v", left)
			}
		})
	}

	t.Run("tampered token", func(t *testing.T) {
		up, err := b.CreateDirectUpload(ctx, "mine", nil)
		if err != nil {
			t.Fatal(err)
		}
		other := encodeDirectToken(s3DirectToken{Data: "meta/mine", Upload: "x"})
		escape := encodeDirectToken(s3DirectToken{Data: "data/mine/../../meta/mine", Upload: "x"})
		for name, call := range map[string]func() error{
			"token of another key": func() error { _, err := b.PresignParts(ctx, "yours", up.Token, []int32{1}); return err },
			"record as data":       func() error { _, err := b.PresignParts(ctx, "mine", other, []int32{1}); return err },
			"path escape":          func() error { return b.AbortDirectUpload(ctx, "mine", escape) },
			"garbage":              func() error { return b.AbortDirectUpload(ctx, "mine", "not-base64!") },
			"complete other key": func() error {
				_, err := b.CompleteDirectUpload(ctx, "yours", up.Token, []CompletedPart{{1, `"x"`}}, 1, strings.Repeat("a", 64))
				return err
			},
			"part 0":     func() error { _, err := b.PresignParts(ctx, "mine", up.Token, []int32{0}); return err },
			"part 10001": func() error { _, err := b.PresignParts(ctx, "mine", up.Token, []int32{10001}); return err },
			"parts order": func() error {
				_, err := b.CompleteDirectUpload(ctx, "mine", up.Token, []CompletedPart{{2, "a"}, {1, "b"}}, 1, sha(nil))
				return err
			},
		} {
			wantCode(t, call(), errs.BadRequest, name)
		}
		if err := b.AbortDirectUpload(ctx, "mine", up.Token); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("abort", func(t *testing.T) {
		up, err := b.CreateDirectUpload(ctx, "aborted", nil)
		if err != nil {
			t.Fatal(err)
		}
		directUpload(t, b, "aborted", up.Token, randomBytes(S3MinPartSize+1, 9), up.PartSize)
		if err := b.AbortDirectUpload(ctx, "aborted", up.Token); err != nil {
			t.Fatal(err)
		}
		if left := s3Leftovers(t, b); len(left) != 0 {
			t.Fatalf("leftovers after abort: %v", left)
		}
		_, err = b.CompleteDirectUpload(ctx, "aborted", up.Token, []CompletedPart{{1, `"x"`}}, 1, sha([]byte("x")))
		// AWS says NoSuchUpload (not_found), versitygw InvalidPart (bad_request): either way it must fail.
		if err == nil {
			t.Fatal("complete after abort succeeded")
		}
		if _, err := b.Stat(ctx, "aborted"); !errs.Is(err, errs.NotFound) {
			t.Fatalf("aborted upload visible: %v", err)
		}
	})
}
