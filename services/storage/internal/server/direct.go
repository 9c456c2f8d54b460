package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/services/storage/internal/backend"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
	"troveng.dev/shared/telemetry"
)

// Direct transfers: the client moves the bytes to and from object storage itself through presigned URLs
// (backend.Direct); these endpoints only start, presign, verify and record. Presigned URLs are bearer
// secrets: they go into replies only, never into logs or errors.

// direct returns the backend's direct transfers, or the bad_request a client falls back on.
func (s *Server) direct() (backend.Direct, error) {
	d, ok := s.be.(backend.Direct)
	if !ok {
		return nil, s.unsupported(storagev1.NoDirect, "put and get")
	}
	return d, nil
}

// unsupported is the bad_request of an optional capability this strategy lacks: "<strategy> <marker>;
// use <instead>". Clients recognise the marker and fall back.
func (s *Server) unsupported(marker, instead string) error {
	name := s.opts.Strategy
	if name == "" {
		name = "this storage strategy"
	}
	return errs.BadRequestf("%s %s; use %s", name, marker, instead)
}

func toPresigned(p backend.PresignedRequest) storagev1.PresignedRequest {
	return storagev1.PresignedRequest{Part: p.Part, Method: p.Method, URL: p.URL, Header: p.Header, Expires: p.Expires}
}

func (s *Server) putDirect(ctx context.Context, req storagev1.PutDirectRequest) (storagev1.PutDirectReply, error) {
	if err := ids.ValidateKey(req.Key); err != nil {
		return storagev1.PutDirectReply{}, err
	}
	if err := backend.ValidateMetadata(req.Metadata); err != nil {
		return storagev1.PutDirectReply{}, err
	}
	d, err := s.direct()
	if err != nil {
		return storagev1.PutDirectReply{}, err
	}
	up, err := d.CreateDirectUpload(ctx, req.Key, req.Metadata)
	if err != nil {
		return storagev1.PutDirectReply{}, err
	}
	return storagev1.PutDirectReply{Key: up.Key, Token: up.Token, PartSize: up.PartSize, MaxParts: up.MaxParts}, nil
}

func (s *Server) presignParts(ctx context.Context, req storagev1.PresignPartsRequest) (storagev1.PresignPartsReply, error) {
	if err := ids.ValidateKey(req.Key); err != nil {
		return storagev1.PresignPartsReply{}, err
	}
	if len(req.Parts) == 0 || len(req.Parts) > storagev1.MaxPresignBatch {
		return storagev1.PresignPartsReply{}, errs.BadRequestf("ask for 1..%d parts at a time, not %d", storagev1.MaxPresignBatch, len(req.Parts))
	}
	d, err := s.direct()
	if err != nil {
		return storagev1.PresignPartsReply{}, err
	}
	reqs, err := d.PresignParts(ctx, req.Key, req.Token, req.Parts)
	if err != nil {
		return storagev1.PresignPartsReply{}, err
	}
	out := storagev1.PresignPartsReply{Parts: make([]storagev1.PresignedRequest, len(reqs))}
	for i, r := range reqs {
		out.Parts[i] = toPresigned(r)
	}
	return out, nil
}

// completeDirect answers at once and verifies in the background (reading the object back takes time
// proportional to its size; a micro handler must answer fast), publishing the outcome to req.Reply.
func (s *Server) completeDirect(ctx context.Context, req storagev1.CompleteDirectRequest) (struct{}, error) {
	if err := ids.ValidateKey(req.Key); err != nil {
		return struct{}{}, err
	}
	if err := validateInbox(req.Reply); err != nil {
		return struct{}{}, err
	}
	d, err := s.direct()
	if err != nil {
		return struct{}{}, err
	}
	if err := s.acquire(); err != nil { // the read-back holds a get's buffers
		return struct{}{}, err
	}
	parts := make([]backend.CompletedPart, len(req.Parts))
	for i, p := range req.Parts {
		parts[i] = backend.CompletedPart{Number: p.Number, ETag: p.ETag}
	}
	s.background(ctx, "storage.complete_direct.verify", func(ctx context.Context) {
		defer s.release()
		start := time.Now()
		var res storagev1.CompleteDirectResult
		info, err := d.CompleteDirectUpload(ctx, req.Key, req.Token, parts, req.Size, req.SHA256)
		if err != nil {
			slog.Warn("complete_direct failed", "key", req.Key, "error", err)
			res.Error = errs.From(err)
			s.metrics.Request(ctx, "storage.complete_direct.verify", errs.CodeOf(err), time.Since(start))
		} else {
			obj := toObject(info)
			res.Object = &obj
			s.metrics.Bytes(ctx, "put_direct", "in", info.Size)
			s.metrics.Request(ctx, "storage.complete_direct.verify", "", time.Since(start))
		}
		body, _ := json.Marshal(res)
		msg := &nats.Msg{Subject: req.Reply, Data: body, Header: nats.Header{}}
		telemetry.InjectMsg(ctx, msg)
		if err := s.nc.PublishMsg(msg); err != nil {
			slog.Warn("complete_direct: outcome not delivered", "key", req.Key, "error", err)
		}
	})
	return struct{}{}, nil
}

func (s *Server) abortDirect(ctx context.Context, req storagev1.AbortDirectRequest) (struct{}, error) {
	if err := ids.ValidateKey(req.Key); err != nil {
		return struct{}{}, err
	}
	d, err := s.direct()
	if err != nil {
		return struct{}{}, err
	}
	return struct{}{}, d.AbortDirectUpload(ctx, req.Key, req.Token)
}

func (s *Server) getDirect(ctx context.Context, req storagev1.KeyRequest) (storagev1.GetDirectReply, error) {
	if err := ids.ValidateKey(req.Key); err != nil {
		return storagev1.GetDirectReply{}, err
	}
	d, err := s.direct()
	if err != nil {
		return storagev1.GetDirectReply{}, err
	}
	p, info, err := d.PresignGet(ctx, req.Key)
	if err != nil {
		return storagev1.GetDirectReply{}, err
	}
	return storagev1.GetDirectReply{Object: toObject(info), Request: toPresigned(p)}, nil
}
