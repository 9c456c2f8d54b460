package backend

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// The nats strategy keeps objects in a JetStream Object Store bucket. The store records each object's size
// and SHA-256 digest itself, and the user metadata goes into the object's metadata. A put publishes chunks
// under a fresh id and then the object's info message, so the object becomes visible in one step and an
// overwrite replaces it atomically (the store purges the old chunks afterwards); a put whose reader fails
// purges its chunks.
//
// Configuration keys:
//
//	url        NATS server URL(s), comma separated. Without it the strategy uses the connection the
//	           service passes in Env (through Open), or fails. A service may also call NewNATS directly.
//	creds      path of a NATS credentials file (optional; only with url)
//	bucket     object store bucket (default "trove-artifacts")
//	replicas   stream replicas, 1..5 (default 1)
//	max_bytes  bucket size limit (default unlimited; suffixes KiB, MiB, GiB allowed)
//
//	With replicas or max_bytes the bucket is created or updated to them; without, an existing bucket is
//	used with the settings an operator gave it, and a missing one is created with the defaults.
//	timeout    deadline of each control call (stat, list, delete, ping) and the longest silence tolerated
//	           while streaming a get (default 10s)
//
// Limits: the object store has no ranged read, so a Get at an offset reads and discards the bytes before
// it (cost grows with the offset). List reads the info of every object in the bucket and sorts it on each
// call (fine for thousands of objects, slow for millions). A put cut off by a NATS outage may leave its
// chunks (never visible) in the stream; nothing reclaims them but deleting the bucket.

func init() { Register("nats", openNATS) }

// NATSDefaultBucket is the bucket the nats strategy uses when none is configured.
const NATSDefaultBucket = "trove-artifacts"

type natsBackend struct {
	obs     jetstream.ObjectStore
	bucket  string
	nc      *nats.Conn // owned connection, closed by Close; nil when the caller owns it
	timeout time.Duration
}

func openNATS(ctx context.Context, values map[string]string) (Backend, error) {
	cfg, err := newConfig("nats", values, "url", "creds", "bucket", "replicas", "max_bytes", "timeout")
	if err != nil {
		return nil, err
	}
	url := cfg.str("url", "")
	if url == "" && envFrom(ctx).NATS == nil {
		return nil, errs.BadRequestf("nats strategy: configuration key \"url\" is required (no service connection to share)")
	}
	if url == "" && cfg.str("creds", "") != "" {
		return nil, errs.BadRequestf("nats strategy: \"creds\" needs \"url\"; the shared service connection has its own credentials")
	}
	bucket := cfg.str("bucket", NATSDefaultBucket)
	if err := ids.Validate("bucket", bucket); err != nil {
		return nil, err
	}
	replicas, err := cfg.integer("replicas", 1, 1, 5)
	if err != nil {
		return nil, err
	}
	maxBytes, err := cfg.bytes("max_bytes", -1, 1, 1<<62)
	if err != nil {
		return nil, err
	}
	timeout, err := cfg.duration("timeout", 10*time.Second)
	if err != nil {
		return nil, err
	}
	nc, owned := envFrom(ctx).NATS, false
	if url != "" {
		opts := []nats.Option{nats.Name("trove-storage"), nats.MaxReconnects(-1), nats.Timeout(timeout)}
		if creds := cfg.str("creds", ""); creds != "" {
			opts = append(opts, nats.UserCredentials(creds))
		}
		if nc, err = nats.Connect(url, opts...); err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "nats strategy: connect to %s", redactURL(url))
		}
		owned = true
	}
	closeOwned := func() {
		if owned {
			nc.Close()
		}
	}
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(timeout))
	if err != nil {
		closeOwned()
		return nil, errs.Wrap(errs.Internal, err, "nats strategy: jetstream")
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var obs jetstream.ObjectStore
	if values["replicas"] != "" || values["max_bytes"] != "" {
		obs, err = js.CreateOrUpdateObjectStore(cctx, jetstream.ObjectStoreConfig{
			Bucket: bucket, Replicas: int(replicas), MaxBytes: maxBytes, Storage: jetstream.FileStorage,
		})
	} else {
		// No settings given: an existing bucket keeps the ones an operator chose.
		obs, err = openOrCreateObjectStore(cctx, js, bucket)
	}
	if err != nil {
		closeOwned()
		return nil, natsError(err, "create or update bucket "+bucket, "")
	}
	b := &natsBackend{obs: obs, bucket: bucket, timeout: timeout}
	if owned {
		b.nc = nc
	}
	return b, nil
}

// NewNATS opens the nats strategy on a connection the caller owns (Close leaves it open). The bucket is
// used as it is when it exists (its settings untouched) and created with defaults when it does not.
func NewNATS(ctx context.Context, js jetstream.JetStream, bucket string) (Backend, error) {
	if err := ids.Validate("bucket", bucket); err != nil {
		return nil, err
	}
	timeout := 10 * time.Second
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	obs, err := openOrCreateObjectStore(cctx, js, bucket)
	if err != nil {
		return nil, natsError(err, "open bucket "+bucket, "")
	}
	return &natsBackend{obs: obs, bucket: bucket, timeout: timeout}, nil
}

