// Package stream moves a byte stream of any size between two parties over NATS core (not JetStream):
// chunked, credit-based flow control, sequence numbers, a trailer with size and SHA-256 (or a coded
// error), cancellation from either side and idle timeouts. Memory stays flat: the receiver holds at most
// Window chunks, the sender one or two.
//
// The full wire description is in docs/stream-protocol.md; this is the summary.
//
// # Parties and subjects
//
// The receiver listens on its own unique inbox (Listen, Receiver.Subject) and hands that subject to
// the sender out of band (e.g. in a storage "put" reply). The sender makes its own control inbox.
// Every sender→receiver message goes to the receiver's inbox with the sender's inbox as reply;
// every receiver→sender message goes to the sender's inbox with the receiver's inbox as reply. Because
// each side publishes with a reply subject it subscribes to itself, the server answers a publish to a
// party that is gone with a "503 no responders" status, and the publisher fails fast with
// errs.Unavailable instead of waiting for the idle timeout.
//
// # Messages (header Stream-Kind; other headers in brackets)
//
//	sender → receiver
//	  open     [Stream-Version, Stream-Chunk-Size, Stream-Idle-Ms, traceparent]
//	  data     [Stream-Seq] body = the chunk
//	  ping     [Stream-Seq = last seq published]
//	  trailer  [Stream-Seq, Stream-Size, Stream-Sha256]
//	  abort    body = errs JSON envelope (the error trailer)
//	receiver → sender
//	  credit   [Stream-Credit; the first one also Stream-Idle-Ms and accepts the open]
//	  ping     [Stream-Credit]
//	  done     body = the result of Receiver.Finish
//	  fail     body = errs JSON envelope
//
// # Rules
//
//   - Data seqs run 1, 2, 3, ...; the trailer takes the next seq. Anything else (lost, duplicated,
//     reordered) is errs.Corrupt naming the expected and received seq.
//   - Credit is cumulative: Stream-Credit is the highest data seq the sender may send, so a lost or
//     repeated grant does no harm and every receiver ping repeats the current one. The receiver grants
//     as its reader consumes chunks (not as they arrive), in steps of Window/4. A data message beyond the
//     credit is a protocol violation (errs.Corrupt); the subscription's pending limits are sized to
//     the window so even a rogue sender cannot grow the receiver's memory.
//   - Keepalive: a side that has published nothing for min(both IdleTimeouts)/4 sends a ping, so a stalled
//     application (slow source, slow reader, long commit) is not mistaken for a dead peer. A side that
//     hears nothing for its IdleTimeout fails with errs.Timeout. The sender's ping carries the last seq
//     it sent; a receiver that has not seen that seq fails with errs.Corrupt (lost chunk or trailer).
//   - The stream ends for the sender only with the receiver's final done (result bytes) or fail (coded
//     error): a put is successful only once the receiver has committed. Writer.Close waits for it.
//   - Context cancellation, Abort, Fail and Close tell the other side with a coded error (errs.Cancelled
//     for a cancelled context, errs.Timeout for a passed deadline). Losing the NATS connection
//     (disconnect, server restart) fails the stream with errs.Unavailable on both sides: NATS core may
//     have dropped messages in flight, so the stream is not resumed; retry the transfer.
//
// Only the first open on a receiver's subject is accepted; a second sender is refused with
// errs.Conflict. If the receiver's final done is lost in transit (connection lost right after the
// commit) the sender reports an error although the receiver committed: make the receiving operation
// idempotent (e.g. put by key) and retry.
//
// A Writer and a Receiver are not safe for concurrent Write/Read calls; Abort, Fail and Close may be
// called from another goroutine to cancel a blocked Write or Read.
package stream
