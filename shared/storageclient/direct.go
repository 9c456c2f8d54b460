package storageclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
	"troveng.dev/shared/rpc"
)

// Direct transfers move the bytes between this process and object storage through presigned URLs, so they
// cross neither NATS nor the storage service (which only starts, presigns and verifies). This process must
// be able to reach the object store's endpoint. On a strategy without direct transfers (fs, nats)
// PutDirect falls back to PutStaged (then Put) and GetDirect to Get.
//
// Presigned URLs are bearer secrets: they are never logged and never put into errors (net/http's errors
// quote the URL, so only their cause is kept).

// DirectOptions tune direct transfers. Zero values take the defaults.
type DirectOptions struct {
	Concurrency  int          // parts in flight per transfer (default 4)
	GetChunkSize int64        // bytes per ranged GET (default 8 MiB)
	Attempts     int          // attempts per part or chunk, retries included (default 3)
	PresignBatch int          // part URLs asked for per presign_parts call (default 32)
	HTTPClient   *http.Client // default: a client with a connection pool sized for Concurrency
}

const (
	defaultDirectConcurrency = 4
	defaultGetChunkSize      = 8 << 20
	defaultDirectAttempts    = 3
	defaultPresignBatch      = 32
	directCleanupTimeout     = 30 * time.Second
	directResultWait         = 10 * time.Minute // waiting for complete_direct's outcome when ctx has no deadline
)

// WithDirect returns a copy of c whose direct transfers use o.
func (c *Client) WithDirect(o DirectOptions) *Client {
	cc := *c
	cc.direct = o.withDefaults()
	return &cc
}

func (o DirectOptions) withDefaults() DirectOptions {
	if o.Concurrency <= 0 {
		o.Concurrency = defaultDirectConcurrency
	}
	if o.GetChunkSize <= 0 {
		o.GetChunkSize = defaultGetChunkSize
	}
	if o.Attempts <= 0 {
		o.Attempts = defaultDirectAttempts
	}
	if o.PresignBatch <= 0 {
		o.PresignBatch = defaultPresignBatch
	}
	o.PresignBatch = min(o.PresignBatch, storagev1.MaxPresignBatch)
	if o.HTTPClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 2 * o.Concurrency
		t.ResponseHeaderTimeout = 2 * time.Minute
		o.HTTPClient = &http.Client{Transport: t}
	}
	return o
}

func (c *Client) directOptions() DirectOptions { return c.direct }

// noDirect reports the service's answer for a strategy without direct transfers.
func noDirect(err error) bool {
	return errs.CodeOf(err) == errs.BadRequest && strings.Contains(errs.From(err).Message, storagev1.NoDirect)
}

// PutDirect uploads r's bytes under key straight to object storage: r is read in order into at most
// Concurrency part buffers (hashing the whole stream on the way), the parts go up in parallel to presigned
// URLs (each retried up to Attempts times), and the service verifies size and SHA-256 before the object
// becomes visible. Any failure, ctx's end included, aborts the upload. If the strategy has no direct
// transfers it falls back to PutStaged (a plain Put where staged uploads are missing too), so the upload
// still survives a storage service restart where the strategy allows.
func (c *Client) PutDirect(ctx context.Context, key string, r io.Reader, meta map[string]string) (storagev1.Object, error) {
	if err := ids.ValidateKey(key); err != nil {
		return storagev1.Object{}, err
	}
	if r == nil {
		return storagev1.Object{}, errs.BadRequestf("put %q: no data reader", key)
	}
	var up storagev1.PutDirectReply
	err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointPutDirect), storagev1.PutDirectRequest{Key: key, Metadata: meta}, &up)
	if noDirect(err) {
		obj, _, err := c.PutStaged(ctx, key, r, meta, Staged{})
		return obj, err
	}
	if err != nil {
		return storagev1.Object{}, err
	}
	if up.PartSize <= 0 || up.MaxParts <= 0 || up.Token == "" {
		return storagev1.Object{}, errs.Internalf("storage service started a direct upload of %q without part size or token", key)
	}
	u := &directUpload{c: c, o: c.directOptions(), key: key, up: up, urls: map[int32]storagev1.PresignedRequest{}}
	parts, size, sum, err := u.run(ctx, r)
	if err != nil {
		c.abortDirect(ctx, key, up.Token)
		return storagev1.Object{}, err
	}
	obj, err := c.completeDirect(ctx, storagev1.CompleteDirectRequest{Key: key, Token: up.Token, Parts: parts, Size: size, SHA256: sum})
	if err != nil && errs.CodeOf(err) != errs.Corrupt {
		// A refused completion (say, a rejected part list) leaves the upload open: free its parts. After a
		// corrupt verdict the service has already removed the data.
		c.abortDirect(ctx, key, up.Token)
	}
	return obj, err
}

