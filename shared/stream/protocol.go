package stream

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/errs"
)

// Defaults for Options.
const (
	DefaultChunkSize   = 256 << 10
	DefaultWindow      = 32
	DefaultIdleTimeout = 30 * time.Second
)

const (
	// protocolVersion is sent in the open; a receiver refuses versions it does not speak.
	protocolVersion = "1"
	// headerRoom is kept free under the server's max payload for the headers of a data message.
	headerRoom = 1024
	// maxWindow caps the credit window (in chunks).
	maxWindow = 4096
	// maxInFlightBytes caps window × chunk size: the server disconnects a client whose outbound
	// queue passes max_pending (64 MiB by default), so the window must stay well under it.
	maxInFlightBytes = 32 << 20
	// controlPendingMsgs bounds the sender's control subscription (credits, pings, done, fail).
	controlPendingMsgs = 1024
)

// Header names and message kinds (see the package comment and docs/stream-protocol.md).
const (
	hdrKind      = "Stream-Kind"
	hdrVersion   = "Stream-Version"
	hdrChunkSize = "Stream-Chunk-Size"
	hdrIdleMs    = "Stream-Idle-Ms"
	hdrSeq       = "Stream-Seq"
	hdrCredit    = "Stream-Credit"
	hdrSize      = "Stream-Size"
	hdrSHA256    = "Stream-Sha256"

	// sender → receiver
	kindOpen    = "open"
	kindData    = "data"
	kindPing    = "ping"
	kindTrailer = "trailer"
	kindAbort   = "abort"
	// receiver → sender (and kindPing)
	kindCredit = "credit"
	kindDone   = "done"
	kindFail   = "fail"
)

// Options tune a stream. The zero value gives the defaults.
type Options struct {
	// ChunkSize is the number of bytes per data message (sender only; the receiver takes the sender's).
	// Default 256 KiB; it must stay under the server's max payload minus 1 KiB for headers.
	ChunkSize int
	// Window is the credit, in chunks, the receiver grants ahead (receiver only; the sender obeys the
	// credit it is given). Default 32; capped so that Window × chunk size stays within 32 MiB.
	Window int
	// IdleTimeout: a side that hears nothing from the other for this long fails with errs.Timeout.
	// Both sides ping at a quarter of the smaller of their two timeouts. Default 30s.
	IdleTimeout time.Duration
}

// Trailer is what the sender declares at the end of a successful stream.
type Trailer struct {
	Size   int64
	SHA256 string // lower-case hex
}

// withDefaults fills the zero fields and checks the rest against the connection's limits.
func (o Options) withDefaults(nc *nats.Conn) (Options, error) {
	maxChunk := int(nc.MaxPayload()) - headerRoom
	if o.ChunkSize < 0 || o.Window < 0 || o.IdleTimeout < 0 {
		return o, errs.BadRequestf("stream: options must not be negative (chunk size %d, window %d, idle timeout %s)",
			o.ChunkSize, o.Window, o.IdleTimeout)
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = min(DefaultChunkSize, maxChunk)
	}
	if o.ChunkSize > maxChunk || o.ChunkSize < 1 {
		return o, errs.BadRequestf("stream: chunk size %d does not fit the NATS server's max payload %d (keep it under %d)",
			o.ChunkSize, nc.MaxPayload(), maxChunk)
	}
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	o.Window = min(o.Window, maxWindow)
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	return o, nil
}

// effectiveWindow is the credit window for chunks of chunkSize bytes (see maxInFlightBytes).
func effectiveWindow(window, chunkSize int) int {
	return max(1, min(window, maxInFlightBytes/chunkSize))
}

// checkConnected refuses to start a stream on a connection that cannot carry it right now.
func checkConnected(nc *nats.Conn) error {
	if nc == nil {
		return errs.BadRequestf("stream: no NATS connection")
	}
	if !nc.IsConnected() {
		return errs.Unavailablef("stream: the NATS connection is not connected (status %s); retry when it is", nc.Status())
	}
	return nil
}

// isNoResponders reports the server's "503 no responders" status: a publish of ours (with our inbox as
// reply) found no subscriber, i.e. the other party is gone.
func isNoResponders(m *nats.Msg) bool {
	return len(m.Data) == 0 && m.Header.Get("Status") == "503"
}

