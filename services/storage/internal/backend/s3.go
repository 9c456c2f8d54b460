package backend

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// The s3 strategy keeps objects in an S3 bucket (AWS or any S3-compatible server: versitygw, MinIO, Ceph).
//
// Configuration keys:
//
//	bucket        bucket name (required; must exist)
//	endpoint      base URL of an S3-compatible server, e.g. http://127.0.0.1:7070 (default: AWS)
//	region        signing region (default us-east-1)
//	prefix        key prefix inside the bucket, e.g. "trove/" (default none; a missing trailing '/' is added)
//	access_key    access key id; with secret_key (and optional session_token) it replaces the AWS default
//	secret_key    credential chain (environment, shared files, instance role). Both or neither.
//	session_token
//	path_style    true: http://host/bucket/key addressing (most S3-compatible servers need it); default false
//	part_size     multipart part size, 5MiB..5GiB (default 8MiB); also the parallel download chunk size
//	concurrency   parts in flight per put or get, 1..64 (default 6)
//	max_attempts  attempts per S3 request, retries included (default 3)
//	read_timeout  a connection silent this long fails (default 2m)
//	presign_expiry  lifetime of presigned URLs handed to clients for direct transfers (default 15m, at most 7 days)
//
// Layout under <prefix>:
//
//	data/<key>/<id>  the object's bytes, under a fresh random id per put
//	meta/<key>       the record (JSON: key, data name, size, sha256, metadata, modified)
//
// S3 fixes user metadata when an upload starts, but size and SHA-256 are known only at its end, so the
// record is written after the data completes, and an object is visible exactly when its record exists.
// Because every put writes new data under a new id, an overwrite never touches the bytes a current record
// names: the new record replaces the old one in one PutObject (atomic in S3), and the old data is deleted
// afterwards. Delete removes the record first, then the data.
//
// Memory: a put or get holds at most concurrency x part_size bytes of buffers (pooled); puts smaller than
// one part use one PutObject, gets of at most one part one streamed GET.
//
// Limits: an object has at most 10,000 parts (80 GB at the default part size: raise part_size for larger
// objects). A put that fails while S3 is unreachable cannot abort its multipart upload: configure the
// bucket's lifecycle rule AbortIncompleteMultipartUpload to reclaim such parts. Two puts racing on the same
// key may leave the loser's data object behind (never visible). On a posix-backed server (versitygw posix)
// keys "a" and "a/b" cannot both exist, because meta/a would have to be a file and a directory (Conflict).

func init() { Register("s3", openS3) }

// S3Config configures the s3 strategy (see the configuration keys above).
type S3Config struct {
	Endpoint     string
	Region       string
	Bucket       string
	Prefix       string
	AccessKey    string
	SecretKey    string
	SessionToken string
	PathStyle    bool
	PartSize     int64
	Concurrency  int
	MaxAttempts  int
	ReadTimeout  time.Duration
	// PresignExpiry is the lifetime of the presigned URLs of direct transfers (s3_direct.go).
	PresignExpiry time.Duration
}

// S3 limits and defaults.
const (
	S3MinPartSize        = 5 << 20
	S3MaxPartSize        = 5 << 30
	S3DefaultPartSize    = 8 << 20
	S3DefaultConcurrency = 6
	s3MaxParts           = 10000
	s3MaxRecord          = 64 << 10
	s3CleanupTimeout     = 30 * time.Second

	s3DefaultPresignExpiry = 15 * time.Minute
	s3MaxPresignExpiry     = 7 * 24 * time.Hour
)

