package stream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/telemetry"
)

// Writer is the sending side of one stream: Write, then Close (which waits for the receiver's final
// ack), or Abort.
type Writer struct {
	nc        *nats.Conn
	opts      Options
	subject   string // the receiver's inbox
	ctl       string // our control inbox
	sub       *nats.Subscription
	link      *link
	chunkSize int

	// Owned by the writing goroutine (Write/Close).
	buf  []byte // a partial chunk not sent yet
	hash hash.Hash
	size int64

	mu          sync.Mutex
	cond        *sync.Cond
	accepted    bool
	credit      uint64 // highest data seq the receiver allows
	reserved    uint64 // highest seq handed out for publishing
	sent        uint64 // highest seq (data or trailer) whose publish returned; pings report it
	trailerSent bool
	done        bool   // the receiver's final done arrived
	result      []byte // its result
	err         error  // the stream failed (terminal)
	trailer     Trailer
}

// Dial opens a stream to the receiver listening on subject: it sends the open (with ctx's trace
// context) and waits for the receiver's first credit. A subject nobody listens on fails fast with
// errs.Unavailable. ctx governs the whole stream: when it ends, the stream fails on both sides.
// On the sender, Options.Window is not used (the receiver grants the credit).
func Dial(ctx context.Context, nc *nats.Conn, subject string, opts Options) (*Writer, error) {
	if err := checkConnected(nc); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, errs.Wrap(errs.CodeOfContext(ctx), context.Cause(ctx), "stream: not dialled")
	}
	if subject == "" {
		return nil, errs.BadRequestf("stream: no receiver subject to dial")
	}
	opts, err := opts.withDefaults(nc)
	if err != nil {
		return nil, err
	}
	w := &Writer{nc: nc, opts: opts, subject: subject, ctl: nc.NewInbox(), chunkSize: opts.ChunkSize, hash: sha256.New()}
	w.cond = sync.NewCond(&w.mu)
	w.link = newLink(ctx, nc, opts.IdleTimeout)
	w.link.heard()
	w.sub, err = nc.Subscribe(w.ctl, w.handle)
	if err != nil {
		w.link.shutdown()
		return nil, errs.Wrap(errs.Unavailable, err, "stream: cannot subscribe to the sender's control inbox")
	}
	if err := w.sub.SetPendingLimits(controlPendingMsgs, 4*int(nc.MaxPayload())); err != nil {
		_ = w.sub.Unsubscribe()
		w.link.shutdown()
		return nil, errs.Wrap(errs.Internal, err, "stream: cannot set pending limits")
	}
	open := &nats.Msg{Subject: subject, Reply: w.ctl, Header: nats.Header{
		hdrKind:      {kindOpen},
		hdrVersion:   {protocolVersion},
		hdrChunkSize: {strconv.Itoa(opts.ChunkSize)},
		hdrIdleMs:    {strconv.FormatInt(opts.IdleTimeout.Milliseconds(), 10)},
	}}
	telemetry.InjectMsg(ctx, open)
	if err := nc.PublishMsg(open); err != nil {
		code := errs.Unavailable
		if errors.Is(err, nats.ErrBadSubject) {
			code = errs.BadRequest
		}
		err = errs.Wrap(code, err, "stream: cannot send the open to %q", subject)
		w.fail(err, false) // shuts down; the watcher has not started, so there is nothing to wait for
		return nil, err
	}
	w.link.sent()
	// The watcher starts only now, so that an abort it sends (ctx ended) can never overtake the open.
	go w.link.watch("sender", w.ping, w.fail, w.idleError)

	w.mu.Lock()
	for !w.accepted && w.err == nil {
		w.cond.Wait()
	}
	err = w.err
	w.mu.Unlock()
	if err != nil {
		w.release()
		return nil, err
	}
	return w, nil
}

// Write sends p, cut into chunks; it blocks while the receiver grants no credit and fails with the
// receiver's error if the receiver cancelled or failed.
func (w *Writer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if len(w.buf) == 0 && len(p) >= w.chunkSize {
			// A whole chunk straight from p: publishing copies it into the connection's buffer.
			if err := w.sendChunk(p[:w.chunkSize]); err != nil {
				return written, err
			}
			p = p[w.chunkSize:]
			written += w.chunkSize
			continue
		}
		if w.buf == nil {
			w.buf = make([]byte, 0, w.chunkSize)
		}
		n := min(len(p), w.chunkSize-len(w.buf))
		w.buf = append(w.buf, p[:n]...)
		p = p[n:]
		written += n
		if len(w.buf) == w.chunkSize {
			if err := w.sendChunk(w.buf); err != nil {
				return written, err
			}
			w.buf = w.buf[:0]
		}
	}
	if err := w.failed(); err != nil {
		return written, err
	}
	return written, nil
}

