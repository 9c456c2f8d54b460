package backend

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// Direct transfers of the s3 strategy: the client uploads the parts of a multipart upload and reads data
// objects itself through presigned URLs, so the bytes never pass through the service. The service starts
// the upload, presigns, and on completion reads the data object back and checks the size and SHA-256 the
// client claims before it writes the record (the same record Put writes), so an object is visible only
// once its bytes are verified.
//
// The token handed to the client is the data object's name and the upload id. It carries no authority of
// its own (S3 needs the upload id and our credentials), but it is checked on every call to name a data
// object under the key's own data prefix, so a client can never make the service presign, complete,
// delete or abort an arbitrary bucket key.

var _ Direct = (*s3Backend)(nil)

// s3DirectToken is the JSON inside a direct upload's token.
type s3DirectToken struct {
	Data   string            `json:"d"`           // data object name relative to the prefix: data/<key>/<id>
	Upload string            `json:"u"`           // S3 upload id
	Meta   map[string]string `json:"m,omitempty"` // user metadata for the record, validated again on use
}

const (
	s3MaxTokenLen    = 4*MaxMetadataBytes + 4096 // base64 of JSON: metadata with escapes, names
	s3MaxUploadIDLen = 1024
	s3MaxETagLen     = 256
	// S3MaxPresignBatch bounds the part URLs presigned per call.
	S3MaxPresignBatch = 1000
)

func encodeDirectToken(t s3DirectToken) string {
	js, _ := json.Marshal(t) // strings only: cannot fail
	return base64.RawURLEncoding.EncodeToString(js)
}

// parseDirectToken decodes token and checks that it names a data object of key; BadRequest otherwise.
func parseDirectToken(key, token string) (s3DirectToken, error) {
	var t s3DirectToken
	if err := ids.ValidateKey(key); err != nil {
		return t, err
	}
	bad := errs.BadRequestf("direct upload token of %q is not valid: use the token put_direct returned for this key", key)
	if token == "" || len(token) > s3MaxTokenLen {
		return t, bad
	}
	js, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return t, bad
	}
	dec := json.NewDecoder(strings.NewReader(string(js)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return t, bad
	}
	dataPrefix := "data/" + key + "/"
	id, ok := strings.CutPrefix(t.Data, dataPrefix)
	if !ok || ids.Validate("upload", id) != nil {
		return t, bad
	}
	if t.Upload == "" || len(t.Upload) > s3MaxUploadIDLen {
		return t, bad
	}
	for i := 0; i < len(t.Upload); i++ {
		if c := t.Upload[i]; c <= ' ' || c == 0x7f {
			return t, bad
		}
	}
	if err := ValidateMetadata(t.Meta); err != nil {
		return t, bad
	}
	return t, nil
}

func (b *s3Backend) CreateDirectUpload(ctx context.Context, key string, meta map[string]string) (DirectUpload, error) {
	if err := ids.ValidateKey(key); err != nil {
		return DirectUpload{}, err
	}
	if err := ValidateMetadata(meta); err != nil {
		return DirectUpload{}, err
	}
	// The metadata rides in the token until the record is written at completion.
	dataRel := "data/" + key + "/" + ids.New()
	dataName := b.prefix + dataRel
	created, err := b.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: &b.bucket, Key: &dataName, ContentType: aws.String("application/octet-stream"),
	})
	if err != nil {
		return DirectUpload{}, b.s3Error(err, "start direct upload of", key)
	}
	return DirectUpload{
		Key: key, Token: encodeDirectToken(s3DirectToken{Data: dataRel, Upload: aws.ToString(created.UploadId), Meta: copyMetadata(meta)}),
		PartSize: b.partSize, MaxParts: s3MaxParts,
	}, nil
}

func (b *s3Backend) PresignParts(ctx context.Context, key, token string, parts []int32) ([]PresignedRequest, error) {
	t, err := parseDirectToken(key, token)
	if err != nil {
		return nil, err
	}
	if len(parts) == 0 || len(parts) > S3MaxPresignBatch {
		return nil, errs.BadRequestf("presign %d parts of %q: ask for 1..%d at a time", len(parts), key, S3MaxPresignBatch)
	}
	dataName := b.prefix + t.Data
	out := make([]PresignedRequest, 0, len(parts))
	for _, n := range parts {
		if n < 1 || n > s3MaxParts {
			return nil, errs.BadRequestf("part number %d of %q is outside 1..%d", n, key, s3MaxParts)
		}
		expires := time.Now().Add(b.presignExpiry)
		req, err := b.presign.PresignUploadPart(ctx, &s3.UploadPartInput{
			Bucket: &b.bucket, Key: &dataName, UploadId: &t.Upload, PartNumber: aws.Int32(n),
		})
		if err != nil {
			return nil, b.presignError(err, "presign part of", key)
		}
		out = append(out, presigned(n, req, expires))
	}
	return out, nil
}

func presigned(part int32, req *v4.PresignedHTTPRequest, expires time.Time) PresignedRequest {
	h := map[string][]string{}
	for k, v := range req.SignedHeader {
		if !strings.EqualFold(k, "Host") { // net/http sets Host from the URL
			h[k] = v
		}
	}
	return PresignedRequest{Part: part, Method: req.Method, URL: req.URL, Header: h, Expires: expires}
}

// presignError codes a failure to presign (credentials could not be resolved, say) without the request,
// whose URL would be the secret.
func (b *s3Backend) presignError(err error, op, key string) error {
	for _, cerr := range []error{context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, cerr) {
			return errs.Wrap(errs.CodeOf(cerr), cerr, "s3 %s %q in bucket %q", op, key, b.bucket)
		}
	}
	return errs.Unavailablef("s3 %s %q in bucket %q: cannot sign (are the strategy's credentials available?)", op, key, b.bucket)
}