func openS3(ctx context.Context, values map[string]string) (Backend, error) {
	cfg, err := newConfig("s3", values, "endpoint", "region", "bucket", "prefix", "access_key", "secret_key",
		"session_token", "path_style", "part_size", "concurrency", "max_attempts", "read_timeout", "presign_expiry")
	if err != nil {
		return nil, err
	}
	c := S3Config{
		Endpoint:     cfg.str("endpoint", ""),
		Region:       cfg.str("region", ""),
		Prefix:       cfg.str("prefix", ""),
		AccessKey:    cfg.str("access_key", ""),
		SecretKey:    cfg.str("secret_key", ""),
		SessionToken: cfg.str("session_token", ""),
	}
	if c.Bucket, err = cfg.required("bucket"); err != nil {
		return nil, err
	}
	if c.PathStyle, err = cfg.boolean("path_style", false); err != nil {
		return nil, err
	}
	if c.PartSize, err = cfg.bytes("part_size", S3DefaultPartSize, S3MinPartSize, S3MaxPartSize); err != nil {
		return nil, err
	}
	n, err := cfg.integer("concurrency", S3DefaultConcurrency, 1, 64)
	if err != nil {
		return nil, err
	}
	c.Concurrency = int(n)
	if n, err = cfg.integer("max_attempts", 3, 1, 20); err != nil {
		return nil, err
	}
	c.MaxAttempts = int(n)
	if c.ReadTimeout, err = cfg.duration("read_timeout", 2*time.Minute); err != nil {
		return nil, err
	}
	if c.PresignExpiry, err = cfg.duration("presign_expiry", s3DefaultPresignExpiry); err != nil {
		return nil, err
	}
	return NewS3(ctx, c)
}

type s3Backend struct {
	client        *s3.Client
	conns         *s3Conns
	bucket        string
	prefix        string
	partSize      int64
	concurrency   int
	bufs          chan *[]byte // idle part buffers, at most concurrency kept
	presign       *s3.PresignClient
	presignExpiry time.Duration
}

// NewS3 opens the s3 strategy. It does not contact S3 (Ping does), so a service can start while S3 is down.
func NewS3(ctx context.Context, c S3Config) (Backend, error) {
	client, conns, err := newS3Client(ctx, &c)
	if err != nil {
		return nil, err
	}
	b := &s3Backend{client: client, conns: conns, bucket: c.Bucket, prefix: c.Prefix, partSize: c.PartSize, concurrency: c.Concurrency}
	b.presignExpiry = c.PresignExpiry
	b.presign = s3.NewPresignClient(client, func(o *s3.PresignOptions) { o.Expires = c.PresignExpiry })
	b.bufs = make(chan *[]byte, c.Concurrency)
	return b, nil
}

// newS3Client validates c (filling defaults in place) and builds the S3 client.
func newS3Client(ctx context.Context, c *S3Config) (*s3.Client, *s3Conns, error) {
	if c.Bucket == "" {
		return nil, nil, errs.BadRequestf("s3 strategy: bucket is required")
	}
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	if c.Prefix != "" {
		if err := ids.ValidatePrefix(c.Prefix); err != nil {
			return nil, nil, errs.BadRequestf("s3 strategy: %s", errs.From(err).Message)
		}
		if !strings.HasSuffix(c.Prefix, "/") {
			c.Prefix += "/"
		}
	}
	if (c.AccessKey == "") != (c.SecretKey == "") {
		return nil, nil, errs.BadRequestf("s3 strategy: give both access_key and secret_key, or neither to use the default credential chain")
	}
	if c.PartSize == 0 {
		c.PartSize = S3DefaultPartSize
	}
	if c.PartSize < S3MinPartSize || c.PartSize > S3MaxPartSize {
		return nil, nil, errs.BadRequestf("s3 strategy: part_size %d is outside %d..%d", c.PartSize, S3MinPartSize, S3MaxPartSize)
	}
	if c.Concurrency <= 0 {
		c.Concurrency = S3DefaultConcurrency
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 2 * time.Minute
	}
	if c.PresignExpiry <= 0 {
		c.PresignExpiry = s3DefaultPresignExpiry
	}
	if c.PresignExpiry > s3MaxPresignExpiry {
		return nil, nil, errs.BadRequestf("s3 strategy: presign_expiry %s is over the S3 maximum of 7 days", c.PresignExpiry)
	}
	conns := &s3Conns{timeout: c.ReadTimeout, dialer: &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}, open: map[*s3Conn]struct{}{}}
	// A BuildableClient (not a plain http.Client), so the SDK can still apply AWS_CA_BUNDLE and the like.
	hc := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConnsPerHost = max(awshttp.DefaultHTTPTransportMaxIdleConnsPerHost, 2*c.Concurrency)
		t.DialContext = conns.dial
	})
	opts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithRegion(c.Region),
		awsconfig.WithHTTPClient(hc),
		awsconfig.WithRetryMaxAttempts(c.MaxAttempts),
		// S3-compatible servers handle (or need) only the checksums S3 requires; extra CRCs cost CPU and
		// trigger warnings against them.
		awsconfig.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		awsconfig.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if c.AccessKey != "" {
		opts = append(opts, awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(c.AccessKey, c.SecretKey, c.SessionToken)))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, nil, errs.Wrap(errs.BadRequest, err, "s3 strategy: load AWS configuration")
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.UsePathStyle = c.PathStyle
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
	})
	return client, conns, nil
}