// abortDirect abandons an upload with a fresh context: the caller's may be what ended it. Best effort.
func (c *Client) abortDirect(ctx context.Context, key, token string) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), directCleanupTimeout)
	defer cancel()
	_ = rpc.Call(actx, c.nc, storagev1.Subject(storagev1.EndpointAbortDirect), storagev1.AbortDirectRequest{Key: key, Token: token}, nil)
}

// completeDirect asks the service to complete and verify, and waits for the outcome on an inbox.
func (c *Client) completeDirect(ctx context.Context, req storagev1.CompleteDirectRequest) (storagev1.Object, error) {
	req.Reply = c.nc.NewRespInbox()
	sub, err := c.nc.SubscribeSync(req.Reply)
	if err != nil {
		return storagev1.Object{}, errs.Wrap(errs.Unavailable, err, "complete %q: cannot subscribe for the outcome", req.Key)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// A replica with every transfer slot taken answers busy: wait a little rather than throw the upload away.
	for attempt := 1; ; attempt++ {
		err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointCompleteDirect), req, nil)
		if err == nil {
			break
		}
		if errs.CodeOf(err) != errs.Busy || attempt == 10 {
			return storagev1.Object{}, err
		}
		select {
		case <-time.After(time.Duration(attempt) * 250 * time.Millisecond):
		case <-ctx.Done():
			return storagev1.Object{}, errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "complete %q", req.Key)
		}
	}
	wctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, directResultWait)
		defer cancel()
	}
	msg, err := sub.NextMsgWithContext(wctx)
	if err != nil {
		code := errs.CodeOf(wctx.Err())
		if wctx.Err() == nil {
			code = errs.Unavailable
		}
		return storagev1.Object{}, errs.Wrap(code, err, "complete %q: no outcome from the storage service (the object may still appear once verified)", req.Key)
	}
	var res storagev1.CompleteDirectResult
	if err := json.Unmarshal(msg.Data, &res); err != nil {
		return storagev1.Object{}, errs.Wrap(errs.Internal, err, "complete %q: unreadable outcome", req.Key)
	}
	if res.Error != nil {
		return storagev1.Object{}, res.Error
	}
	if res.Object == nil {
		return storagev1.Object{}, errs.Internalf("complete %q: the outcome names neither object nor error", req.Key)
	}
	return *res.Object, nil
}

// directUpload is one PutDirect's upload of parts.
type directUpload struct {
	c    *Client
	o    DirectOptions
	key  string
	up   storagev1.PutDirectReply
	urls map[int32]storagev1.PresignedRequest // presigned, not yet used; only the reading goroutine touches it
}

