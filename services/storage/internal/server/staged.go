package server

import (
	"context"
	"io"

	"troveng.dev/services/storage/internal/backend"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
)

// Staged uploads (backend.Staged): a put in segments, each durable in the strategy once its stream is
// acknowledged, so a client that lost this service mid-upload continues where storage stands.

// staged returns the backend's staged uploads, or the bad_request a client falls back on.
func (s *Server) staged() (backend.Staged, error) {
	st, ok := s.be.(backend.Staged)
	if !ok {
		return nil, s.unsupported(storagev1.NoStaged, "put")
	}
	return st, nil
}

func toStaged(u backend.StagedUpload) storagev1.StagedUpload {
	return storagev1.StagedUpload{Key: u.Key, Token: u.Token, Committed: u.Committed}
}

// checkStaged validates what names a staged upload.
func checkStaged(key, token string) error {
	if err := ids.ValidateKey(key); err != nil {
		return err
	}
	return ids.Validate("staged upload", token)
}

func (s *Server) stagedBegin(ctx context.Context, req storagev1.StagedBeginRequest) (storagev1.StagedUpload, error) {
	if err := ids.ValidateKey(req.Key); err != nil {
		return storagev1.StagedUpload{}, err
	}
	if err := backend.ValidateMetadata(req.Metadata); err != nil {
		return storagev1.StagedUpload{}, err
	}
	st, err := s.staged()
	if err != nil {
		return storagev1.StagedUpload{}, err
	}
	up, err := st.BeginStaged(ctx, req.Key, req.Metadata)
	return toStaged(up), err
}

func (s *Server) stagedStatus(ctx context.Context, req storagev1.StagedRequest) (storagev1.StagedUpload, error) {
	if err := checkStaged(req.Key, req.Token); err != nil {
		return storagev1.StagedUpload{}, err
	}
	st, err := s.staged()
	if err != nil {
		return storagev1.StagedUpload{}, err
	}
	up, err := st.StagedStatus(ctx, req.Key, req.Token)
	return toStaged(up), err
}

func (s *Server) stagedAppend(ctx context.Context, req storagev1.StagedAppendRequest) (storagev1.PutReply, error) {
	if err := checkStaged(req.Key, req.Token); err != nil {
		return storagev1.PutReply{}, err
	}
	if req.Offset < 0 {
		return storagev1.PutReply{}, errs.BadRequestf("offset %d is negative", req.Offset)
	}
	st, err := s.staged()
	if err != nil {
		return storagev1.PutReply{}, err
	}
	// Refuse a wrong offset or a gone upload now, before the client streams a segment for nothing.
	cur, err := st.StagedStatus(ctx, req.Key, req.Token)
	if err != nil {
		return storagev1.PutReply{}, err
	}
	if cur.Committed != req.Offset {
		return storagev1.PutReply{}, errs.New(errs.Conflict, "staged upload of %q holds %d bytes; an append must start there, not at %d", req.Key, cur.Committed, req.Offset)
	}
	return s.receive(ctx, "staged_append", req.Key, func(ctx context.Context, r io.Reader) (any, int64, error) {
		up, err := st.AppendStaged(ctx, req.Key, req.Token, req.Offset, r)
		return toStaged(up), up.Committed - req.Offset, err
	})
}

func (s *Server) stagedComplete(ctx context.Context, req storagev1.StagedCompleteRequest) (storagev1.Object, error) {
	if err := checkStaged(req.Key, req.Token); err != nil {
		return storagev1.Object{}, err
	}
	if req.Size < 0 || !isHexSHA256(req.SHA256) {
		return storagev1.Object{}, errs.BadRequestf("complete %q: size must be >= 0 and sha256 64 lower-case hex digits", req.Key)
	}
	st, err := s.staged()
	if err != nil {
		return storagev1.Object{}, err
	}
	info, err := st.CompleteStaged(ctx, req.Key, req.Token, req.Size, req.SHA256)
	if err != nil {
		return storagev1.Object{}, err
	}
	return toObject(info), nil
}

func (s *Server) stagedAbort(ctx context.Context, req storagev1.StagedRequest) (struct{}, error) {
	if err := checkStaged(req.Key, req.Token); err != nil {
		return struct{}{}, err
	}
	st, err := s.staged()
	if err != nil {
		return struct{}{}, err
	}
	return struct{}{}, st.AbortStaged(ctx, req.Key, req.Token)
}

func (s *Server) stagedPurge(ctx context.Context, req storagev1.StagedPurgeRequest) (storagev1.StagedPurgeReply, error) {
	if req.Prefix == "" {
		return storagev1.StagedPurgeReply{}, errs.BadRequestf("staged_purge needs a prefix")
	}
	if err := ids.ValidatePrefix(req.Prefix); err != nil {
		return storagev1.StagedPurgeReply{}, err
	}
	st, err := s.staged()
	if err != nil {
		if errs.Is(err, errs.BadRequest) {
			return storagev1.StagedPurgeReply{}, nil // a strategy without staged uploads has none to drop
		}
		return storagev1.StagedPurgeReply{}, err
	}
	n, err := st.AbortStagedPrefix(ctx, req.Prefix)
	return storagev1.StagedPurgeReply{Aborted: n}, err
}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
