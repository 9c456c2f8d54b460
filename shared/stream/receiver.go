package stream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/telemetry"
)

// Receiver is the receiving side of one stream. Read it like an io.Reader, then Finish (or Fail), and
// always Close.
type Receiver struct {
	nc      *nats.Conn
	opts    Options
	subject string
	sub     *nats.Subscription
	link    *link

	// Owned by the subscription callback (one goroutine): the running checks over what arrived.
	next uint64 // next expected seq (data or trailer)
	size int64
	hash hash.Hash

	mu        sync.Mutex
	cond      *sync.Cond
	peer      string      // the sender's control inbox; "" until the open arrived
	openHdr   nats.Header // the open's headers (trace context)
	chunkSize int
	window    uint64
	grantStep uint64
	credit    uint64   // highest data seq granted to the sender
	consumed  uint64   // chunks the reader has fully consumed
	queue     [][]byte // chunks received, not yet taken by Read
	head      []byte   // the chunk Read is taking bytes from; nil if none
	trailer   Trailer
	eof       bool  // the trailer arrived and verified
	err       error // the stream failed (terminal)
	finished  bool  // Finish sent the final done
	// maxBuffered is the most chunks ever held (queue + head); tests check it never passes the window.
	maxBuffered int
}

// Listen starts a receiver on a fresh inbox of nc. Give Subject() to the sender, then Read.
// ctx governs the whole stream: when it ends, the stream fails on both sides.
// On the receiver, Options.ChunkSize is not used (the sender's chunk size applies, bounded by the
// server's max payload); Window and IdleTimeout are.
func Listen(ctx context.Context, nc *nats.Conn, opts Options) (*Receiver, error) {
	if err := checkConnected(nc); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, errs.Wrap(errs.CodeOfContext(ctx), context.Cause(ctx), "stream: not listening")
	}
	opts.ChunkSize = 0 // the sender's applies
	opts, err := opts.withDefaults(nc)
	if err != nil {
		return nil, err
	}
	r := &Receiver{nc: nc, opts: opts, subject: nc.NewInbox(), next: 1, hash: sha256.New()}
	r.cond = sync.NewCond(&r.mu)
	r.link = newLink(ctx, nc, opts.IdleTimeout)
	r.link.heard() // the idle clock starts now: a sender that never opens times out too
	r.sub, err = nc.Subscribe(r.subject, r.handle)
	if err != nil {
		r.link.shutdown()
		return nil, errs.Wrap(errs.Unavailable, err, "stream: cannot subscribe to the receiver's inbox")
	}
	// The credit bounds what is in flight; the pending limits make sure NATS itself never buffers more
	// than that (plus control messages) even for a sender that ignores its credit. Excess is dropped
	// and shows up as a seq gap.
	maxPayload := int(nc.MaxPayload())
	if err := r.sub.SetPendingLimits(opts.Window+controlPendingMsgs, maxInFlightBytes+4*maxPayload); err != nil {
		_ = r.sub.Unsubscribe()
		r.link.shutdown()
		return nil, errs.Wrap(errs.Internal, err, "stream: cannot set pending limits")
	}
	// The subject goes to the sender out of band, maybe over another connection: the server must know
	// the subscription before anyone can learn the subject, or the open would meet "no responders".
	if err := nc.FlushTimeout(opts.IdleTimeout); err != nil {
		_ = r.sub.Unsubscribe()
		r.link.shutdown()
		return nil, errs.Wrap(errs.Unavailable, err, "stream: the NATS server did not confirm the receiver's subscription")
	}
	go r.link.watch("receiver", r.ping, r.fail, r.idleError)
	return r, nil
}

// Subject is the inbox the sender must Dial.
func (r *Receiver) Subject() string { return r.subject }

// SenderContext returns parent carrying the sender's trace context from the open message (parent
// itself until the open has arrived, i.e. before the first Read returns).
func (r *Receiver) SenderContext(parent context.Context) context.Context {
	r.mu.Lock()
	h := r.openHdr
	r.mu.Unlock()
	return telemetry.Extract(parent, h)
}

// Trailer is the verified trailer; valid after Read returned io.EOF.
func (r *Receiver) Trailer() Trailer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.trailer
}