// run reads r into parts and uploads them; it returns the parts in order, the size and the SHA-256.
func (u *directUpload) run(ctx context.Context, r io.Reader) ([]storagev1.CompletedPart, int64, string, error) {
	uctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	free := make(chan *[]byte, u.o.Concurrency) // part buffers, allocated on first use and reused
	for range u.o.Concurrency {
		free <- nil
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		parts []storagev1.CompletedPart
	)
	h := sha256.New()
	size := int64(0)
	for num := int32(1); ; num++ {
		var buf *[]byte
		select {
		case buf = <-free:
		case <-uctx.Done():
		}
		if uctx.Err() != nil {
			break
		}
		if buf == nil {
			b := make([]byte, u.up.PartSize)
			buf = &b
		}
		n, rerr := io.ReadFull(readerCtx{uctx, r}, *buf)
		if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			free <- buf
			cancel(readError(ctx, u.key, rerr))
			break
		}
		if n == 0 && num > 1 { // the data ended exactly at a part boundary
			free <- buf
			break
		}
		if num > u.up.MaxParts {
			free <- buf
			cancel(errs.BadRequestf("put %q: the object is larger than %d parts of %d bytes; raise the storage strategy's part_size", u.key, u.up.MaxParts, u.up.PartSize))
			break
		}
		_, _ = h.Write((*buf)[:n])
		size += int64(n)
		req, err := u.presigned(uctx, num)
		if err != nil {
			free <- buf
			cancel(err)
			break
		}
		wg.Add(1)
		go func(num int32, buf *[]byte, n int) {
			defer wg.Done()
			defer func() { free <- buf }()
			etag, err := u.c.send(uctx, req, (*buf)[:n], nil, u.o.Attempts, u.key)
			if err != nil {
				cancel(err)
				return
			}
			mu.Lock()
			parts = append(parts, storagev1.CompletedPart{Number: num, ETag: etag})
			mu.Unlock()
		}(num, buf, n)
		if int64(n) < u.up.PartSize {
			break
		}
	}
	wg.Wait()
	if err := context.Cause(uctx); err != nil {
		if ctx.Err() != nil {
			return nil, 0, "", errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "put %q abandoned, nothing stored", u.key)
		}
		return nil, 0, "", err
	}
	sorted := make([]storagev1.CompletedPart, len(parts))
	for _, p := range parts {
		sorted[p.Number-1] = p
	}
	return sorted, size, hex.EncodeToString(h.Sum(nil)), nil
}

// presigned returns part num's URL, asking the service for the next batch when it has none.
func (u *directUpload) presigned(ctx context.Context, num int32) (storagev1.PresignedRequest, error) {
	if req, ok := u.urls[num]; ok {
		delete(u.urls, num)
		return req, nil
	}
	req := storagev1.PresignPartsRequest{Key: u.key, Token: u.up.Token}
	for n := num; n < num+int32(u.o.PresignBatch) && n <= u.up.MaxParts; n++ {
		req.Parts = append(req.Parts, n)
	}
	// The parts already uploaded live in the object store, so a storage service away for a while (a
	// restart) costs only the wait: retry the presigning as PutStaged resumes.
	var rep storagev1.PresignPartsReply
	var failedAt time.Time
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		err := rpc.Call(ctx, u.c.nc, storagev1.Subject(storagev1.EndpointPresignParts), req, &rep)
		if err == nil {
			break
		}
		if ctx.Err() != nil || !errs.Is(err, errs.Unavailable) && !errs.Is(err, errs.Timeout) && !errs.Is(err, errs.Busy) {
			return storagev1.PresignedRequest{}, err
		}
		if failedAt.IsZero() {
			failedAt = time.Now()
		}
		if time.Since(failedAt) >= DefaultResumeWithin {
			return storagev1.PresignedRequest{}, errs.Wrap(errs.Unavailable, err, "put %q: gave up presigning part %d after %s", u.key, num, DefaultResumeWithin)
		}
		if werr := sleepCtx(ctx, backoff); werr != nil {
			return storagev1.PresignedRequest{}, errs.Wrap(errs.CodeOfContext(ctx), context.Cause(ctx), "put %q: presigning part %d", u.key, num)
		}
	}
	for _, p := range rep.Parts {
		u.urls[p.Part] = p
	}
	got, ok := u.urls[num]
	if !ok {
		return storagev1.PresignedRequest{}, errs.Internalf("put %q: the storage service presigned no URL for part %d", u.key, num)
	}
	delete(u.urls, num)
	return got, nil
}

// readerCtx stops reading the caller's data once ctx ends.
type readerCtx struct {
	ctx context.Context
	r   io.Reader
}