func openOrCreateObjectStore(ctx context.Context, js jetstream.JetStream, bucket string) (jetstream.ObjectStore, error) {
	obs, err := js.ObjectStore(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		obs, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: bucket, Storage: jetstream.FileStorage})
		if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			obs, err = js.ObjectStore(ctx, bucket) // created concurrently by another replica
		}
	}
	return obs, err
}

func (b *natsBackend) Put(ctx context.Context, key string, r io.Reader, meta map[string]string) (ObjectInfo, error) {
	if err := checkPut(key, r, meta); err != nil {
		return ObjectInfo{}, err
	}
	// The store purges a failed put's chunks with the context it was given, so it must not be the caller's
	// (it may be cancelled already): the caller's end is seen through the reader instead, and without a
	// deadline each publish is bounded by the JetStream default timeout.
	info, err := b.obs.Put(context.WithoutCancel(ctx), jetstream.ObjectMeta{Name: key, Metadata: copyMetadata(meta)}, sourceReader{ctx, r})
	if err != nil {
		var re *readerError
		if !errors.As(err, &re) && ctx.Err() == nil {
			err = natsError(err, "put", key)
		}
		return ObjectInfo{}, putError(ctx, key, err)
	}
	return natsInfo(info)
}

// natsInfo converts the store's info; its digest is "SHA-256=" + base64url.
func natsInfo(info *jetstream.ObjectInfo) (ObjectInfo, error) {
	sum, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil || len(sum) != 32 {
		return ObjectInfo{}, errs.New(errs.Corrupt, "nats bucket %q: object %q has digest %q, not a SHA-256", info.Bucket, info.Name, info.Digest)
	}
	return ObjectInfo{
		Key: info.Name, Size: int64(info.Size), SHA256: hex.EncodeToString(sum),
		Metadata: copyMetadata(info.Metadata), Modified: info.ModTime.UTC(),
	}, nil
}