// s3Conns dials the client's connections and keeps track of them, so Close can close them (the SDK's
// client does not expose its transport), and gives each a read timeout: a read that waits longer than
// timeout for data fails, so a server that stops sending (or never answers) is noticed while a slow but
// moving transfer is not cut. (The SDK exempts S3 from its own read timeout because
// CompleteMultipartUpload may take long; AWS keeps that connection alive with whitespace.)
type s3Conns struct {
	timeout time.Duration
	dialer  *net.Dialer
	mu      sync.Mutex
	open    map[*s3Conn]struct{}
	closed  bool
}

func (cs *s3Conns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := cs.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := &s3Conn{Conn: conn, owner: cs}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		_ = conn.Close()
		return nil, errs.Unavailablef("s3 strategy is closed")
	}
	cs.open[c] = struct{}{}
	return c, nil
}

func (cs *s3Conns) closeAll() {
	cs.mu.Lock()
	cs.closed = true
	conns := make([]*s3Conn, 0, len(cs.open))
	for c := range cs.open {
		conns = append(conns, c)
	}
	cs.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

type s3Conn struct {
	net.Conn
	owner *s3Conns
	once  sync.Once
}

func (c *s3Conn) Read(p []byte) (int, error) {
	if err := c.SetReadDeadline(time.Now().Add(c.owner.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *s3Conn) Close() error {
	c.once.Do(func() {
		c.owner.mu.Lock()
		delete(c.owner.open, c)
		c.owner.mu.Unlock()
	})
	return c.Conn.Close()
}

// s3Record is the JSON stored under meta/<key>.
type s3Record struct {
	Key      string            `json:"key"`
	Data     string            `json:"data"` // data object name, relative to the prefix
	Size     int64             `json:"size"`
	SHA256   string            `json:"sha256"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Modified time.Time         `json:"modified"`
	Verified time.Time         `json:"verified,omitzero"` // see ObjectInfo.Verified
}

func (r *s3Record) info() ObjectInfo {
	return ObjectInfo{Key: r.Key, Size: r.Size, SHA256: r.SHA256, Metadata: copyMetadata(r.Metadata), Modified: r.Modified, Verified: r.Verified}
}

func (b *s3Backend) metaName(key string) string { return b.prefix + "meta/" + key }

func (b *s3Backend) getBuf() *[]byte {
	select {
	case p := <-b.bufs:
		return p
	default:
		buf := make([]byte, b.partSize)
		return &buf
	}
}

func (b *s3Backend) putBuf(p *[]byte) {
	select {
	case b.bufs <- p:
	default:
	}
}

func (b *s3Backend) Put(ctx context.Context, key string, r io.Reader, meta map[string]string) (ObjectInfo, error) {
	if err := checkPut(key, r, meta); err != nil {
		return ObjectInfo{}, err
	}
	rec := &s3Record{Key: key, Data: "data/" + key + "/" + ids.New(), Metadata: copyMetadata(meta)}
	dataName := b.prefix + rec.Data
	src := sourceReader{ctx, r}
	h := sha256.New()

	first := b.getBuf()
	n, err := io.ReadFull(src, *first)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		b.putBuf(first)
		return ObjectInfo{}, putError(ctx, key, err)
	}
	h.Write((*first)[:n])
	if int64(n) < b.partSize {
		// Smaller than one part: one request.
		_, err = b.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket: &b.bucket, Key: &dataName, Body: bytes.NewReader((*first)[:n]),
			ContentLength: aws.Int64(int64(n)), ContentType: aws.String("application/octet-stream"),
		})
		b.putBuf(first)
		if err != nil {
			return ObjectInfo{}, putError(ctx, key, b.s3Error(err, "put", key))
		}
		rec.Size = int64(n)
	} else {
		rec.Size, err = b.multipartUpload(ctx, key, dataName, src, h, first)
		if err != nil {
			return ObjectInfo{}, putError(ctx, key, err)
		}
	}
	rec.SHA256 = hex.EncodeToString(h.Sum(nil))
	if err := ctx.Err(); err != nil {
		b.deleteData(ctx, dataName)
		return ObjectInfo{}, putError(ctx, key, err)
	}
	if err := b.commitRecord(ctx, rec); err != nil {
		return ObjectInfo{}, putError(ctx, key, err)
	}
	return rec.info(), nil
}

// commitRecord makes the data object rec names visible under rec.Key by writing its record, replacing
// (and then deleting the data of) any previous one. On failure the new data object is deleted.
func (b *s3Backend) commitRecord(ctx context.Context, rec *s3Record) error {
	key, dataName := rec.Key, b.prefix+rec.Data
	// The record we replace names the data to delete after the switch.
	// A corrupt old record names no data we could trust: it is simply replaced.
	old, err := b.readRecord(ctx, key)
	if err != nil && !errs.Is(err, errs.NotFound) && !errs.Is(err, errs.Corrupt) {
		b.deleteData(ctx, dataName)
		return err
	}
	rec.Modified = time.Now().UTC()
	js, err := json.Marshal(rec)
	if err != nil {
		b.deleteData(ctx, dataName)
		return errs.Wrap(errs.Internal, err, "put %q: encode record", key)
	}
	metaName := b.metaName(key)
	_, err = b.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: &b.bucket, Key: &metaName, Body: bytes.NewReader(js),
		ContentLength: aws.Int64(int64(len(js))), ContentType: aws.String("application/json"),
	})
	if err != nil {
		b.deleteData(ctx, dataName)
		return b.s3Error(err, "put record of", key)
	}
	if old != nil && old.Data != rec.Data {
		b.deleteData(ctx, b.prefix+old.Data)
	}
	return nil
}

// deleteData removes a data object that is (or is about to be) named by no record. Best effort: a failure
// leaves invisible garbage, never a wrong object.
func (b *s3Backend) deleteData(ctx context.Context, name string) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s3CleanupTimeout)
	defer cancel()
	_, _ = b.client.DeleteObject(cctx, &s3.DeleteObjectInput{Bucket: &b.bucket, Key: &name})
}

// multipartUpload uploads src (whose first part is already in first and hashed) as a multipart upload of
// parallel parts. At most b.concurrency part buffers exist at once: one is filled from src while the
// others upload. Any failure aborts the upload so S3 keeps no parts.
func (b *s3Backend) multipartUpload(ctx context.Context, key, dataName string, src io.Reader, h io.Writer, first *[]byte) (int64, error) {
	created, err := b.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: &b.bucket, Key: &dataName, ContentType: aws.String("application/octet-stream"),
	})
	if err != nil {
		b.putBuf(first)
		return 0, b.s3Error(err, "start multipart upload of", key)
	}
	uploadID := created.UploadId

	uctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	tokens := make(chan struct{}, b.concurrency) // one per part buffer in use
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		parts []types.CompletedPart
	)
	fail := func(err error) { cancel(err) } // the first cause wins
	upload := func(num int32, buf *[]byte, n int) {
		defer wg.Done()
		defer func() { b.putBuf(buf); <-tokens }()
		out, err := b.client.UploadPart(uctx, &s3.UploadPartInput{
			Bucket: &b.bucket, Key: &dataName, UploadId: uploadID, PartNumber: aws.Int32(num),
			Body: bytes.NewReader((*buf)[:n]), ContentLength: aws.Int64(int64(n)),
		})
		if err != nil {
			fail(b.s3Error(err, fmt.Sprintf("upload part %d of", num), key))
			return
		}
		mu.Lock()
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)})
		mu.Unlock()
	}

	size := int64(0)
	buf, n := first, len(*first)
	tokens <- struct{}{}
	for num := int32(1); ; num++ {
		size += int64(n)
		wg.Add(1)
		go upload(num, buf, n)
		if int64(n) < b.partSize {
			break
		}
		// Take a buffer slot before reading the next part, so reading never runs ahead of the uploads by
		// more than the bound.
		select {
		case tokens <- struct{}{}:
		case <-uctx.Done():
		}
		if uctx.Err() != nil {
			break
		}
		buf = b.getBuf()
		var rerr error
		n, rerr = io.ReadFull(src, *buf)
		_, _ = h.Write((*buf)[:n]) // hash.Hash.Write never fails
		if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			b.putBuf(buf)
			<-tokens
			fail(rerr)
			break
		}
		if n == 0 { // the data ended exactly at a part boundary
			b.putBuf(buf)
			<-tokens
			break
		}
		if num+1 > s3MaxParts {
			b.putBuf(buf)
			<-tokens
			fail(errs.BadRequestf("put %q: the object is larger than %d parts of %d bytes; raise the s3 strategy's part_size", key, s3MaxParts, b.partSize))
			break
		}
	}
	wg.Wait()

	if err := context.Cause(uctx); err != nil {
		b.abort(ctx, key, dataName, uploadID)
		return 0, err
	}
	sortParts(parts)
	_, err = b.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &b.bucket, Key: &dataName, UploadId: uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	if err != nil {
		b.abort(ctx, key, dataName, uploadID)
		return 0, b.s3Error(err, "complete multipart upload of", key)
	}
	return size, nil
}

func sortParts(parts []types.CompletedPart) {
	// Part numbers are 1..len(parts), each exactly once: put each at its index.
	sorted := make([]types.CompletedPart, len(parts))
	for _, p := range parts {
		sorted[*p.PartNumber-1] = p
	}
	copy(parts, sorted)
}

// abort aborts a multipart upload with a fresh context: the put's own context may be what ended it.
func (b *s3Backend) abort(ctx context.Context, key, dataName string, uploadID *string) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s3CleanupTimeout)
	defer cancel()
	_, _ = b.client.AbortMultipartUpload(cctx, &s3.AbortMultipartUploadInput{Bucket: &b.bucket, Key: &dataName, UploadId: uploadID})
}

// readRecord fetches and decodes the record of key; NotFound when there is none.
func (b *s3Backend) readRecord(ctx context.Context, key string) (*s3Record, error) {
	if err := ids.ValidateKey(key); err != nil {
		return nil, err
	}
	name := b.metaName(key)
	out, err := b.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &b.bucket, Key: &name})
	if err != nil {
		err = b.s3Error(err, "read record of", key)
		if errs.Is(err, errs.NotFound) {
			return nil, errs.NotFoundf("object %q not found", key)
		}
		return nil, err
	}
	defer func() { _ = out.Body.Close() }()
	js, err := io.ReadAll(io.LimitReader(out.Body, s3MaxRecord+1))
	if err != nil {
		return nil, b.s3Error(err, "read record of", key)
	}
	if len(js) > s3MaxRecord {
		return nil, errs.New(errs.Corrupt, "s3 bucket %q: record of %q is larger than %d bytes", b.bucket, key, s3MaxRecord)
	}
	var rec s3Record
	if err := json.Unmarshal(js, &rec); err != nil {
		return nil, errs.Wrap(errs.Corrupt, err, "s3 bucket %q: record of %q", b.bucket, key)
	}
	if rec.Key != key || !strings.HasPrefix(rec.Data, "data/") {
		return nil, errs.New(errs.Corrupt, "s3 bucket %q: record of %q names key %q and data %q", b.bucket, key, rec.Key, rec.Data)
	}
	return &rec, nil
}

func (b *s3Backend) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	rec, err := b.readRecord(ctx, key)
	if err != nil {
		return ObjectInfo{}, err
	}
	return rec.info(), nil
}

func (b *s3Backend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, ObjectInfo, error) {
	rec, err := b.readRecord(ctx, key)
	if err != nil {
		return nil, ObjectInfo{}, err
	}
	n, err := resolveRange(key, rec.Size, offset, length)
	if err != nil {
		return nil, ObjectInfo{}, err
	}
	dataName := b.prefix + rec.Data
	if n == 0 {
		return io.NopCloser(strings.NewReader("")), rec.info(), nil
	}
	if n <= b.partSize || b.concurrency == 1 {
		body, err := b.getRange(ctx, key, dataName, offset, n)
		if err != nil {
			return nil, ObjectInfo{}, err
		}
		return &s3BodyReader{b: b, key: key, body: body, left: n}, rec.info(), nil
	}
	return newS3ParallelReader(ctx, b, key, dataName, offset, n), rec.info(), nil
}

// getRange starts a GET of n bytes at offset of a data object.
func (b *s3Backend) getRange(ctx context.Context, key, dataName string, offset, n int64) (io.ReadCloser, error) {
	rng := fmt.Sprintf("bytes=%d-%d", offset, offset+n-1)
	out, err := b.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &b.bucket, Key: &dataName, Range: &rng})
	if err != nil {
		err = b.s3Error(err, "get", key)
		if errs.Is(err, errs.NotFound) {
			err = errs.NotFoundf("object %q was deleted while being read", key)
		}
		return nil, err
	}
	return out.Body, nil
}

// s3BodyReader streams one GET's body, coding its errors and noticing a body that ends early.
type s3BodyReader struct {
	b    *s3Backend
	key  string
	body io.ReadCloser
	left int64
}

func (r *s3BodyReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.body.Read(p)
	r.left -= int64(n)
	switch {
	case err == io.EOF && r.left > 0:
		return n, errs.Unavailablef("s3 bucket %q: object %q: the response ended %d bytes early", r.b.bucket, r.key, r.left)
	case err == io.EOF || (err == nil && r.left == 0):
		return n, io.EOF
	case err != nil:
		return n, r.b.s3Error(err, "read", r.key)
	}
	return n, nil
}

func (r *s3BodyReader) Close() error { return r.body.Close() }

func (b *s3Backend) List(ctx context.Context, prefix, startAfter string, limit int) ([]ObjectInfo, string, error) {
	if err := ids.ValidatePrefix(prefix); err != nil {
		return nil, "", err
	}
	limit = normalizeLimit(limit)
	metaRoot := b.prefix + "meta/"
	in := &s3.ListObjectsV2Input{Bucket: &b.bucket, Prefix: aws.String(metaRoot + prefix), MaxKeys: aws.Int32(int32(limit))}
	if startAfter != "" {
		in.StartAfter = aws.String(metaRoot + startAfter)
	}
	out, err := b.client.ListObjectsV2(ctx, in)
	if err != nil {
		return nil, "", b.s3Error(err, "list", prefix)
	}
	keys := make([]string, 0, len(out.Contents))
	for _, o := range out.Contents {
		if o.Key != nil && strings.HasPrefix(*o.Key, metaRoot) {
			keys = append(keys, strings.TrimPrefix(*o.Key, metaRoot))
		}
	}
	// Fetch the page's records in parallel, bounded.
	recs := make([]*s3Record, len(keys))
	errsOf := make([]error, len(keys))
	sem := make(chan struct{}, max(b.concurrency, 8))
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			recs[i], errsOf[i] = b.readRecord(ctx, k)
		}()
	}
	wg.Wait()
	infos := make([]ObjectInfo, 0, len(keys))
	for i := range keys {
		if err := errsOf[i]; err != nil {
			switch errs.CodeOf(err) {
			case errs.NotFound, errs.Corrupt, errs.BadRequest:
				continue // deleted meanwhile, or not a valid record: not visible
			}
			return nil, "", err
		}
		infos = append(infos, recs[i].info())
	}
	next := ""
	if aws.ToBool(out.IsTruncated) && len(keys) > 0 {
		next = keys[len(keys)-1]
	}
	return infos, next, nil
}

func (b *s3Backend) Delete(ctx context.Context, key string) error {
	rec, err := b.readRecord(ctx, key)
	if err != nil && !errs.Is(err, errs.Corrupt) {
		return err
	}
	metaName := b.metaName(key)
	if _, err := b.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &b.bucket, Key: &metaName}); err != nil {
		return b.s3Error(err, "delete", key)
	}
	// The object is gone with its record; data that fails to go (or that a corrupt record no longer
	// names) is invisible garbage, not an error.
	if rec != nil {
		b.deleteData(ctx, b.prefix+rec.Data)
	}
	return nil
}

func (b *s3Backend) Ping(ctx context.Context) error {
	if _, err := b.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &b.bucket}); err != nil {
		err = b.s3Error(err, "ping", "")
		if errs.Is(err, errs.NotFound) {
			return errs.Unavailablef("s3 bucket %q does not exist", b.bucket)
		}
		return err
	}
	return nil
}

func (b *s3Backend) Close() error {
	b.conns.closeAll()
	return nil
}

// s3Error codes an S3 failure and names the bucket and key (never credentials).
func (b *s3Backend) s3Error(err error, op, key string) error {
	what := fmt.Sprintf("s3 %s bucket %q", op, b.bucket)
	if key != "" {
		what = fmt.Sprintf("s3 %s %q in bucket %q", op, key, b.bucket)
	}
	var coded *errs.Error
	if errors.As(err, &coded) {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return errs.Wrap(errs.Cancelled, err, "%s", what)
	case errors.Is(err, context.DeadlineExceeded):
		return errs.Wrap(errs.Timeout, err, "%s", what)
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "NoSuchKey", "NotFound", "NoSuchUpload":
			return errs.Wrap(errs.NotFound, err, "%s: not found", what)
		case "NoSuchBucket":
			return errs.Wrap(errs.Unavailable, err, "%s: the bucket does not exist", what)
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "XAdminUserNotFound", "ExpiredToken", "InvalidToken":
			return errs.Wrap(errs.Unauthorized, err, "%s: credentials refused", what)
		case "ExistingObjectIsDirectory", "ObjectParentIsFile":
			return errs.Wrap(errs.Conflict, err, "%s: this server stores objects as files, so a key and a longer key under it (a and a/b) cannot both exist", what)
		case "InvalidRange":
			return errs.Wrap(errs.BadRequest, err, "%s: range not satisfiable", what)
		case "EntityTooLarge", "EntityTooSmall", "InvalidArgument", "InvalidPart", "InvalidPartOrder", "KeyTooLongError", "InvalidRequest":
			return errs.Wrap(errs.BadRequest, err, "%s: refused by the server", what)
		case "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed":
			return errs.Wrap(errs.Unavailable, err, "%s", what)
		}
	}
	var respErr *smithyhttp.ResponseError
	if errors.As(err, &respErr) && respErr.HTTPStatusCode() > 0 {
		switch s := respErr.HTTPStatusCode(); {
		case s == http.StatusNotFound:
			return errs.Wrap(errs.NotFound, err, "%s: not found", what)
		case s == http.StatusUnauthorized || s == http.StatusForbidden:
			return errs.Wrap(errs.Unauthorized, err, "%s: credentials refused", what)
		case s == http.StatusConflict:
			return errs.Wrap(errs.Conflict, err, "%s: conflict", what)
		case s == http.StatusRequestedRangeNotSatisfiable:
			return errs.Wrap(errs.BadRequest, err, "%s: range not satisfiable", what)
		case s >= 500:
			return errs.Wrap(errs.Unavailable, err, "%s: server error", what)
		}
	}
	if isNetworkError(err) {
		return errs.Wrap(errs.Unavailable, err, "%s: cannot reach the S3 server", what)
	}
	return errs.Wrap(errs.Internal, err, "%s", what)
}

// isNetworkError reports failures of the connection itself (refused, reset, cut, silent).
func isNetworkError(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}