// Read reads the stream. It returns io.EOF only after the trailer arrived and the seqs, size and
// SHA-256 were verified; a sender's error trailer comes back as that coded error, and any failure
// (corruption, timeout, cancellation, lost connection) as a coded error. Data still buffered when the
// stream fails is dropped: nothing of a failed stream is to be trusted.
func (r *Receiver) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.mu.Lock()
	for r.err == nil && r.head == nil && len(r.queue) == 0 && !r.eof {
		r.cond.Wait()
	}
	if r.err != nil {
		err := r.err
		r.mu.Unlock()
		return 0, err
	}
	if r.head == nil {
		if len(r.queue) == 0 { // eof
			r.mu.Unlock()
			return 0, io.EOF
		}
		r.head = r.queue[0]
		r.queue[0] = nil
		r.queue = r.queue[1:]
	}
	head := r.head
	r.mu.Unlock()

	n := copy(p, head) // outside the lock: only Read touches head's bytes

	var grant uint64
	r.mu.Lock()
	r.head = head[n:]
	if len(r.head) == 0 {
		r.head = nil
		r.consumed++
		// Grant as the reader consumes, in steps, so a slow reader slows the sender.
		if limit := r.consumed + r.window; r.err == nil && !r.eof && limit >= r.credit+r.grantStep {
			r.credit = limit
			grant = limit
		}
	}
	peer := r.peer
	r.mu.Unlock()
	if grant > 0 {
		r.publish(&nats.Msg{Subject: peer, Reply: r.subject,
			Header: nats.Header{hdrKind: {kindCredit}, hdrCredit: {strconv.FormatUint(grant, 10)}}})
	}
	return n, nil
}

// Finish sends the final ack with result (e.g. a JSON document) to the sender, whose Writer.Close
// returns it, and releases the receiver. Call it after Read returned io.EOF and the data is committed.
// It returns the stream's error if the stream failed meanwhile.
func (r *Receiver) Finish(result []byte) error {
	if limit := int(r.nc.MaxPayload()) - headerRoom; len(result) > limit {
		err := errs.Internalf("stream: the receiver's result is %d bytes, more than the %d a message can carry", len(result), limit)
		r.Fail(err)
		return err
	}
	r.mu.Lock()
	switch {
	case r.err != nil:
		err := r.err
		r.mu.Unlock()
		r.release()
		return err
	case r.finished:
		r.mu.Unlock()
		return errs.Conflictf("stream: Finish called twice")
	case !r.eof:
		r.mu.Unlock()
		return errs.Conflictf("stream: Finish called before Read returned io.EOF; read the stream to its end first (or call Fail)")
	}
	r.finished = true
	peer := r.peer
	r.mu.Unlock()
	err := r.nc.PublishMsg(&nats.Msg{Subject: peer, Reply: r.subject, Header: nats.Header{hdrKind: {kindDone}}, Data: result})
	r.release()
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "stream: cannot send the final ack to the sender")
	}
	return nil
}

// Fail ends the stream from the receiver's side: the sender's Write or Close returns err (coded with
// errs.From; nil means errs.Cancelled). It releases the receiver. A no-op after Finish or a failure.
func (r *Receiver) Fail(err error) {
	if err == nil {
		err = errs.New(errs.Cancelled, "stream: the receiver cancelled the stream")
	}
	r.fail(errs.From(err), true)
	r.release()
}

// Close releases the receiver; if neither Finish nor Fail happened, it acts as Fail(cancelled).
func (r *Receiver) Close() error {
	r.fail(errs.New(errs.Cancelled, "stream: the receiver closed the stream before finishing it"), true)
	r.release()
	return nil
}

// release ends the subscription and the watcher and waits for the watcher. Not for use in hooks.
func (r *Receiver) release() {
	r.shutdown()
	r.link.wait()
}

// shutdown ends the subscription and tells the watcher to stop, without waiting. Idempotent.
func (r *Receiver) shutdown() {
	r.link.shutdown()
	_ = r.sub.Unsubscribe() // a second call only reports ErrBadSubscription
}