// Close sends what is buffered and the trailer, then waits for the receiver's final ack: it returns
// the receiver's result (Receiver.Finish) or its error. Close releases the writer on every path.
func (w *Writer) Close() (result []byte, tr Trailer, err error) { return w.CloseChecked(nil) }

// CloseChecked is Close with a last word for the sender: check sees the trailer (size and SHA-256 of every
// byte written) before it is sent, and an error from it ends the stream with that error instead. A sender
// that knows what the bytes should hash to (storage: the digest recorded at put) verifies them this way
// without hashing them a second time.
func (w *Writer) CloseChecked(check func(Trailer) error) (result []byte, tr Trailer, err error) {
	defer w.release()
	if err := w.failed(); err != nil {
		return nil, Trailer{}, err
	}
	w.mu.Lock()
	closing := w.trailerSent
	w.mu.Unlock()
	if !closing {
		if len(w.buf) > 0 {
			if err := w.sendChunk(w.buf); err != nil {
				return nil, Trailer{}, err
			}
			w.buf = nil
		}
		tr = Trailer{Size: w.size, SHA256: hex.EncodeToString(w.hash.Sum(nil))}
		if check != nil {
			if cerr := check(tr); cerr != nil {
				e := errs.From(cerr)
				w.fail(e, true) // the error trailer, in place of the good one
				return nil, Trailer{}, e
			}
		}
		w.mu.Lock()
		if w.err != nil {
			err := w.err
			w.mu.Unlock()
			return nil, Trailer{}, err
		}
		w.trailerSent = true
		w.trailer = tr
		w.reserved++
		seq := w.reserved
		w.mu.Unlock()
		if err := w.publish(&nats.Msg{Subject: w.subject, Reply: w.ctl, Header: nats.Header{
			hdrKind:   {kindTrailer},
			hdrSeq:    {strconv.FormatUint(seq, 10)},
			hdrSize:   {strconv.FormatInt(tr.Size, 10)},
			hdrSHA256: {tr.SHA256},
		}}, seq); err != nil {
			return nil, Trailer{}, err
		}
	}
	w.mu.Lock()
	for !w.done && w.err == nil {
		w.cond.Wait()
	}
	result, tr, err = w.result, w.trailer, w.err
	w.mu.Unlock()
	if err != nil {
		return nil, Trailer{}, err
	}
	return result, tr, nil
}

// Abort ends the stream with an error trailer carrying err (coded with errs.From; nil means
// errs.Cancelled): the receiver's Read returns it. It releases the writer. A no-op after the stream ended.
func (w *Writer) Abort(err error) {
	if err == nil {
		err = errs.New(errs.Cancelled, "stream: the sender cancelled the stream")
	}
	w.fail(errs.From(err), true)
	w.release()
}

// Send streams src to the receiver on subject (Dial, copy, Close) and returns the receiver's result
// and the trailer. If src fails, the trailer carries its error (coded with errs.From) and Send
// returns it.
func Send(ctx context.Context, nc *nats.Conn, subject string, src io.Reader, opts Options) (result []byte, tr Trailer, err error) {
	return SendChecked(ctx, nc, subject, src, opts, nil)
}

// SendChecked is Send whose trailer is first shown to check (see Writer.CloseChecked).
func SendChecked(ctx context.Context, nc *nats.Conn, subject string, src io.Reader, opts Options, check func(Trailer) error) (result []byte, tr Trailer, err error) {
	w, err := Dial(ctx, nc, subject, opts)
	if err != nil {
		return nil, Trailer{}, err
	}
	buf := make([]byte, w.chunkSize)
	for {
		n, rerr := io.ReadFull(src, buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				w.Abort(err) // already failed: this only releases
				return nil, Trailer{}, err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			e := errs.From(rerr)
			w.Abort(e)
			if ferr := w.failed(); ferr != nil && ferr != e { // the receiver failed first: its error wins
				return nil, Trailer{}, ferr
			}
			return nil, Trailer{}, e
		}
	}
	return w.CloseChecked(check)
}

