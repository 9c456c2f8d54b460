// Package server exposes a storage backend as the trove.storage.v1 micro service: streamed put and get, stat,
// list, delete, and the copy and verify jobs.
package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"hash"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/services/storage/internal/backend"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/telemetry"
)

// defaultMaxStreams bounds concurrent transfers per replica: each holds a credit window of chunks in memory.
const defaultMaxStreams = 16

// Options tune a Server.
type Options struct {
	Strategy   string         // the backend's strategy name, reported in $SRV INFO and /v1/info
	Stream     stream.Options // chunking, credit window and idle timeout of put/get streams
	MaxStreams int            // concurrent put+get streams; past it requests get errs.Busy
}

// Server serves one backend over NATS. It keeps no state of its own beyond streams in flight.
type Server struct {
	nc      *nats.Conn
	be      backend.Backend
	opts    Options
	jobs    *jobs.Runner
	metrics *telemetry.Metrics
	tracer  trace.Tracer

	slots chan struct{} // one token per stream in flight
	wg    sync.WaitGroup
	ctx   context.Context // parent of stream goroutines; cancelled by Close
	stop  context.CancelCauseFunc
}

// New makes a Server and registers its job kinds on runner (which the caller starts).
func New(nc *nats.Conn, be backend.Backend, runner *jobs.Runner, m *telemetry.Metrics, opts Options) *Server {
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = defaultMaxStreams
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &Server{
		nc: nc, be: be, opts: opts, jobs: runner, metrics: m,
		tracer: otel.Tracer("troveng.dev/services/storage"),
		slots:  make(chan struct{}, opts.MaxStreams),
		ctx:    ctx, stop: cancel,
	}
	runner.Register(storagev1.JobCopy, s.runCopy)
	runner.Register(storagev1.JobVerify, s.runVerify)
	return s
}

// Endpoints lists the micro endpoints of the service.
func (s *Server) Endpoints() []service.Endpoint {
	return []service.Endpoint{
		{Name: storagev1.EndpointPut, Handler: service.JSON(s.put), Mutating: true},
		{Name: storagev1.EndpointGet, Handler: service.JSON(s.get)},
		{Name: storagev1.EndpointStat, Handler: service.JSON(s.Stat)},
		{Name: storagev1.EndpointList, Handler: service.JSON(s.List)},
		{Name: storagev1.EndpointDelete, Handler: service.JSON(s.Delete), Mutating: true},
		{Name: storagev1.EndpointCopy, Handler: service.JSON(s.copy), Mutating: true},
		{Name: storagev1.EndpointVerify, Handler: service.JSON(s.verify)},
		{Name: storagev1.EndpointJobStatus, Handler: service.JSON(s.JobStatus)},
		{Name: storagev1.EndpointJobCancel, Handler: service.JSON(s.JobCancel), Mutating: true},
		{Name: storagev1.EndpointJobList, Handler: service.JSON(s.JobList)},
		{Name: storagev1.EndpointPutDirect, Handler: service.JSON(s.putDirect), Mutating: true},
		{Name: storagev1.EndpointPresignParts, Handler: service.JSON(s.presignParts), Mutating: true},
		{Name: storagev1.EndpointCompleteDirect, Handler: service.JSON(s.completeDirect), Mutating: true},
		{Name: storagev1.EndpointAbortDirect, Handler: service.JSON(s.abortDirect), Mutating: true},
		{Name: storagev1.EndpointGetDirect, Handler: service.JSON(s.getDirect)},
		{Name: storagev1.EndpointStagedBegin, Handler: service.JSON(s.stagedBegin), Mutating: true},
		{Name: storagev1.EndpointStagedStatus, Handler: service.JSON(s.stagedStatus)},
		{Name: storagev1.EndpointStagedAppend, Handler: service.JSON(s.stagedAppend), Mutating: true},
		{Name: storagev1.EndpointStagedComplete, Handler: service.JSON(s.stagedComplete), Mutating: true},
		{Name: storagev1.EndpointStagedAbort, Handler: service.JSON(s.stagedAbort), Mutating: true},
		{Name: storagev1.EndpointStagedPurge, Handler: service.JSON(s.stagedPurge), Mutating: true},
	}
}

// Close cancels streams in flight and waits for their goroutines. Their clients get errs.Unavailable: the
// transfer did not fail on its own merits, and another replica (or this one, restarted) can take it again.
func (s *Server) Close() {
	s.stop(errs.Unavailablef("the storage service is stopping; retry the transfer"))
	s.wg.Wait()
}

// acquire takes a stream slot or fails with Busy at once: a micro handler must answer fast.
func (s *Server) acquire() error {
	select {
	case s.slots <- struct{}{}:
		return nil
	default:
		return errs.New(errs.Busy, "%d transfers are already running on this storage replica; retry shortly", s.opts.MaxStreams)
	}
}