// fail records err as the stream's end (if it has not ended yet), tells the sender if notify, and
// shuts the receiver down.
func (r *Receiver) fail(err error, notify bool) {
	r.mu.Lock()
	if r.err != nil || r.finished {
		r.mu.Unlock()
		return
	}
	r.err = err
	r.queue, r.head = nil, nil // drop buffered data: a failed stream is not to be trusted
	peer := r.peer
	r.cond.Broadcast()
	r.mu.Unlock()
	if notify && peer != "" {
		_ = r.nc.PublishMsg(errorMsg(peer, r.subject, kindFail, err)) // best effort: the sender may be gone
	}
	r.shutdown()
}

// publish sends a control message to the sender and notes the time for the keepalive.
func (r *Receiver) publish(m *nats.Msg) {
	if err := r.nc.PublishMsg(m); err != nil {
		r.fail(errs.Wrap(errs.Unavailable, err, "stream: cannot reach the sender"), false)
		return
	}
	r.link.sent()
}

// ping is the receiver's keepalive; it repeats the current credit so a lost grant heals.
func (r *Receiver) ping() {
	r.mu.Lock()
	if r.peer == "" || r.err != nil || r.finished {
		r.mu.Unlock()
		return
	}
	if !r.eof {
		r.credit = max(r.credit, r.consumed+r.window)
	}
	credit, peer := r.credit, r.peer
	r.mu.Unlock()
	r.publish(&nats.Msg{Subject: peer, Reply: r.subject,
		Header: nats.Header{hdrKind: {kindPing}, hdrCredit: {strconv.FormatUint(credit, 10)}}})
}

func (r *Receiver) idleError() error {
	r.mu.Lock()
	opened := r.peer != ""
	r.mu.Unlock()
	if !opened {
		return errs.New(errs.Timeout, "stream: no sender opened the stream on %s within %s", r.subject, r.opts.IdleTimeout)
	}
	return errs.New(errs.Timeout, "stream: heard nothing from the sender for %s (it is gone, hung or cut off); retry the transfer", r.opts.IdleTimeout)
}

// handle is the subscription callback: every message from the sender passes here, in order.
func (r *Receiver) handle(m *nats.Msg) {
	r.link.heard()
	if isNoResponders(m) {
		r.fail(errs.Unavailablef("stream: the sender is gone (nothing listens on its control inbox any more); retry the transfer"), false)
		return
	}
	kind := m.Header.Get(hdrKind)
	r.mu.Lock()
	if r.err != nil || r.finished {
		r.mu.Unlock()
		return
	}
	peer := r.peer
	r.mu.Unlock()

	if peer == "" {
		if kind == kindAbort { // an abort before any open still says why: keep its error
			r.fail(parseError(m, "sender"), false)
			return
		}
		if kind != kindOpen {
			r.fail(errs.New(errs.Corrupt, "stream protocol violation: a %q message arrived before the open", kind), false)
			return
		}
		r.open(m)
		return
	}
	if m.Reply != peer {
		// Someone else publishes on our inbox: not part of this stream.
		if kind == kindOpen && m.Reply != "" {
			_ = r.nc.PublishMsg(errorMsg(m.Reply, "", kindFail,
				errs.Conflictf("stream: the receiver on %s already has a sender; ask for a new stream", r.subject)))
		}
		return
	}
	var err error
	switch kind {
	case kindData:
		err = r.data(m)
	case kindTrailer:
		err = r.end(m)
	case kindPing:
		err = r.pinged(m)
	case kindAbort:
		r.fail(parseError(m, "sender"), false)
		return
	default:
		err = errs.New(errs.Corrupt, "stream protocol violation: unexpected %q message from the sender", kind)
	}
	if err != nil {
		r.fail(err, true)
	}
}