func (b *s3Backend) CompleteDirectUpload(ctx context.Context, key, token string, parts []CompletedPart, size int64, sum string) (ObjectInfo, error) {
	t, err := parseDirectToken(key, token)
	if err != nil {
		return ObjectInfo{}, err
	}
	if err := checkCompletedParts(key, parts); err != nil {
		return ObjectInfo{}, err
	}
	if size < 0 {
		return ObjectInfo{}, errs.BadRequestf("complete %q: size %d is negative", key, size)
	}
	if len(sum) != 64 || strings.ToLower(sum) != sum {
		return ObjectInfo{}, errs.BadRequestf("complete %q: sha256 must be 64 lower-case hex digits", key)
	}
	if _, err := hex.DecodeString(sum); err != nil {
		return ObjectInfo{}, errs.BadRequestf("complete %q: sha256 must be 64 lower-case hex digits", key)
	}
	dataName := b.prefix + t.Data
	cparts := make([]types.CompletedPart, len(parts))
	for i, p := range parts {
		cparts[i] = types.CompletedPart{PartNumber: aws.Int32(p.Number), ETag: aws.String(p.ETag)}
	}
	_, err = b.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &b.bucket, Key: &dataName, UploadId: &t.Upload,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: cparts},
	})
	if err != nil {
		err = b.s3Error(err, "complete direct upload of", key)
		if errs.Is(err, errs.NotFound) {
			return ObjectInfo{}, errs.NotFoundf("direct upload of %q not found: it was completed, aborted or has expired", key)
		}
		return ObjectInfo{}, err
	}
	// From here the data object exists: any failure deletes it, so nothing unverified is left behind.
	if err := b.verifyData(ctx, key, dataName, size, sum); err != nil {
		b.deleteData(ctx, dataName)
		return ObjectInfo{}, err
	}
	rec := &s3Record{Key: key, Data: t.Data, Size: size, SHA256: sum, Metadata: copyMetadata(t.Meta), Verified: time.Now().UTC()}
	if err := b.commitRecord(ctx, rec); err != nil {
		return ObjectInfo{}, err
	}
	return rec.info(), nil
}

// verifyData reads a data object back with parallel ranged GETs and checks its size and SHA-256.
func (b *s3Backend) verifyData(ctx context.Context, key, dataName string, size int64, sum string) error {
	head, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &b.bucket, Key: &dataName})
	if err != nil {
		return b.s3Error(err, "check direct upload of", key)
	}
	if got := aws.ToInt64(head.ContentLength); got != size {
		return errs.New(errs.Corrupt, "direct upload of %q has %d bytes, the client announced %d; nothing stored", key, got, size)
	}
	h := sha256.New()
	if size > 0 {
		var r io.ReadCloser
		if size <= b.partSize || b.concurrency == 1 {
			body, err := b.getRange(ctx, key, dataName, 0, size)
			if err != nil {
				return err
			}
			r = &s3BodyReader{b: b, key: key, body: body, left: size}
		} else {
			r = newS3ParallelReader(ctx, b, key, dataName, 0, size)
		}
		n, err := io.Copy(h, r)
		_ = r.Close()
		if err != nil {
			return errs.Wrap(errs.CodeOf(err), err, "verify direct upload of %q", key)
		}
		if n != size {
			return errs.New(errs.Corrupt, "direct upload of %q read back %d bytes of %d; nothing stored", key, n, size)
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return errs.New(errs.Corrupt, "direct upload of %q has sha256 %s, the client announced %s; nothing stored", key, got, sum)
	}
	return nil
}

// checkCompletedParts requires 1..10000 parts in strictly increasing order with plausible ETags.
func checkCompletedParts(key string, parts []CompletedPart) error {
	if len(parts) == 0 || len(parts) > s3MaxParts {
		return errs.BadRequestf("complete %q: %d parts; a direct upload has 1..%d", key, len(parts), s3MaxParts)
	}
	prev := int32(0)
	for _, p := range parts {
		if p.Number <= prev || p.Number > s3MaxParts {
			return errs.BadRequestf("complete %q: part numbers must increase strictly within 1..%d (got %d after %d)", key, s3MaxParts, p.Number, prev)
		}
		if p.ETag == "" || len(p.ETag) > s3MaxETagLen {
			return errs.BadRequestf("complete %q: part %d has no valid ETag", key, p.Number)
		}
		prev = p.Number
	}
	return nil
}

func (b *s3Backend) AbortDirectUpload(ctx context.Context, key, token string) error {
	t, err := parseDirectToken(key, token)
	if err != nil {
		return err
	}
	dataName := b.prefix + t.Data
	_, err = b.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &b.bucket, Key: &dataName, UploadId: &t.Upload})
	if err != nil {
		err = b.s3Error(err, "abort direct upload of", key)
		if errs.Is(err, errs.NotFound) {
			return errs.NotFoundf("direct upload of %q not found: it was completed, aborted or has expired", key)
		}
		return err
	}
	return nil
}

func (b *s3Backend) PresignGet(ctx context.Context, key string) (PresignedRequest, ObjectInfo, error) {
	rec, err := b.readRecord(ctx, key)
	if err != nil {
		return PresignedRequest{}, ObjectInfo{}, err
	}
	dataName := b.prefix + rec.Data
	expires := time.Now().Add(b.presignExpiry)
	req, err := b.presign.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: &b.bucket, Key: &dataName})
	if err != nil {
		return PresignedRequest{}, ObjectInfo{}, b.presignError(err, "presign get of", key)
	}
	if req.Method == "" {
		req.Method = http.MethodGet
	}
	return presigned(0, req, expires), rec.info(), nil
}