// parseUint reads a numeric header; a missing or malformed value is a protocol error.
func parseUint(m *nats.Msg, key string) (uint64, error) {
	v := m.Header.Get(key)
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, errs.New(errs.Corrupt, "stream protocol violation: %s message with a bad %s header %q", m.Header.Get(hdrKind), key, v)
	}
	return n, nil
}

// peerIdle reads the other side's idle timeout from an open or first credit (0 if absent or bad).
func peerIdle(m *nats.Msg) time.Duration {
	ms, err := strconv.ParseInt(m.Header.Get(hdrIdleMs), 10, 64)
	if err != nil || ms <= 0 {
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}

// parseError reads the coded error in the body of an abort or fail message.
func parseError(m *nats.Msg, from string) error {
	if e := errs.Parse("", "", m.Data); e != nil {
		return e
	}
	return errs.New(errs.Corrupt, "stream protocol violation: the %s sent a %s message without a readable error", from, m.Header.Get(hdrKind))
}

// errorMsg builds a message carrying a coded error (abort, fail).
func errorMsg(subject, reply, kind string, err error) *nats.Msg {
	return &nats.Msg{Subject: subject, Reply: reply, Header: nats.Header{hdrKind: {kind}}, Data: errs.Body(err)}
}

// link is the liveness half of a side: it tracks when this side last heard from and published to the
// other, pings when this side has been quiet, and fails the stream when the other side has been silent
// for the idle timeout, when ctx ends, or when the NATS connection is lost. One goroutine per side.
type link struct {
	nc        *nats.Conn
	ctx       context.Context
	idle      time.Duration
	base      time.Time
	lastHeard atomic.Int64 // ns since base
	lastSent  atomic.Int64 // ns since base
	pingEvery atomic.Int64 // ns; 0 while there is no peer to ping
	status    chan nats.Status
	stop      chan struct{}
	stopped   chan struct{}
	once      sync.Once
}

func newLink(ctx context.Context, nc *nats.Conn, idle time.Duration) *link {
	l := &link{
		nc:      nc,
		ctx:     ctx,
		idle:    idle,
		base:    time.Now(),
		status:  nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	return l
}

func (l *link) now() int64 { return int64(time.Since(l.base)) }
func (l *link) heard()     { l.lastHeard.Store(l.now()) }
func (l *link) sent()      { l.lastSent.Store(l.now()) }

// startPings begins keepalives once the other side's idle timeout is known (0 if it did not say).
func (l *link) startPings(peerIdle time.Duration) {
	every := l.idle
	if peerIdle > 0 {
		every = min(every, peerIdle)
	}
	l.pingEvery.Store(int64(max(every/4, time.Millisecond)))
}

// shutdown stops the watcher (without waiting for it) and the status listener. Idempotent.
func (l *link) shutdown() {
	l.once.Do(func() {
		close(l.stop)
		l.nc.RemoveStatusListener(l.status)
	})
}

// wait blocks until the watcher goroutine has returned (after shutdown). Never call it from a hook.
func (l *link) wait() { <-l.stopped }

// watch is the watcher goroutine; side names this side ("sender" or "receiver") in messages.
func (l *link) watch(side string, ping func(), fail func(err error, notify bool), idleErr func() error) {
	defer close(l.stopped)
	t := time.NewTimer(l.idle)
	defer t.Stop()
	for {
		now := l.now()
		deadline := l.lastHeard.Load() + int64(l.idle)
		if now >= deadline {
			fail(idleErr(), true)
			return
		}
		next := deadline
		if every := l.pingEvery.Load(); every > 0 {
			due := l.lastSent.Load() + every
			if now >= due {
				ping()
				due = l.now() + every
			}
			next = min(next, due)
		}
		t.Reset(time.Duration(next - now))
		select {
		case <-l.stop:
			return
		case <-l.ctx.Done():
			fail(errs.Wrap(errs.CodeOfContext(l.ctx), context.Cause(l.ctx), "stream: the %s's context ended", side), true)
			return
		case st, ok := <-l.status:
			if !ok { // listener removed by shutdown
				return
			}
			fail(errs.Unavailablef("stream: the %s's NATS connection was lost mid-stream (%s); messages may have been dropped, retry the transfer", side, st), true)
			return
		case <-t.C:
		}
	}
}