// sendChunk waits for credit and publishes one data message.
func (w *Writer) sendChunk(data []byte) error {
	w.mu.Lock()
	for w.err == nil && w.reserved >= w.credit {
		w.cond.Wait()
	}
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return err
	}
	w.reserved++
	seq := w.reserved
	w.mu.Unlock()

	w.hash.Write(data)
	w.size += int64(len(data))
	return w.publish(&nats.Msg{Subject: w.subject, Reply: w.ctl,
		Header: nats.Header{hdrKind: {kindData}, hdrSeq: {strconv.FormatUint(seq, 10)}}, Data: data}, seq)
}

// publish sends a data or trailer message with the given seq and records it as sent, so a later ping
// (published after this returns, hence after this message on the wire) reports it.
func (w *Writer) publish(m *nats.Msg, seq uint64) error {
	if err := w.nc.PublishMsg(m); err != nil {
		err = errs.Wrap(errs.Unavailable, err, "stream: cannot send to the receiver")
		w.fail(err, false)
		return w.failed()
	}
	w.link.sent()
	w.mu.Lock()
	w.sent = seq
	w.mu.Unlock()
	return nil
}

// failed returns the stream's error, if it failed.
func (w *Writer) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// release ends the subscription and the watcher and waits for the watcher. Not for use in hooks.
func (w *Writer) release() {
	w.shutdown()
	w.link.wait()
}

func (w *Writer) shutdown() {
	w.link.shutdown()
	_ = w.sub.Unsubscribe()
}

// fail records err as the stream's end (unless it already ended), sends the error trailer if notify,
// and shuts the writer down.
func (w *Writer) fail(err error, notify bool) {
	w.mu.Lock()
	if w.err != nil || w.done {
		w.mu.Unlock()
		return
	}
	w.err = err
	w.cond.Broadcast()
	w.mu.Unlock()
	if notify {
		_ = w.nc.PublishMsg(errorMsg(w.subject, w.ctl, kindAbort, err)) // best effort: the receiver may be gone
	}
	w.shutdown()
}

// ping is the sender's keepalive; it reports the last seq sent so the receiver can spot losses.
func (w *Writer) ping() {
	w.mu.Lock()
	if w.err != nil || w.done {
		w.mu.Unlock()
		return
	}
	seq := w.sent
	w.mu.Unlock()
	// The ping's own seq report must not overtake a message being published right now: sent is only
	// raised after that publish returned, so the ping cannot name a seq that is not on the wire.
	if err := w.nc.PublishMsg(&nats.Msg{Subject: w.subject, Reply: w.ctl,
		Header: nats.Header{hdrKind: {kindPing}, hdrSeq: {strconv.FormatUint(seq, 10)}}}); err != nil {
		w.fail(errs.Wrap(errs.Unavailable, err, "stream: cannot reach the receiver"), false)
		return
	}
	w.link.sent()
}

func (w *Writer) idleError() error {
	w.mu.Lock()
	accepted := w.accepted
	w.mu.Unlock()
	if !accepted {
		return errs.New(errs.Timeout, "stream: the receiver on %s did not answer the open within %s", w.subject, w.opts.IdleTimeout)
	}
	return errs.New(errs.Timeout, "stream: heard nothing from the receiver for %s (it is gone, hung or cut off); retry the transfer", w.opts.IdleTimeout)
}

// handle is the control subscription's callback: every message from the receiver passes here, in order.
func (w *Writer) handle(m *nats.Msg) {
	w.link.heard()
	if isNoResponders(m) {
		w.fail(errs.Unavailablef("stream: no receiver listens on %s (it is gone or never listened); retry the transfer", w.subject), false)
		return
	}
	kind := m.Header.Get(hdrKind)
	switch kind {
	case kindCredit, kindPing:
		credit, err := parseUint(m, hdrCredit)
		if err != nil {
			w.fail(err, true)
			return
		}
		w.mu.Lock()
		if !w.accepted && kind == kindCredit {
			w.accepted = true
			w.link.startPings(peerIdle(m))
		}
		if credit > w.credit {
			w.credit = credit
		}
		w.cond.Broadcast()
		w.mu.Unlock()
	case kindDone:
		w.mu.Lock()
		if !w.trailerSent {
			w.mu.Unlock()
			w.fail(errs.New(errs.Corrupt, "stream protocol violation: the receiver finished before the trailer was sent"), true)
			return
		}
		if w.err == nil && !w.done {
			w.done = true
			w.result = m.Data
			w.cond.Broadcast()
		}
		w.mu.Unlock()
		w.shutdown()
	case kindFail:
		w.fail(parseError(m, "receiver"), false)
	default:
		w.fail(errs.New(errs.Corrupt, "stream protocol violation: unexpected %q message from the receiver", kind), true)
	}
}
