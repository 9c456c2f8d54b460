package storageclient

import (
	"context"
	"io"
	"time"

	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
)

// DefaultResumeWithin is how long GetResumable keeps trying after a transfer failed without progress.
const DefaultResumeWithin = 2 * time.Minute

// Resume tunes GetResumable.
type Resume struct {
	// Direct fetches with GetDirect (presigned ranges) where the strategy allows, as Get otherwise.
	Direct bool
	// Within is how long to keep trying after a failure before giving up (0: DefaultResumeWithin). Any
	// byte that arrives starts the window again.
	Within time.Duration
	// OnResume, if not nil, is told before each resumed attempt where it starts and what ended the last.
	OnResume func(offset int64, cause error)
}

// GetResumable streams the whole object key into w, like Get, and survives the storage service
// restarting or the connection to it failing mid-transfer: it gets the rest of the object from the first
// byte w has not taken, for as long as the object stays the same one (size, SHA-256 and modification time
// as recorded at put; a replaced object is errs.Conflict). It returns the object and how many times it
// resumed.
//
// A resumed transfer is a ranged get, which the storage service cannot check against the object's
// recorded SHA-256 (only a whole-object get is checked): use it for content that verifies itself, such as
// framed artifacts (every frame authenticated, the index hashed), and check the object otherwise.
//
// Only a transfer that started and then ended unavailable or timeout is resumed; a first attempt that
// fails, an error from w, ctx ending, or any other code (not found, corrupt, ...) is returned at once.
func (c *Client) GetResumable(ctx context.Context, key string, w io.Writer, opt Resume) (storagev1.Object, int, error) {
	within := opt.Within
	if within <= 0 {
		within = DefaultResumeWithin
	}
	cw := &countingWriter{w: w}
	var (
		first     *storagev1.Object
		resumes   int
		failedAt  time.Time // the first failure since the last progress
		lastCount int64
		backoff   = 100 * time.Millisecond
	)
	for {
		offset := cw.n
		var rep storagev1.GetReply
		var err error
		if opt.Direct {
			rep, err = c.GetDirect(ctx, key, offset, 0, cw)
		} else {
			rep, err = c.Get(ctx, key, offset, 0, cw, nil)
		}
		if rep.Object.Key != "" {
			if first == nil {
				obj := rep.Object
				first = &obj
			} else if !sameObject(*first, rep.Object) {
				return *first, resumes, errs.New(errs.Conflict,
					"object %q changed during the transfer (was %d bytes, sha256 %s; now %d bytes, sha256 %s); start over",
					key, first.Size, first.SHA256, rep.Object.Size, rep.Object.SHA256)
			}
		}
		if err == nil {
			return *first, resumes, nil
		}
		switch {
		case first == nil:
			// It never started (the service is down, the object is missing, ...): nothing to resume, and
			// the caller hears it at once rather than after the resume window.
			return storagev1.Object{}, resumes, err
		case cw.err != nil: // the consumer failed: not the transfer's fault, nothing to resume
			return *first, resumes, err
		case ctx.Err() != nil:
			return *first, resumes, err
		case !errs.Is(err, errs.Unavailable) && !errs.Is(err, errs.Timeout):
			return *first, resumes, err
		case cw.n == first.Size:
			// Every byte arrived; only the transfer's end was lost. The content verifies itself (see above).
			return *first, resumes, nil
		}
		now := time.Now()
		if cw.n > lastCount || failedAt.IsZero() {
			failedAt, lastCount, backoff = now, cw.n, 100*time.Millisecond
		}
		if now.Sub(failedAt) >= within {
			return *first, resumes, errs.Wrap(errs.Unavailable, err,
				"get %q: gave up resuming at byte %d after %s without progress", key, cw.n, within)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return *first, resumes, errs.Wrap(errs.CodeOf(ctx.Err()), context.Cause(ctx), "get %q: resuming at byte %d", key, cw.n)
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
		resumes++
		if opt.OnResume != nil {
			opt.OnResume(cw.n, err)
		}
	}
}

func sameObject(a, b storagev1.Object) bool {
	return a.Size == b.Size && a.SHA256 == b.SHA256 && a.Modified.Equal(b.Modified)
}

// countingWriter counts the bytes its writer took and keeps the writer's own error apart from the
// transfer's.
type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil {
		c.err = err
	}
	return n, err
}
