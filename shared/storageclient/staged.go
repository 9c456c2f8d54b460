package storageclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"strings"
	"time"

	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/stream"
)

// Staged tunes PutStaged.
type Staged struct {
	// SegmentSize is the bytes per append (default DefaultSegmentSize). The client holds at most two
	// segments: the one storage has not acknowledged yet, which it sends again after an interruption, and
	// the one it is reading.
	SegmentSize int
	// Within is how long to keep trying after a failure before giving up (0: DefaultResumeWithin). Any
	// segment acknowledged starts the window again.
	Within time.Duration
	// OnResume, if not nil, is told before each resumed append where it starts and what ended the last.
	OnResume func(offset int64, cause error)
}

// DefaultSegmentSize is PutStaged's default append size: two frames of the framed format.
const DefaultSegmentSize = 8 << 20

const stagedAbortTimeout = 10 * time.Second

// PutStaged uploads r's bytes under key like Put, but as a staged upload: segments that storage holds
// durably once acknowledged, so that the storage service restarting or the link to it failing mid-upload
// costs only the segment in flight. The client keeps that segment, waits for storage to answer again, asks
// how much it holds and continues from there, as long as storage answers within opt.Within; r is read
// once, so a producer behind it (a tool's stdout) never has to start over. Nothing is visible under key
// until the last segment is in and the size and SHA-256 of the whole match what storage holds. It returns
// the stored object and how many times it resumed.
//
// A strategy without staged uploads (see storagev1.NoStaged) makes it a plain Put, which is not resumed.
// On failure the staged upload is aborted (best effort; storage drops abandoned ones after a day).
func (c *Client) PutStaged(ctx context.Context, key string, r io.Reader, meta map[string]string, opt Staged) (storagev1.Object, int, error) {
	if err := ids.ValidateKey(key); err != nil {
		return storagev1.Object{}, 0, err
	}
	if opt.SegmentSize <= 0 {
		opt.SegmentSize = DefaultSegmentSize
	}
	if opt.Within <= 0 {
		opt.Within = DefaultResumeWithin
	}
	var up storagev1.StagedUpload
	err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointStagedBegin), storagev1.StagedBeginRequest{Key: key, Metadata: meta}, &up)
	if errs.Is(err, errs.BadRequest) && strings.Contains(err.Error(), storagev1.NoStaged) {
		obj, err := c.Put(ctx, key, r, meta)
		return obj, 0, err
	}
	if err != nil {
		return storagev1.Object{}, 0, err
	}
	p := &stagedPut{c: c, key: key, token: up.Token, opt: opt}
	obj, err := p.run(ctx, r)
	if err != nil {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stagedAbortTimeout)
		_ = rpc.Call(actx, c.nc, storagev1.Subject(storagev1.EndpointStagedAbort), storagev1.StagedRequest{Key: key, Token: up.Token}, nil)
		cancel()
	}
	return obj, p.resumes, err
}

// stagedPut is one PutStaged. The caller's goroutine reads r into segments; one sender goroutine appends
// them in order, so r is never read after PutStaged returns.
type stagedPut struct {
	c          *Client
	key, token string
	opt        Staged
	committed  int64 // what storage acknowledged holding (the sender's)
	resumes    int
}

type segment struct {
	buf   []byte
	start int64
}

func (p *stagedPut) run(ctx context.Context, r io.Reader) (storagev1.Object, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	segs := make(chan segment)
	free := make(chan []byte, 2)
	sent := make(chan error, 1)
	go func() {
		for s := range segs {
			if err := p.send(sctx, s); err != nil {
				sent <- err
				return
			}
			free <- s.buf[:cap(s.buf)]
		}
		sent <- nil
	}()
	// stop ends the sender and returns err (what failed first: the sender's own error is passed back
	// into sent by whoever took it).
	stop := func(err error) error {
		close(segs)
		cancel()
		if serr := <-sent; err == nil {
			return serr
		}
		return err
	}

	h := sha256.New()
	var size int64
	allocated := 0
	for {
		var buf []byte
		if allocated < cap(free) && len(free) == 0 {
			buf = make([]byte, p.opt.SegmentSize)
			allocated++
		} else {
			select {
			case buf = <-free:
			case err := <-sent:
				sent <- err
				return storagev1.Object{}, stop(err)
			case <-ctx.Done():
				return storagev1.Object{}, stop(errs.Wrap(errs.CodeOfContext(ctx), context.Cause(ctx), "put %q abandoned", p.key))
			}
		}
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			h.Write(buf[:n])
			select {
			case segs <- segment{buf: buf[:n], start: size}:
			case err := <-sent:
				sent <- err
				return storagev1.Object{}, stop(err)
			case <-ctx.Done():
				return storagev1.Object{}, stop(errs.Wrap(errs.CodeOfContext(ctx), context.Cause(ctx), "put %q abandoned", p.key))
			}
			size += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			code := errs.CodeOf(rerr)
			if code == errs.Internal {
				code = errs.BadRequest // the caller's input breaking off, as Put reports it
			}
			return storagev1.Object{}, stop(errs.Wrap(code, rerr, "put %q: reading the data failed, nothing stored", p.key))
		}
	}
	close(segs)
	if err := <-sent; err != nil {
		return storagev1.Object{}, err
	}
	return p.complete(ctx, size, hex.EncodeToString(h.Sum(nil)))
}

