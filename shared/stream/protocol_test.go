package stream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/errs"
)

// Protocol faults. A real Writer cannot skip, repeat or reorder seqs, lie in its trailer or ignore its
// credit, so these cases use rawSender (helpers_test.go), a hand-written sender over the same real
// NATS server. Each must end as errs.Corrupt on the receiver (and be reported to the sender), never as
// success.

func shaOf(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestProtocolFaults(t *testing.T) {
	a, b, c := []byte("aaaa"), []byte("bbbb"), []byte("cc")
	cases := []struct {
		name   string
		window int
		send   func(s *rawSender)
		want   string // in the receiver's error
	}{
		{"lost chunk", 8, func(s *rawSender) {
			s.data(1, a)
			s.data(3, c)
			s.trailer(4, 6, shaOf(a, c))
		}, "expected seq 2, got seq 3 (a lost or reordered chunk)"},
		{"duplicated chunk", 8, func(s *rawSender) {
			s.data(1, a)
			s.data(2, b)
			s.data(2, b)
			s.trailer(3, 8, shaOf(a, b))
		}, "expected seq 3, got seq 2 (a duplicated or reordered chunk)"},
		{"reordered chunks", 8, func(s *rawSender) {
			s.data(1, a)
			s.data(3, c)
			s.data(2, b)
			s.trailer(4, 10, shaOf(a, b, c))
		}, "expected seq 2, got seq 3"},
		{"first chunk not seq 1", 8, func(s *rawSender) {
			s.data(0, a)
		}, "expected seq 1, got seq 0"},
		{"lost last chunk", 8, func(s *rawSender) {
			s.data(1, a)
			s.trailer(3, 8, shaOf(a, b))
		}, "expected seq 2, got seq 3"},
		{"wrong trailer sha256", 8, func(s *rawSender) {
			s.data(1, a)
			s.data(2, b)
			s.trailer(3, 8, shaOf(a, a))
		}, "checksum mismatch"},
		{"wrong trailer size", 8, func(s *rawSender) {
			s.data(1, a)
			s.data(2, b)
			s.trailer(3, 9, shaOf(a, b))
		}, "size mismatch: the sender says 9 bytes, 8 arrived"},
		{"chunk beyond credit", 4, func(s *rawSender) {
			for seq := uint64(1); seq <= s.credit+1; seq++ {
				s.data(seq, a)
			}
		}, "chunk seq 5 beyond its credit (granted up to seq 4)"},
		{"chunk over the chunk size", 8, func(s *rawSender) {
			s.data(1, bytes.Repeat(a, 100))
		}, "has 400 bytes, outside 1..16"},
		{"empty chunk", 8, func(s *rawSender) {
			s.data(1, nil)
		}, "has 0 bytes"},
		{"lost trailer (ping names an unseen seq)", 8, func(s *rawSender) {
			s.data(1, a)
			s.ping(2)
		}, "the sender has sent up to seq 2, only up to seq 1 arrived"},
		{"data after trailer", 8, func(s *rawSender) {
			s.data(1, a)
			s.trailer(2, 4, shaOf(a))
			s.data(3, b)
		}, "data seq 3 after the trailer"},
		{"unknown kind", 8, func(s *rawSender) {
			s.pub(&nats.Msg{Header: nats.Header{hdrKind: {"bogus"}}})
		}, `unexpected "bogus" message`},
		{"bad seq header", 8, func(s *rawSender) {
			s.pub(&nats.Msg{Header: nats.Header{hdrKind: {kindData}, hdrSeq: {"one"}}, Data: a})
		}, "bad Stream-Seq header"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			r, err := Listen(context.Background(), e.recv, Options{Window: c.window})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			raw := dialRaw(t, e.send, r.Subject(), 16)
			if raw.credit != uint64(c.window) {
				t.Fatalf("initial credit %d, want the window %d", raw.credit, c.window)
			}
			c.send(raw)
			// The receiver's own failure message to the sender proves the fault was processed before
			// the first Read (important for "beyond credit": reading would grant more).
			wantCode(t, "sender told", raw.failure(5*time.Second), errs.Corrupt, c.want)
			buf := make([]byte, 64)
			var readErr error
			for readErr == nil {
				_, readErr = r.Read(buf)
			}
			wantCode(t, "Read", readErr, errs.Corrupt, c.want)
			r.mu.Lock()
			maxBuf := r.maxBuffered
			r.mu.Unlock()
			if maxBuf > c.window {
				t.Fatalf("receiver buffered %d chunks, window %d", maxBuf, c.window)
			}
		})
	}
}

// TestRawSenderHonest checks the raw sender itself: played by the rules, it gets a verified stream.
// Without this, the fault cases could pass because the raw sender was broken.
func TestRawSenderHonest(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{Window: 8})
	if err != nil {
		t.Fatal(err)
	}
	got := receive(r, receiveOpts{result: []byte("done")})
	raw := dialRaw(t, e.send, r.Subject(), 16)
	a, b := []byte("aaaa"), []byte("bbbbbbbbbbbbbbbb")
	raw.data(1, a)
	raw.data(2, b)
	raw.ping(2)
	raw.trailer(3, 20, shaOf(a, b))
	rc := wait(t, got, 5*time.Second, "receiver")
	if rc.err != nil || rc.n != 20 || rc.sha != shaOf(a, b) {
		t.Fatalf("honest raw stream: %+v", rc)
	}
	for {
		m := raw.next(5 * time.Second)
		if m.Header.Get(hdrKind) == kindDone {
			if string(m.Data) != "done" {
				t.Fatalf("done carries %q", m.Data)
			}
			break
		}
	}
}

func TestDataBeforeOpen(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := e.send.PublishMsg(&nats.Msg{Subject: r.Subject(), Header: nats.Header{hdrKind: {kindData}, hdrSeq: {"1"}}, Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	_, err = r.Read(make([]byte, 8))
	wantCode(t, "Read", err, errs.Corrupt, "before the open")
}

func TestWrongVersionRefused(t *testing.T) {
	e := newEnv(t)
	r, err := Listen(context.Background(), e.recv, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	inbox := e.send.NewInbox()
	sub, err := e.send.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := e.send.PublishMsg(&nats.Msg{Subject: r.Subject(), Reply: inbox,
		Header: nats.Header{hdrKind: {kindOpen}, hdrVersion: {"99"}, hdrChunkSize: {"16"}}}); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, "open reply", parseError(m, "receiver"), errs.BadRequest, "protocol version")
	_, err = r.Read(make([]byte, 8))
	wantCode(t, "Read", err, errs.BadRequest, "protocol version")
}