func (b *natsBackend) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := ids.ValidateKey(key); err != nil {
		return ObjectInfo{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	info, err := b.obs.GetInfo(cctx, key)
	if err != nil {
		return ObjectInfo{}, natsError(err, "stat", key)
	}
	return natsInfo(info)
}

func (b *natsBackend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, ObjectInfo, error) {
	if err := ids.ValidateKey(key); err != nil {
		return nil, ObjectInfo{}, err
	}
	// The store bounds a whole get by its context's deadline (5 s when it has none), and a get may
	// stream for hours: give it a far deadline and watch for silence ourselves.
	gctx, cancel := context.WithCancel(ctx)
	if _, ok := ctx.Deadline(); !ok {
		gctx, cancel = context.WithTimeout(ctx, 7*24*time.Hour)
	}
	res, err := b.obs.Get(gctx, key)
	if err != nil {
		cancel()
		return nil, ObjectInfo{}, natsError(err, "get", key)
	}
	raw, err := res.Info() // the info of the version being streamed
	if err != nil {
		_ = res.Close()
		cancel()
		return nil, ObjectInfo{}, natsError(err, "get", key)
	}
	info, err := natsInfo(raw)
	if err != nil {
		_ = res.Close()
		cancel()
		return nil, ObjectInfo{}, err
	}
	n, err := resolveRange(key, info.Size, offset, length)
	if err != nil {
		_ = res.Close()
		cancel()
		return nil, ObjectInfo{}, err
	}
	r := &natsReader{b: b, key: key, res: res, cancel: cancel, idle: b.timeout, left: -1}
	if err := r.skip(offset); err != nil {
		_ = r.Close()
		return nil, ObjectInfo{}, err
	}
	if offset+n < info.Size {
		// A range that ends before the object does stops there; one that reaches the end reads through
		// the store's end of stream, where the store checks the digest.
		r.left = n
	}
	return r, info, nil
}

// natsReader reads an object from the store, coding errors and failing when the stream goes silent.
type natsReader struct {
	b      *natsBackend
	key    string
	res    jetstream.ObjectResult
	cancel context.CancelFunc
	idle   time.Duration
	left   int64 // bytes still to deliver; -1: to the end

	mu     sync.Mutex
	silent bool
}

func (r *natsReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if r.left > 0 && int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.readRes(p)
	if r.left > 0 {
		r.left -= int64(n)
	}
	return n, err
}

// skip reads and discards the first n bytes: the store has no ranged read.
func (r *natsReader) skip(n int64) error {
	if n == 0 {
		return nil
	}
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	buf := *bufp
	for n > 0 {
		m, err := r.readRes(buf[:min(int64(len(buf)), n)])
		n -= int64(m)
		if err == io.EOF && n > 0 {
			return errs.New(errs.Corrupt, "nats bucket %q: object %q ended before its recorded size", r.b.bucket, r.key)
		}
		if err != nil && err != io.EOF {
			return err
		}
	}
	return nil
}

// readRes reads from the store's result with a watchdog: if no data arrives for r.idle, the get is
// cancelled and reported as Unavailable.
func (r *natsReader) readRes(p []byte) (int, error) {
	t := time.AfterFunc(r.idle, func() {
		r.mu.Lock()
		r.silent = true
		r.mu.Unlock()
		r.cancel()
	})
	n, err := r.res.Read(p)
	t.Stop()
	if err == nil || err == io.EOF {
		return n, err
	}
	r.mu.Lock()
	silent := r.silent
	r.mu.Unlock()
	if silent {
		return n, errs.Wrap(errs.Unavailable, err, "nats bucket %q: get %q: no data for %s", r.b.bucket, r.key, r.idle)
	}
	return n, natsError(err, "get", r.key)
}

func (r *natsReader) Close() error {
	err := r.res.Close()
	r.cancel()
	if err != nil {
		return natsError(err, "close get", r.key)
	}
	return nil
}

func (b *natsBackend) List(ctx context.Context, prefix, startAfter string, limit int) ([]ObjectInfo, string, error) {
	if err := ids.ValidatePrefix(prefix); err != nil {
		return nil, "", err
	}
	limit = normalizeLimit(limit)
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	all, err := b.obs.List(cctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", natsError(err, "list", prefix)
	}
	matched := make([]*jetstream.ObjectInfo, 0, len(all))
	for _, o := range all {
		if o.Deleted || !strings.HasPrefix(o.Name, prefix) || o.Name <= startAfter || ids.ValidateKey(o.Name) != nil {
			continue
		}
		matched = append(matched, o)
	}
	slices.SortFunc(matched, func(a, b *jetstream.ObjectInfo) int { return strings.Compare(a.Name, b.Name) })
	next := ""
	if len(matched) > limit {
		matched = matched[:limit]
		next = matched[limit-1].Name
	}
	out := make([]ObjectInfo, 0, len(matched))
	for _, o := range matched {
		info, err := natsInfo(o)
		if err != nil {
			continue // not a valid object: not visible
		}
		out = append(out, info)
	}
	return out, next, nil
}

func (b *natsBackend) Delete(ctx context.Context, key string) error {
	if err := ids.ValidateKey(key); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	// The store's Delete succeeds on an already deleted object: look first.
	if _, err := b.obs.GetInfo(cctx, key); err != nil {
		return natsError(err, "delete", key)
	}
	if err := b.obs.Delete(cctx, key); err != nil {
		return natsError(err, "delete", key)
	}
	return nil
}

func (b *natsBackend) Ping(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	if _, err := b.obs.Status(cctx); err != nil {
		return natsError(err, "ping bucket "+b.bucket, "")
	}
	return nil
}

func (b *natsBackend) Close() error {
	if b.nc != nil {
		b.nc.Close()
	}
	return nil
}

// natsError codes a NATS or object store failure.
func natsError(err error, op, key string) error {
	var coded *errs.Error
	if errors.As(err, &coded) {
		return err
	}
	what := "nats " + op
	if key != "" {
		what += " " + strings.ToValidUTF8(key, "?")
	}
	switch {
	case errors.Is(err, context.Canceled):
		return errs.Wrap(errs.Cancelled, err, "%s", what)
	case errors.Is(err, jetstream.ErrObjectNotFound), errors.Is(err, jetstream.ErrNoObjectsFound):
		return errs.Wrap(errs.NotFound, err, "%s: not found", what)
	case errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
		return errs.Wrap(errs.Unavailable, err, "%s: the object store bucket does not exist", what)
	case errors.Is(err, jetstream.ErrDigestMismatch), errors.Is(err, jetstream.ErrBadObjectMeta), errors.Is(err, jetstream.ErrInvalidDigestFormat):
		return errs.Wrap(errs.Corrupt, err, "%s", what)
	case errors.Is(err, jetstream.ErrInvalidStoreName), errors.Is(err, jetstream.ErrBadRequest):
		return errs.Wrap(errs.BadRequest, err, "%s", what)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrReconnectBufExceeded), errors.Is(err, nats.ErrNoServers),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount),
		errors.Is(err, jetstream.ErrAsyncPublishTimeout):
		return errs.Wrap(errs.Unavailable, err, "%s: NATS JetStream unreachable", what)
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch {
		case apiErr.Code == 404:
			return errs.Wrap(errs.NotFound, err, "%s", what)
		case apiErr.Code >= 500:
			return errs.Wrap(errs.Unavailable, err, "%s", what)
		case strings.Contains(apiErr.Description, "maximum bytes") || strings.Contains(apiErr.Description, "insufficient resources"):
			return errs.Wrap(errs.Unavailable, err, "%s: the bucket or server is full", what)
		}
	}
	return errs.Wrap(errs.Internal, err, "%s", what)
}

// redactURL drops user:password from a NATS URL list for messages.
func redactURL(url string) string {
	parts := strings.Split(url, ",")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			scheme := ""
			if s := strings.Index(p, "://"); s >= 0 && s < at {
				scheme = p[:s+3]
			}
			parts[i] = scheme + "REDACTED@" + p[at+1:]
		}
	}
	return strings.Join(parts, ",")
}