// send appends one segment, resuming after interruptions.
func (p *stagedPut) send(ctx context.Context, s segment) error {
	end := s.start + int64(len(s.buf))
	var failedAt time.Time
	backoff := 100 * time.Millisecond
	for {
		if p.committed >= end {
			return nil
		}
		if p.committed < s.start {
			return errs.New(errs.Conflict, "put %q: storage holds %d bytes, fewer than the %d it acknowledged; start over", p.key, p.committed, s.start)
		}
		err := p.appendOnce(ctx, p.committed, s.buf[p.committed-s.start:])
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || !resumable(err) {
			return err
		}
		// Storage went away or answered out of turn: wait for it, then ask what it holds.
		if failedAt.IsZero() {
			failedAt = time.Now()
		}
		for {
			if time.Since(failedAt) >= p.opt.Within {
				return errs.Wrap(errs.Unavailable, err, "put %q: gave up resuming at byte %d after %s without progress", p.key, p.committed, p.opt.Within)
			}
			if werr := sleepCtx(ctx, backoff); werr != nil {
				return errs.Wrap(errs.CodeOfContext(ctx), context.Cause(ctx), "put %q: resuming at byte %d", p.key, p.committed)
			}
			backoff = min(2*backoff, 5*time.Second)
			var st storagev1.StagedUpload
			serr := rpc.Call(ctx, p.c.nc, storagev1.Subject(storagev1.EndpointStagedStatus), storagev1.StagedRequest{Key: p.key, Token: p.token}, &st)
			if serr == nil {
				if st.Committed > p.committed {
					failedAt, backoff = time.Time{}, 100*time.Millisecond
				}
				p.committed = st.Committed
				break
			}
			if !resumable(serr) || errs.Is(serr, errs.Conflict) {
				return serr
			}
		}
		p.resumes++
		if p.opt.OnResume != nil {
			p.opt.OnResume(p.committed, err)
		}
	}
}

// appendOnce streams b to storage at offset.
func (p *stagedPut) appendOnce(ctx context.Context, offset int64, b []byte) error {
	var rep storagev1.PutReply
	req := storagev1.StagedAppendRequest{Key: p.key, Token: p.token, Offset: offset}
	if err := rpc.Call(ctx, p.c.nc, storagev1.Subject(storagev1.EndpointStagedAppend), req, &rep); err != nil {
		return err
	}
	opts := p.c.stream
	if rep.ChunkSize > 0 {
		opts.ChunkSize = rep.ChunkSize
	}
	result, _, err := stream.Send(ctx, p.c.nc, rep.Stream, bytes.NewReader(b), opts)
	if err != nil {
		return err
	}
	var st storagev1.StagedUpload
	if err := json.Unmarshal(result, &st); err != nil {
		return errs.Wrap(errs.Internal, err, "storage service acknowledged an append with an unreadable result")
	}
	if st.Committed != offset+int64(len(b)) {
		return errs.New(errs.Conflict, "put %q: storage acknowledged holding %d bytes after an append of %d at %d", p.key, st.Committed, len(b), offset)
	}
	p.committed = st.Committed
	return nil
}

// complete commits the upload, retrying while storage is away. A retry that finds the upload gone checks
// whether the first attempt committed it (its answer lost) before calling it an error.
func (p *stagedPut) complete(ctx context.Context, size int64, sum string) (storagev1.Object, error) {
	var failedAt time.Time
	backoff := 100 * time.Millisecond
	retried := false
	for {
		var obj storagev1.Object
		req := storagev1.StagedCompleteRequest{Key: p.key, Token: p.token, Size: size, SHA256: sum}
		err := rpc.Call(ctx, p.c.nc, storagev1.Subject(storagev1.EndpointStagedComplete), req, &obj)
		if err == nil {
			return obj, nil
		}
		if retried && errs.Is(err, errs.NotFound) {
			if o, serr := p.c.Stat(ctx, p.key); serr == nil && o.Size == size && o.SHA256 == sum {
				return o, nil
			}
		}
		if ctx.Err() != nil || !errs.Is(err, errs.Unavailable) && !errs.Is(err, errs.Timeout) {
			return storagev1.Object{}, err
		}
		if failedAt.IsZero() {
			failedAt = time.Now()
		}
		if time.Since(failedAt) >= p.opt.Within {
			return storagev1.Object{}, errs.Wrap(errs.Unavailable, err, "put %q: gave up completing after %s", p.key, p.opt.Within)
		}
		if werr := sleepCtx(ctx, backoff); werr != nil {
			return storagev1.Object{}, errs.Wrap(errs.CodeOfContext(ctx), context.Cause(ctx), "put %q: completing", p.key)
		}
		backoff = min(2*backoff, 5*time.Second)
		retried = true
	}
}

// resumable: storage away (unavailable, timeout, busy) or out of step with us (conflict: an append whose
// answer was lost); status tells where it stands.
func resumable(err error) bool {
	return errs.Is(err, errs.Unavailable) || errs.Is(err, errs.Timeout) || errs.Is(err, errs.Busy) || errs.Is(err, errs.Conflict)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// PurgeStaged drops every staged upload under prefix (none on a strategy without staged uploads) and
// returns how many: the cleanup of whoever owns the keys once the writers holding the tokens are gone.
func (c *Client) PurgeStaged(ctx context.Context, prefix string) (int, error) {
	var rep storagev1.StagedPurgeReply
	err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointStagedPurge), storagev1.StagedPurgeRequest{Prefix: prefix}, &rep)
	return rep.Aborted, err
}
