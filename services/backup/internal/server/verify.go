package server

import (
	"context"
	"io"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/frames"
	"troveng.dev/shared/jobs"
)

// runVerify checks a backup (and with Chain, every backup it depends on) without restoring and without a
// key: the chain resolves, every stored object matches its recorded checksum, and every frame's SHA-256 and
// the frame index match what the manifest recorded when the backup was made.
func (s *Server) runVerify(ctx context.Context, job jobs.Job, report func(jobs.Progress)) (any, error) {
	var req backupv1.VerifyRequest
	if err := decodeParams(job, &req); err != nil {
		return nil, err
	}
	target, err := s.cat.Load(ctx, req.ID)
	if err != nil {
		return nil, err
	}
	chain := []*catalog.Manifest{target}
	if req.Chain {
		all, err := s.cat.List(ctx, catalog.Filter{Instance: target.Instance}, nil)
		if err != nil {
			return nil, err
		}
		if chain, err = catalog.NewSet(all).Chain(target.ID); err != nil {
			return nil, err
		}
	} else if target.State != catalog.StateCompleted {
		return nil, errs.Conflictf("backup %s is %s; only COMPLETED backups can be verified", target.ID, target.State)
	}
	var res backupv1.VerifyResult
	for _, m := range chain {
		for _, a := range m.Artifacts {
			sum, err := s.verifyArtifact(ctx, a, func(n int64) {
				report(jobs.Progress{Done: res.Bytes + n, Unit: "bytes", Stage: "verify " + m.ID + "/" + a.Name})
			})
			if err != nil {
				return nil, errs.Wrap(errs.CodeOf(err), err, "backup %s, artifact %s", m.ID, a.Name)
			}
			res.Frames += sum.Frames
			res.Bytes += sum.StoredSize
		}
		res.Verified = append(res.Verified, m.ID)
	}
	return res, nil
}

// verifyArtifact streams one artifact through frames.Verify (hashes only; no key needed or used).
func (s *Server) verifyArtifact(ctx context.Context, a catalog.Artifact, progress func(int64)) (frames.Summary, error) {
	if a.Frames == 0 && a.IndexSHA256 == "" {
		_, err := s.store.VerifyNow(ctx, a.Key, a.SHA256)
		return frames.Summary{StoredSize: a.Size}, err
	}
	pr, pw := io.Pipe()
	type out struct {
		sum frames.Summary
		err error
	}
	done := make(chan out, 1)
	go func() {
		sum, err := frames.Verify(&countingReader{r: pr, f: progress}, frames.ReadOptions{ArtifactID: a.ArtifactID, ExpectIndexSHA256: a.IndexSHA256})
		_ = pr.CloseWithError(errs.New(errs.Cancelled, "verification ended"))
		done <- out{sum, err}
	}()
	_, gerr := s.store.Get(ctx, a.Key, 0, 0, pw, nil)
	_ = pw.CloseWithError(gerr)
	o := <-done
	if o.err != nil {
		return o.sum, o.err
	}
	if gerr != nil {
		return o.sum, gerr
	}
	if o.sum.SHA256 != a.SHA256 || o.sum.Frames != a.Frames || o.sum.StoredSize != a.Size {
		return o.sum, errs.New(errs.Corrupt, "stored artifact differs from the manifest (%d frames, %d bytes, sha256 %s; recorded %d, %d, %s)",
			o.sum.Frames, o.sum.StoredSize, o.sum.SHA256, a.Frames, a.Size, a.SHA256)
	}
	return o.sum, nil
}

type countingReader struct {
	r io.Reader
	n int64
	f func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.f(c.n)
	return n, err
}