func (s *Server) release() { <-s.slots }

// background runs f in a goroutine that outlives the request, as a span linked to the request's trace.
func (s *Server) background(reqCtx context.Context, name string, f func(ctx context.Context)) {
	// The goroutine is cancelled with the server (s.ctx), not with the request, but its span stays a child of
	// the request's so one trace shows the whole transfer.
	parent := trace.ContextWithSpanContext(s.ctx, trace.SpanContextFromContext(reqCtx))
	ctx, span := s.tracer.Start(parent, name)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer span.End()
		f(ctx)
	}()
}

func toObject(i backend.ObjectInfo) storagev1.Object {
	return storagev1.Object{Key: i.Key, Size: i.Size, SHA256: i.SHA256, Metadata: i.Metadata, Modified: i.Modified, Verified: i.Verified}
}

func (s *Server) put(ctx context.Context, req storagev1.PutRequest) (storagev1.PutReply, error) {
	if err := ids.ValidateKey(req.Key); err != nil {
		return storagev1.PutReply{}, err
	}
	if err := backend.ValidateMetadata(req.Metadata); err != nil {
		return storagev1.PutReply{}, err
	}
	return s.receive(ctx, "put", req.Key, func(ctx context.Context, r io.Reader) (any, int64, error) {
		info, err := s.be.Put(ctx, req.Key, r, req.Metadata)
		return toObject(info), info.Size, err
	})
}

// receive opens an upload stream and writes what arrives with write in the background: the stream's final
// acknowledgement carries write's result as JSON once write returned, or its error. op names the span
// ("storage.<op>.write"), the metrics and the logs; n is the bytes stored.
func (s *Server) receive(ctx context.Context, op, key string, write func(ctx context.Context, r io.Reader) (result any, n int64, err error)) (storagev1.PutReply, error) {
	if err := s.acquire(); err != nil {
		return storagev1.PutReply{}, err
	}
	rcv, err := stream.Listen(s.ctx, s.nc, s.opts.Stream)
	if err != nil {
		s.release()
		return storagev1.PutReply{}, errs.Wrap(errs.Unavailable, err, "cannot open the upload stream")
	}
	s.background(ctx, "storage."+op+".write", func(ctx context.Context) {
		defer s.release()
		defer func() { _ = rcv.Close() }()
		start := time.Now()
		result, n, err := write(ctx, rcv)
		if err != nil {
			slog.Warn(op+" failed", "key", key, "error", err)
			rcv.Fail(err)
			s.metrics.Request(ctx, "storage."+op+".transfer", errs.CodeOf(err), time.Since(start))
			return
		}
		s.metrics.Bytes(ctx, "put", "in", n)
		s.metrics.Request(ctx, "storage."+op+".transfer", "", time.Since(start))
		body, _ := json.Marshal(result)
		if err := rcv.Finish(body); err != nil {
			slog.Warn(op+": final acknowledgement not delivered", "key", key, "error", err)
		}
	})
	return storagev1.PutReply{Stream: rcv.Subject(), ChunkSize: s.opts.Stream.ChunkSize}, nil
}

func (s *Server) get(ctx context.Context, req storagev1.GetRequest) (storagev1.GetReply, error) {
	if err := ids.ValidateKey(req.Key); err != nil {
		return storagev1.GetReply{}, err
	}
	if err := validateInbox(req.Stream); err != nil {
		return storagev1.GetReply{}, err
	}
	if req.Offset < 0 {
		return storagev1.GetReply{}, errs.BadRequestf("offset %d is negative", req.Offset)
	}
	length := req.Length
	if length == 0 {
		length = -1
	}
	if err := s.acquire(); err != nil {
		return storagev1.GetReply{}, err
	}
	rc, info, err := s.be.Get(ctx, req.Key, req.Offset, length)
	if err != nil {
		s.release()
		return storagev1.GetReply{}, err
	}
	n := info.Size - req.Offset
	if length >= 0 && length < n {
		n = length
	}
	whole := req.Offset == 0 && n == info.Size
	s.background(ctx, "storage.get.read", func(ctx context.Context) {
		defer s.release()
		defer func() { _ = rc.Close() }()
		start := time.Now()
		var check func(stream.Trailer) error
		if whole {
			// A whole-object read is checked against the SHA-256 recorded at put: bit rot or tampering in the
			// backend ends the stream with errs.Corrupt instead of handing out wrong bytes as good. The stream
			// hashes every byte for its trailer anyway, so the check reuses that digest.
			check = func(tr stream.Trailer) error {
				return checkDigest(req.Key, tr.SHA256, info.SHA256)
			}
		}
		_, tr, err := stream.SendChecked(ctx, s.nc, req.Stream, &limitedExact{r: rc, n: n}, s.opts.Stream, check)
		if err != nil {
			slog.Warn("get failed", "key", req.Key, "error", err)
			s.metrics.Request(ctx, "storage.get.transfer", errs.CodeOf(err), time.Since(start))
			return
		}
		s.metrics.Bytes(ctx, "get", "out", tr.Size)
		s.metrics.Request(ctx, "storage.get.transfer", "", time.Since(start))
	})
	return storagev1.GetReply{Object: toObject(info), Offset: req.Offset, Length: n}, nil
}