func (r readerCtx) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// readError codes a failure of the caller's reader: ctx's end, the reader's own code, or bad_request.
func readError(ctx context.Context, key string, err error) error {
	if ctx.Err() != nil {
		return errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "put %q abandoned, nothing stored", key)
	}
	code := errs.CodeOf(err)
	if code == errs.Internal {
		code = errs.BadRequest
	}
	return errs.Wrap(code, err, "put %q: reading the data failed, nothing stored", key)
}

// send performs a presigned request, up to attempts times while failures are transient. A PUT sends body
// and returns the ETag; a GET (into != nil) reads exactly len(into) bytes of the response into it.
func (c *Client) send(ctx context.Context, p storagev1.PresignedRequest, body []byte, into []byte, attempts int, key string) (string, error) {
	var err error
	for attempt := 1; ; attempt++ {
		var etag string
		etag, err = c.sendOnce(ctx, p, body, into, key)
		if err == nil {
			return etag, nil
		}
		if attempt >= attempts || ctx.Err() != nil || !errs.Is(err, errs.Unavailable) {
			return "", err
		}
		select {
		case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		case <-ctx.Done():
			return "", err
		}
	}
}

// directWhat names a presigned request in messages without its URL.
func directWhat(p storagev1.PresignedRequest, key string) string {
	if p.Part > 0 {
		return "upload of part " + itoa(int64(p.Part)) + " of " + quote(key)
	}
	return "read of " + quote(key)
}

func quote(s string) string { return strconv.Quote(s) }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func (c *Client) sendOnce(ctx context.Context, p storagev1.PresignedRequest, body []byte, into []byte, key string) (string, error) {
	what := directWhat(p, key)
	var rd io.Reader
	if p.Method != http.MethodGet {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, p.Method, p.URL, rd)
	if err != nil {
		return "", errs.BadRequestf("%s: the presigned request is malformed", what)
	}
	for k, v := range p.Header {
		req.Header[k] = v
	}
	if p.Method != http.MethodGet {
		req.ContentLength = int64(len(body))
	}
	resp, err := c.directOptions().HTTPClient.Do(req)
	if err != nil {
		return "", transportError(ctx, err, what)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode/100 != 2 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return "", statusError(resp.StatusCode, what)
	}
	if into != nil {
		got, err := io.ReadFull(resp.Body, into)
		if err != nil {
			if got < len(into) && (err == io.EOF || err == io.ErrUnexpectedEOF) {
				return "", errs.Unavailablef("%s: the response ended after %d of %d bytes", what, got, len(into))
			}
			return "", transportError(ctx, err, what)
		}
		return "", nil
	}
	etag := resp.Header.Get("ETag")
	if etag == "" {
		return "", errs.Unavailablef("%s: the object store answered without an ETag", what)
	}
	return etag, nil
}

// transportError codes a failed HTTP exchange, keeping only the cause: *url.Error quotes the URL.
func transportError(ctx context.Context, err error, what string) error {
	if ctx.Err() != nil {
		return errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "%s", what)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return errs.Wrap(errs.Unavailable, err, "%s: cannot reach the object store", what)
}

func statusError(status int, what string) error {
	switch {
	case status == http.StatusForbidden || status == http.StatusUnauthorized:
		return errs.New(errs.Unauthorized, "%s: the object store refused the presigned URL (HTTP %d; expired, or the clocks disagree?)", what, status)
	case status == http.StatusNotFound:
		return errs.NotFoundf("%s: not found in the object store (the upload was aborted or the object replaced or deleted meanwhile)", what)
	case status == http.StatusRequestedRangeNotSatisfiable:
		return errs.BadRequestf("%s: range not satisfiable", what)
	case status == http.StatusTooManyRequests || status == http.StatusRequestTimeout || status >= 500:
		return errs.Unavailablef("%s: the object store answered HTTP %d", what, status)
	}
	return errs.BadRequestf("%s: the object store answered HTTP %d", what, status)
}

