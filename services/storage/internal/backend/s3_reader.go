package backend

import (
	"context"
	"io"
	"sync"

	"troveng.dev/shared/errs"
)

// s3ParallelReader delivers a byte range of a data object in order while fetching up to concurrency
// part-sized chunks of it in parallel (ranged GETs). Memory stays at most concurrency x part_size: a chunk's
// buffer is taken from the pool when its fetch starts and returned once the reader has delivered it, and a
// new fetch starts only when a delivered chunk frees its slot.
type s3ParallelReader struct {
	b        *s3Backend
	key      string
	dataName string
	ctx      context.Context
	cancel   context.CancelFunc

	slots   chan struct{}  // one per chunk buffer in use
	queue   chan *s3Chunk  // fetches in offset order
	sched   sync.WaitGroup // the scheduler goroutine
	fetches sync.WaitGroup // fetch goroutines
	cur     *s3Chunk       // chunk being delivered
	pos     int            // delivered bytes of cur
	err     error          // sticky
	closed  bool
}

type s3Chunk struct {
	off  int64
	n    int
	buf  *[]byte
	done chan struct{}
	err  error
}

// s3ChunkAttempts is how often a chunk whose body breaks off mid-way is fetched again (the SDK retries
// failed requests, not bodies that fail after the response started).
const s3ChunkAttempts = 3

func newS3ParallelReader(ctx context.Context, b *s3Backend, key, dataName string, offset, n int64) *s3ParallelReader {
	cctx, cancel := context.WithCancel(ctx)
	r := &s3ParallelReader{
		b: b, key: key, dataName: dataName, ctx: cctx, cancel: cancel,
		slots: make(chan struct{}, b.concurrency),
		queue: make(chan *s3Chunk, b.concurrency),
	}
	r.sched.Add(1)
	go r.schedule(offset, offset+n)
	return r
}

// schedule starts a fetch per chunk as slots free up, queueing them in order; it closes the queue at the
// end of the range or when the reader is closed.
func (r *s3ParallelReader) schedule(start, end int64) {
	defer r.sched.Done()
	defer close(r.queue)
	for off := start; off < end; off += r.b.partSize {
		select {
		case r.slots <- struct{}{}:
		case <-r.ctx.Done():
			return
		}
		c := &s3Chunk{off: off, n: int(min(r.b.partSize, end-off)), buf: r.b.getBuf(), done: make(chan struct{})}
		r.fetches.Add(1)
		go r.fetch(c)
		// Never blocks: queued plus delivered chunks hold slots, and there are as many queue places as slots.
		r.queue <- c
	}
}

func (r *s3ParallelReader) fetch(c *s3Chunk) {
	defer r.fetches.Done()
	defer close(c.done)
	for attempt := 1; ; attempt++ {
		c.err = r.fetchOnce(c)
		if c.err == nil || attempt == s3ChunkAttempts || r.ctx.Err() != nil || !errs.Is(c.err, errs.Unavailable) {
			return
		}
	}
}

func (r *s3ParallelReader) fetchOnce(c *s3Chunk) error {
	body, err := r.b.getRange(r.ctx, r.key, r.dataName, c.off, int64(c.n))
	if err != nil {
		return err
	}
	defer func() { _ = body.Close() }()
	got, err := io.ReadFull(body, (*c.buf)[:c.n])
	switch {
	case err == io.ErrUnexpectedEOF || err == io.EOF:
		return errs.Unavailablef("s3 bucket %q: object %q: a ranged GET at %d returned %d of %d bytes", r.b.bucket, r.key, c.off, got, c.n)
	case err != nil:
		return r.b.s3Error(err, "read", r.key)
	}
	return nil
}

// next makes the next chunk current, waiting for its fetch; io.EOF at the end of the range.
func (r *s3ParallelReader) next() error {
	var c *s3Chunk
	var ok bool
	select {
	case c, ok = <-r.queue:
	case <-r.ctx.Done():
		return r.ctxError()
	}
	if !ok {
		if err := r.ctx.Err(); err != nil {
			return r.ctxError()
		}
		return io.EOF
	}
	r.cur, r.pos = c, 0
	select {
	case <-c.done:
	case <-r.ctx.Done():
		return r.ctxError()
	}
	return c.err
}

func (r *s3ParallelReader) ctxError() error {
	err := r.ctx.Err()
	return errs.Wrap(errs.CodeOf(err), err, "s3 get %q in bucket %q", r.key, r.b.bucket)
}

// release returns the delivered current chunk's buffer and slot.
func (r *s3ParallelReader) release() {
	r.b.putBuf(r.cur.buf)
	r.cur = nil
	<-r.slots
}

func (r *s3ParallelReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for r.cur == nil {
		if err := r.next(); err != nil {
			r.err = err
			return 0, err
		}
	}
	n := copy(p, (*r.cur.buf)[r.pos:r.cur.n])
	r.pos += n
	if r.pos == r.cur.n {
		r.release()
	}
	return n, nil
}

// WriteTo hands whole chunks to w, sparing io.Copy an intermediate buffer.
func (r *s3ParallelReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if r.err != nil {
			if r.err == io.EOF {
				return total, nil
			}
			return total, r.err
		}
		if r.cur == nil {
			if err := r.next(); err != nil {
				r.err = err
				continue
			}
		}
		n, err := w.Write((*r.cur.buf)[r.pos:r.cur.n])
		total += int64(n)
		r.pos += n
		if err != nil {
			return total, err
		}
		if r.pos == r.cur.n {
			r.release()
		}
	}
}

// Close stops the fetches and returns every buffer to the pool once no goroutine can write into it.
func (r *s3ParallelReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.cancel()
	r.sched.Wait()
	r.fetches.Wait()
	if r.cur != nil {
		r.b.putBuf(r.cur.buf)
		r.cur = nil
	}
	for c := range r.queue {
		r.b.putBuf(c.buf)
	}
	if r.err == nil {
		r.err = errs.BadRequestf("read of %q after Close", r.key)
	}
	return nil
}