// validateInbox accepts only a reply-inbox-like subject: literal tokens, no wildcards, so a caller cannot make
// the service publish object bytes onto another service's subjects.
func validateInbox(subject string) error {
	if subject == "" {
		return errs.BadRequestf("stream subject is empty: listen with shared/stream and pass its Subject()")
	}
	if len(subject) > 256 {
		return errs.BadRequestf("stream subject is too long")
	}
	const inboxPrefix = "_INBOX."
	if len(subject) <= len(inboxPrefix) || subject[:len(inboxPrefix)] != inboxPrefix {
		return errs.BadRequestf("stream subject must be an _INBOX. subject")
	}
	for i := 0; i < len(subject); i++ {
		c := subject[i]
		if c == '*' || c == '>' || c <= ' ' || c == 0x7f {
			return errs.BadRequestf("stream subject contains %q", rune(c))
		}
	}
	return nil
}

// Stat returns an object's recorded info (also served on admin HTTP).
func (s *Server) Stat(ctx context.Context, req storagev1.KeyRequest) (storagev1.Object, error) {
	if err := ids.ValidateKey(req.Key); err != nil {
		return storagev1.Object{}, err
	}
	info, err := s.be.Stat(ctx, req.Key)
	if err != nil {
		return storagev1.Object{}, err
	}
	return toObject(info), nil
}

// List returns one page of objects (also served on admin HTTP).
func (s *Server) List(ctx context.Context, req storagev1.ListRequest) (storagev1.ListReply, error) {
	if err := ids.ValidatePrefix(req.Prefix); err != nil {
		return storagev1.ListReply{}, err
	}
	if req.StartAfter != "" {
		if err := ids.ValidateKey(req.StartAfter); err != nil {
			return storagev1.ListReply{}, err
		}
	}
	limit := req.Limit
	switch {
	case limit < 0:
		return storagev1.ListReply{}, errs.BadRequestf("limit %d is negative", limit)
	case limit == 0:
		limit = storagev1.DefaultListLimit
	case limit > storagev1.MaxListLimit:
		return storagev1.ListReply{}, errs.BadRequestf("limit %d is over the maximum %d", limit, storagev1.MaxListLimit)
	}
	items, next, err := s.be.List(ctx, req.Prefix, req.StartAfter, limit)
	if err != nil {
		return storagev1.ListReply{}, err
	}
	out := storagev1.ListReply{Objects: make([]storagev1.Object, 0, len(items)), Next: next}
	for _, i := range items {
		out.Objects = append(out.Objects, toObject(i))
	}
	return out, nil
}

// Delete removes an object (also served on admin HTTP, behind the admin token).
func (s *Server) Delete(ctx context.Context, req storagev1.KeyRequest) (storagev1.DeleteReply, error) {
	if err := ids.ValidateKey(req.Key); err != nil {
		return storagev1.DeleteReply{}, err
	}
	if err := s.be.Delete(ctx, req.Key); err != nil {
		return storagev1.DeleteReply{}, err
	}
	return storagev1.DeleteReply{Deleted: req.Key}, nil
}

func validJobID(id string) error {
	if id == "" {
		return nil
	}
	return ids.Validate("job", id)
}

func (s *Server) copy(ctx context.Context, req storagev1.CopyRequest) (jobs.Job, error) {
	if err := ids.ValidateKey(req.Source); err != nil {
		return jobs.Job{}, errs.BadRequestf("source: %s", errs.From(err).Message)
	}
	if err := ids.ValidateKey(req.Destination); err != nil {
		return jobs.Job{}, errs.BadRequestf("destination: %s", errs.From(err).Message)
	}
	if req.Source == req.Destination {
		return jobs.Job{}, errs.BadRequestf("source and destination are the same key %q", req.Source)
	}
	if err := validJobID(req.JobID); err != nil {
		return jobs.Job{}, err
	}
	if _, err := s.be.Stat(ctx, req.Source); err != nil {
		return jobs.Job{}, err
	}
	return s.jobs.Submit(ctx, storagev1.JobCopy, req, req.JobID)
}