// GetDirect writes the object's bytes (or the range [offset, offset+length), length <= 0 meaning to the end)
// to w, reading straight from object storage with parallel ranged GETs of GetChunkSize (Concurrency in
// flight, delivered in order; memory at most Concurrency chunks). A whole-object read is checked against
// the recorded size and SHA-256 (corrupt on mismatch; w has then received the bad bytes, so a caller that
// must not use them buffers or discards on error). Falls back to Get without direct transfers.
func (c *Client) GetDirect(ctx context.Context, key string, offset, length int64, w io.Writer) (storagev1.GetReply, error) {
	if err := ids.ValidateKey(key); err != nil {
		return storagev1.GetReply{}, err
	}
	if offset < 0 {
		return storagev1.GetReply{}, errs.BadRequestf("offset %d is negative", offset)
	}
	var rep storagev1.GetDirectReply
	err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointGetDirect), storagev1.KeyRequest{Key: key}, &rep)
	if noDirect(err) {
		return c.Get(ctx, key, offset, length, w, nil)
	}
	if err != nil {
		return storagev1.GetReply{}, err
	}
	obj := rep.Object
	if offset > 0 && offset >= obj.Size {
		return storagev1.GetReply{}, errs.BadRequestf("range not satisfiable: offset %d is beyond the end of %q (%d bytes)", offset, key, obj.Size)
	}
	n := obj.Size - offset
	if length > 0 && length < n {
		n = length
	}
	out := storagev1.GetReply{Object: obj, Offset: offset, Length: n}
	var h interface {
		io.Writer
		Sum([]byte) []byte
	}
	dst := w
	if offset == 0 && n == obj.Size {
		h = sha256.New()
		dst = io.MultiWriter(w, h)
	}
	if err := c.fetchRanges(ctx, key, rep.Request, offset, n, dst); err != nil {
		return out, err
	}
	if h != nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != obj.SHA256 {
			return out, errs.New(errs.Corrupt, "object %q is corrupt in storage: sha256 %s, recorded %s", key, got, obj.SHA256)
		}
	}
	return out, nil
}

// getChunk is one ranged GET of a direct read.
type getChunk struct {
	off  int64
	buf  *[]byte
	n    int
	done chan struct{}
	err  error
}

// fetchRanges reads [offset, offset+n) with parallel ranged GETs and writes it to w in order.
func (c *Client) fetchRanges(ctx context.Context, key string, p storagev1.PresignedRequest, offset, n int64, w io.Writer) error {
	if n == 0 {
		return nil
	}
	o := c.directOptions()
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	free := make(chan *[]byte, o.Concurrency)
	for range o.Concurrency {
		free <- nil
	}
	queue := make(chan *getChunk, o.Concurrency)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // schedules fetches as buffers free up, in offset order
		defer wg.Done()
		defer close(queue)
		for off := offset; off < offset+n; off += o.GetChunkSize {
			var buf *[]byte
			select {
			case buf = <-free:
			case <-fctx.Done():
				return
			}
			if buf == nil {
				b := make([]byte, o.GetChunkSize)
				buf = &b
			}
			ch := &getChunk{off: off, buf: buf, n: int(min(o.GetChunkSize, offset+n-off)), done: make(chan struct{})}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer close(ch.done)
				req := p
				req.Header = map[string][]string{"Range": {"bytes=" + itoa(ch.off) + "-" + itoa(ch.off+int64(ch.n)-1)}}
				for k, v := range p.Header {
					req.Header[k] = v
				}
				_, ch.err = c.send(fctx, req, nil, (*ch.buf)[:ch.n], o.Attempts, key)
			}()
			queue <- ch // never blocks for long: as many places as buffers
		}
	}()
	var err error
	for ch := range queue {
		if err == nil {
			select {
			case <-ch.done:
				err = ch.err
			case <-fctx.Done():
				err = errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "read of %q", key)
			}
			if err == nil {
				if _, werr := w.Write((*ch.buf)[:ch.n]); werr != nil {
					err = errs.Wrap(errs.CodeOf(werr), werr, "read of %q: writing the bytes failed", key)
				}
			}
			if err != nil {
				cancel()
			}
		}
		<-ch.done // its fetch no longer writes into the buffer
		free <- ch.buf
	}
	wg.Wait()
	if err == nil && ctx.Err() != nil {
		err = errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "read of %q", key)
	}
	return err
}