// open accepts the first open: learn the sender's inbox and chunk size, grant the first credit.
func (r *Receiver) open(m *nats.Msg) {
	if v := m.Header.Get(hdrVersion); v != protocolVersion {
		err := errs.BadRequestf("stream: the sender speaks protocol version %q, this receiver speaks %q", v, protocolVersion)
		if m.Reply != "" {
			_ = r.nc.PublishMsg(errorMsg(m.Reply, r.subject, kindFail, err))
		}
		r.fail(err, false)
		return
	}
	if m.Reply == "" {
		r.fail(errs.New(errs.Corrupt, "stream protocol violation: the open names no control inbox"), false)
		return
	}
	chunk, err := parseUint(m, hdrChunkSize)
	if err == nil && (chunk == 0 || chunk > uint64(r.nc.MaxPayload())) {
		err = errs.BadRequestf("stream: the sender's chunk size %d is outside 1..%d (the server's max payload)", chunk, r.nc.MaxPayload())
	}
	r.mu.Lock()
	r.peer = m.Reply
	r.openHdr = m.Header
	r.mu.Unlock()
	if err != nil {
		r.fail(err, true)
		return
	}
	window := uint64(effectiveWindow(r.opts.Window, int(chunk)))
	r.mu.Lock()
	r.chunkSize = int(chunk)
	r.window = window
	r.grantStep = max(1, window/4)
	r.credit = window
	r.mu.Unlock()
	r.link.startPings(peerIdle(m))
	r.publish(&nats.Msg{Subject: m.Reply, Reply: r.subject, Header: nats.Header{
		hdrKind:   {kindCredit},
		hdrCredit: {strconv.FormatUint(window, 10)},
		hdrIdleMs: {strconv.FormatInt(r.opts.IdleTimeout.Milliseconds(), 10)},
	}})
}

// data checks and queues one chunk.
func (r *Receiver) data(m *nats.Msg) error {
	seq, err := parseUint(m, hdrSeq)
	if err != nil {
		return err
	}
	if seq != r.next {
		return seqError(r.next, seq)
	}
	r.mu.Lock()
	credit, chunkSize, eof := r.credit, r.chunkSize, r.eof
	r.mu.Unlock()
	switch {
	case eof:
		return errs.New(errs.Corrupt, "stream protocol violation: data seq %d after the trailer", seq)
	case seq > credit:
		return errs.New(errs.Corrupt, "stream protocol violation: the sender sent chunk seq %d beyond its credit (granted up to seq %d)", seq, credit)
	case len(m.Data) == 0 || len(m.Data) > chunkSize:
		return errs.New(errs.Corrupt, "stream protocol violation: chunk seq %d has %d bytes, outside 1..%d (the chunk size)", seq, len(m.Data), chunkSize)
	}
	r.next++
	r.size += int64(len(m.Data))
	r.hash.Write(m.Data) // in the callback, so hashing overlaps the reader's copying

	r.mu.Lock()
	if r.err == nil {
		r.queue = append(r.queue, m.Data)
		n := len(r.queue)
		if r.head != nil {
			n++
		}
		r.maxBuffered = max(r.maxBuffered, n)
		r.cond.Broadcast()
	}
	r.mu.Unlock()
	return nil
}

// end verifies the trailer: its seq follows the last chunk, size and SHA-256 match what arrived.
func (r *Receiver) end(m *nats.Msg) error {
	seq, err := parseUint(m, hdrSeq)
	if err != nil {
		return err
	}
	if seq != r.next {
		return seqError(r.next, seq)
	}
	size, err := parseUint(m, hdrSize)
	if err != nil {
		return err
	}
	if int64(size) != r.size {
		return errs.New(errs.Corrupt, "stream size mismatch: the sender says %d bytes, %d arrived", size, r.size)
	}
	want := m.Header.Get(hdrSHA256)
	got := hex.EncodeToString(r.hash.Sum(nil))
	if want != got {
		return errs.New(errs.Corrupt, "stream checksum mismatch: the sender's sha256 is %q, the data that arrived hashes to %s", want, got)
	}
	r.next++
	r.mu.Lock()
	r.trailer = Trailer{Size: r.size, SHA256: got}
	r.eof = true
	r.cond.Broadcast()
	r.mu.Unlock()
	return nil
}

// pinged checks the sender's keepalive: it names the last seq the sender published, so everything up
// to it must have arrived (NATS keeps one publisher's order), else chunks or the trailer were lost.
func (r *Receiver) pinged(m *nats.Msg) error {
	seq, err := parseUint(m, hdrSeq)
	if err != nil {
		return err
	}
	if seq >= r.next {
		return errs.New(errs.Corrupt, "stream lost messages: the sender has sent up to seq %d, only up to seq %d arrived", seq, r.next-1)
	}
	return nil
}

// seqError describes an out-of-order seq.
func seqError(want, got uint64) error {
	what := "a lost or reordered chunk"
	if got < want {
		what = "a duplicated or reordered chunk"
	}
	return errs.New(errs.Corrupt, "stream out of order: expected seq %d, got seq %d (%s)", want, got, what)
}