func (s *Server) verify(ctx context.Context, req storagev1.VerifyRequest) (jobs.Job, error) {
	if err := ids.ValidateKey(req.Key); err != nil {
		return jobs.Job{}, err
	}
	if err := validJobID(req.JobID); err != nil {
		return jobs.Job{}, err
	}
	if _, err := s.be.Stat(ctx, req.Key); err != nil {
		return jobs.Job{}, err
	}
	return s.jobs.Submit(ctx, storagev1.JobVerify, req, req.JobID)
}

// JobStatus returns a job's record.
func (s *Server) JobStatus(ctx context.Context, req storagev1.JobRequest) (jobs.Job, error) {
	if err := ids.Validate("job", req.ID); err != nil {
		return jobs.Job{}, err
	}
	return s.jobs.Get(ctx, req.ID)
}

// JobCancel asks a job to stop.
func (s *Server) JobCancel(ctx context.Context, req storagev1.JobRequest) (jobs.Job, error) {
	if err := ids.Validate("job", req.ID); err != nil {
		return jobs.Job{}, err
	}
	return s.jobs.Cancel(ctx, req.ID)
}

// JobList lists the service's jobs.
func (s *Server) JobList(ctx context.Context, _ struct{}) ([]jobs.Job, error) {
	return s.jobs.List(ctx, nil)
}

// runVerify reads the whole object and checks it against its recorded size and SHA-256.
func (s *Server) runVerify(ctx context.Context, job jobs.Job, report func(jobs.Progress)) (any, error) {
	var req storagev1.VerifyRequest
	if err := json.Unmarshal(job.Params, &req); err != nil {
		return nil, errs.Wrap(errs.BadRequest, err, "verify job parameters")
	}
	rc, info, err := s.be.Get(ctx, req.Key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rc.Close() }()
	h := sha256.New()
	n, err := io.Copy(h, &progressReader{r: rc, total: info.Size, stage: "verify", report: report})
	if err != nil {
		return nil, errs.Wrap(errs.CodeOf(err), err, "reading %q", req.Key)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	res := storagev1.VerifyResult{Key: req.Key, Size: n, SHA256: sum, OK: n == info.Size && sum == info.SHA256}
	s.metrics.Bytes(ctx, "verify", "in", n)
	if !res.OK {
		return nil, errs.New(errs.Corrupt, "object %q fails verification: recorded %d bytes sha256 %s, read %d bytes sha256 %s",
			req.Key, info.Size, info.SHA256, n, sum)
	}
	return res, nil
}

// runCopy copies an object through this service, verifying the source while it reads.
func (s *Server) runCopy(ctx context.Context, job jobs.Job, report func(jobs.Progress)) (any, error) {
	var req storagev1.CopyRequest
	if err := json.Unmarshal(job.Params, &req); err != nil {
		return nil, errs.Wrap(errs.BadRequest, err, "copy job parameters")
	}
	rc, info, err := s.be.Get(ctx, req.Source, 0, -1)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rc.Close() }()
	src := newVerifyingReader(&progressReader{r: rc, total: info.Size, stage: "copy", report: report}, info.SHA256, req.Source)
	out, err := s.be.Put(ctx, req.Destination, src, info.Metadata)
	if err != nil {
		return nil, err
	}
	s.metrics.Bytes(ctx, "copy", "in", out.Size)
	return toObject(out), nil
}

// verifyingReader hashes what passes through and, at EOF, fails with errs.Corrupt if the digest differs from
// the one recorded at put.
type verifyingReader struct {
	r    io.Reader
	h    hash.Hash
	want string
	key  string
}

func newVerifyingReader(r io.Reader, want, key string) *verifyingReader {
	return &verifyingReader{r: r, h: sha256.New(), want: want, key: key}
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	if err == io.EOF {
		if cerr := checkDigest(v.key, hex.EncodeToString(v.h.Sum(nil)), v.want); cerr != nil {
			return n, cerr
		}
	}
	return n, err
}

// checkDigest compares the SHA-256 of bytes read from the backend with the one recorded at put.
func checkDigest(key, got, recorded string) error {
	if got != recorded {
		return errs.New(errs.Corrupt, "object %q is corrupt in storage: sha256 %s, recorded %s", key, got, recorded)
	}
	return nil
}

// limitedExact reads exactly n bytes: fewer is an error (the backend lost data), not a short success.
type limitedExact struct {
	r io.Reader
	n int64
}

func (l *limitedExact) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if err == io.EOF && l.n > 0 {
		return n, errs.New(errs.Corrupt, "object ended %d bytes early", l.n)
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// progressReader reports bytes read to a job.
type progressReader struct {
	r      io.Reader
	done   int64
	total  int64
	stage  string
	report func(jobs.Progress)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	p.report(jobs.Progress{Done: p.done, Total: p.total, Unit: "bytes", Stage: p.stage})
	return n, err
}
