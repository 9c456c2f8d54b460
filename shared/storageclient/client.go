// Package storageclient is the Go client of the storage service (trove.storage.v1): what trovectl and the other
// services use to put, get and manage artifacts.
package storageclient

import (
	"context"
	"encoding/json"
	"io"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/stream"
)

// Client talks to whichever storage replica answers.
type Client struct {
	nc     *nats.Conn
	stream stream.Options
	direct DirectOptions // always with defaults filled (direct.go)
}

// New makes a client on nc. opts tune the streams it opens (zero values take the protocol's defaults).
func New(nc *nats.Conn, opts stream.Options) *Client {
	return &Client{nc: nc, stream: opts, direct: DirectOptions{}.withDefaults()}
}

// Put uploads r's bytes under key. It returns once the service has durably stored and recorded the object.
func (c *Client) Put(ctx context.Context, key string, r io.Reader, meta map[string]string) (storagev1.Object, error) {
	if err := ids.ValidateKey(key); err != nil {
		return storagev1.Object{}, err
	}
	var rep storagev1.PutReply
	if err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointPut), storagev1.PutRequest{Key: key, Metadata: meta}, &rep); err != nil {
		return storagev1.Object{}, err
	}
	opts := c.stream
	if rep.ChunkSize > 0 {
		opts.ChunkSize = rep.ChunkSize
	}
	result, _, err := stream.Send(ctx, c.nc, rep.Stream, r, opts)
	if err != nil {
		return storagev1.Object{}, err
	}
	var obj storagev1.Object
	if err := json.Unmarshal(result, &obj); err != nil {
		return storagev1.Object{}, errs.Wrap(errs.Internal, err, "storage service acknowledged the put with an unreadable result")
	}
	return obj, nil
}

// Get streams the object's bytes (or the range [offset, offset+length), length <= 0 meaning to the end) into w.
// onStart, if not nil, is called with the reply (object info and the length that will flow) before bytes arrive.
func (c *Client) Get(ctx context.Context, key string, offset, length int64, w io.Writer, onStart func(storagev1.GetReply)) (storagev1.GetReply, error) {
	if err := ids.ValidateKey(key); err != nil {
		return storagev1.GetReply{}, err
	}
	rcv, err := stream.Listen(ctx, c.nc, c.stream)
	if err != nil {
		return storagev1.GetReply{}, err
	}
	defer func() { _ = rcv.Close() }()
	var rep storagev1.GetReply
	req := storagev1.GetRequest{Key: key, Offset: offset, Length: length, Stream: rcv.Subject()}
	if err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointGet), req, &rep); err != nil {
		return storagev1.GetReply{}, err
	}
	if onStart != nil {
		onStart(rep)
	}
	n, err := io.Copy(w, rcv)
	if err != nil {
		rcv.Fail(err)
		return rep, err
	}
	if n != rep.Length {
		err := errs.New(errs.Corrupt, "got %d bytes of %q, expected %d", n, key, rep.Length)
		rcv.Fail(err)
		return rep, err
	}
	return rep, rcv.Finish(nil)
}

// Stat returns an object's recorded info.
func (c *Client) Stat(ctx context.Context, key string) (storagev1.Object, error) {
	var obj storagev1.Object
	err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointStat), storagev1.KeyRequest{Key: key}, &obj)
	return obj, err
}

// List returns one page of objects.
func (c *Client) List(ctx context.Context, req storagev1.ListRequest) (storagev1.ListReply, error) {
	var rep storagev1.ListReply
	err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointList), req, &rep)
	return rep, err
}

// ListAll walks every page under prefix, calling f for each object.
func (c *Client) ListAll(ctx context.Context, prefix string, f func(storagev1.Object) error) error {
	req := storagev1.ListRequest{Prefix: prefix, Limit: storagev1.MaxListLimit}
	for {
		rep, err := c.List(ctx, req)
		if err != nil {
			return err
		}
		for _, o := range rep.Objects {
			if err := f(o); err != nil {
				return err
			}
		}
		if rep.Next == "" {
			return nil
		}
		req.StartAfter = rep.Next
	}
}

// Delete removes an object.
func (c *Client) Delete(ctx context.Context, key string) error {
	return rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointDelete), storagev1.KeyRequest{Key: key}, nil)
}

// Copy starts a copy job.
func (c *Client) Copy(ctx context.Context, req storagev1.CopyRequest) (jobs.Job, error) {
	var j jobs.Job
	err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointCopy), req, &j)
	return j, err
}

// Verify starts a verify job.
func (c *Client) Verify(ctx context.Context, req storagev1.VerifyRequest) (jobs.Job, error) {
	var j jobs.Job
	err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointVerify), req, &j)
	return j, err
}

// Job returns a job's current record.
func (c *Client) Job(ctx context.Context, id string) (jobs.Job, error) {
	var j jobs.Job
	err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointJobStatus), storagev1.JobRequest{ID: id}, &j)
	return j, err
}

// CancelJob asks for a job to be cancelled.
func (c *Client) CancelJob(ctx context.Context, id string) (jobs.Job, error) {
	var j jobs.Job
	err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointJobCancel), storagev1.JobRequest{ID: id}, &j)
	return j, err
}

// Jobs lists the storage service's jobs.
func (c *Client) Jobs(ctx context.Context) ([]jobs.Job, error) {
	var js []jobs.Job
	err := rpc.Call(ctx, c.nc, storagev1.Subject(storagev1.EndpointJobList), struct{}{}, &js)
	return js, err
}

// VerifyNow runs a verify job for key on the storage service and waits for it: the service re-reads every
// stored byte and checks it against the size and SHA-256 it recorded. wantSHA256, if set, must also be what it
// recorded (what the writer was told when the object was stored). Any mismatch is errs.Corrupt.
func (c *Client) VerifyNow(ctx context.Context, key, wantSHA256 string) (storagev1.VerifyResult, error) {
	job, err := c.Verify(ctx, storagev1.VerifyRequest{Key: key})
	if err != nil {
		return storagev1.VerifyResult{}, err
	}
	for delay := 50 * time.Millisecond; !job.State.Final(); delay = min(delay*2, time.Second) {
		select {
		case <-ctx.Done():
			return storagev1.VerifyResult{}, errs.Wrap(errs.CodeOf(ctx.Err()), ctx.Err(), "verify %s", key)
		case <-time.After(delay):
		}
		if job, err = c.Job(ctx, job.ID); err != nil {
			return storagev1.VerifyResult{}, err
		}
	}
	if job.State != jobs.StateSucceeded {
		if job.Error != nil {
			return storagev1.VerifyResult{}, job.Error
		}
		return storagev1.VerifyResult{}, errs.Internalf("verify of %s ended %s", key, job.State)
	}
	var res storagev1.VerifyResult
	if err := json.Unmarshal(job.Result, &res); err != nil {
		return res, errs.Wrap(errs.Internal, err, "verify of %s returned an unreadable result", key)
	}
	if !res.OK {
		return res, errs.New(errs.Corrupt, "stored object %s does not match its recorded checksum", key)
	}
	if wantSHA256 != "" && res.SHA256 != wantSHA256 {
		return res, errs.New(errs.Corrupt, "stored object %s has SHA-256 %s, but %s was recorded when it was written", key, res.SHA256, wantSHA256)
	}
	return res, nil
}

// CallerPublish lists what a client of the storage service publishes to, beyond its inbox (stream data
// and control go to inbox subjects): the service's requests.
func CallerPublish() []string { return []string{storagev1.Group + ".>"} }
