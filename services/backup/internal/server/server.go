// Package server is the backup service's request and job handling: create (a job per backup), the catalog
// operations (list, show, verify, delete, prune) and the job endpoints. It keeps no state: the catalog is the
// manifests in the storage service, jobs are in JetStream, guests are in the registry.
package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"filippo.io/age"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/datakey"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
	"troveng.dev/shared/telemetry"
)

// Options tune a Server.
type Options struct {
	// Recipients are the age public keys every data key is wrapped for (requests may add more).
	Recipients []*age.X25519Recipient
	// Stream tunes the streams to guests and storage.
	Stream stream.Options
	// FrameSize is the default raw frame size (0: the framed format's default).
	FrameSize int
	// Direct sets StorageRef.Direct on every artifact (see backup.Config.Direct).
	Direct bool
	Logger *slog.Logger
}

// Server handles the backup service's endpoints and jobs.
type Server struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	jobs    *jobs.Runner
	store   *storageclient.Client
	cat     *catalog.Catalog
	opts    Options
	metrics *telemetry.Metrics
	tracer  trace.Tracer
	log     *slog.Logger
}

// New makes a Server and registers its job kinds on runner (which the caller starts).
func New(nc *nats.Conn, js jetstream.JetStream, runner *jobs.Runner, m *telemetry.Metrics, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	store := storageclient.New(nc, opts.Stream)
	s := &Server{
		nc: nc, js: js, jobs: runner, store: store, cat: catalog.New(store), opts: opts, metrics: m,
		tracer: otel.Tracer("troveng.dev/services/backup"), log: opts.Logger,
	}
	runner.Register(backupv1.JobBackup, s.runBackup)
	runner.Register(backupv1.JobVerify, s.runVerify)
	return s
}

// Endpoints lists the service's micro endpoints.
func (s *Server) Endpoints() []service.Endpoint {
	eps := []service.Endpoint{
		{Name: backupv1.OpCreate, Handler: service.JSON(s.create), Mutating: true},
		{Name: backupv1.OpList, Handler: service.JSON(s.list)},
		{Name: backupv1.OpShow, Handler: service.JSON(s.show)},
		{Name: backupv1.OpVerify, Handler: service.JSON(s.verify)},
		{Name: backupv1.OpDelete, Handler: service.JSON(s.delete), Mutating: true},
		{Name: backupv1.OpPrune, Handler: service.JSON(s.prune), Mutating: true},
	}
	return eps
}

// create submits a backup job. The job id is the backup id.
func (s *Server) create(ctx context.Context, req backupv1.CreateRequest) (jobs.Job, error) {
	if _, err := s.recipients(req.Recipients); err != nil {
		return jobs.Job{}, err
	}
	return s.jobs.Submit(ctx, backupv1.JobBackup, req, req.BackupID)
}

func (s *Server) list(ctx context.Context, req backupv1.ListRequest) (backupv1.ListReply, error) {
	rep := backupv1.ListReply{Backups: []catalog.Manifest{}}
	ms, err := s.cat.List(ctx, catalog.Filter{Instance: req.Instance, Engine: req.Engine, State: req.State}, func(id string, err error) {
		if rep.Unreadable == nil {
			rep.Unreadable = map[string]string{}
		}
		rep.Unreadable[id] = err.Error()
	})
	if err != nil {
		return rep, err
	}
	for _, m := range ms {
		rep.Backups = append(rep.Backups, *m)
	}
	return rep, nil
}

func (s *Server) show(ctx context.Context, req backupv1.IDRequest) (catalog.Manifest, error) {
	m, err := s.cat.Load(ctx, req.ID)
	if err != nil {
		return catalog.Manifest{}, err
	}
	return *m, nil
}

func (s *Server) verify(ctx context.Context, req backupv1.VerifyRequest) (jobs.Job, error) {
	if _, err := s.cat.Load(ctx, req.ID); err != nil {
		return jobs.Job{}, err
	}
	return s.jobs.Submit(ctx, backupv1.JobVerify, req, "")
}

// delete removes a backup, refusing one that incrementals depend on unless asked to cascade (then the
// dependents go first, deepest first, so a chain is never left with a hole in the middle).
func (s *Server) delete(ctx context.Context, req backupv1.DeleteRequest) (backupv1.DeleteReply, error) {
	m, err := s.cat.Load(ctx, req.ID)
	if err != nil {
		return backupv1.DeleteReply{}, err
	}
	all, err := s.cat.List(ctx, catalog.Filter{Instance: m.Instance}, nil)
	if err != nil {
		return backupv1.DeleteReply{}, err
	}
	set := catalog.NewSet(all)
	deps := set.Dependents(m.ID)
	if len(deps) > 0 && !req.Cascade {
		return backupv1.DeleteReply{}, errs.Conflictf("backup %s has %d incremental backups depending on it (%v); delete with cascade to remove them too", m.ID, len(deps), deps)
	}
	if m.State == catalog.StateRunning {
		if j, err := s.jobs.Get(ctx, m.ID); err == nil && !j.State.Final() {
			return backupv1.DeleteReply{}, errs.Conflictf("backup %s is still being made (job %s); cancel the job first", m.ID, j.State)
		}
	}
	order := append(reverse(deps), m.ID)
	return s.remove(ctx, order)
}

func (s *Server) prune(ctx context.Context, req backupv1.PruneRequest) (backupv1.DeleteReply, error) {
	var newer time.Duration
	if req.KeepNewerThan != "" {
		newer, _ = time.ParseDuration(req.KeepNewerThan) // Validate checked it
	}
	all, err := s.cat.List(ctx, catalog.Filter{Instance: req.Instance}, nil)
	if err != nil {
		return backupv1.DeleteReply{}, err
	}
	drop, err := catalog.NewSet(all).Prune(catalog.Policy{KeepFullChains: req.KeepLast, KeepNewerThan: newer}, time.Now())
	if err != nil {
		return backupv1.DeleteReply{}, err
	}
	if req.DryRun {
		return backupv1.DeleteReply{Deleted: nonNil(drop), DryRun: true}, nil
	}
	return s.remove(ctx, drop)
}

func (s *Server) remove(ctx context.Context, order []string) (backupv1.DeleteReply, error) {
	rep := backupv1.DeleteReply{Deleted: []string{}}
	for _, id := range order {
		if err := s.cat.Remove(ctx, id); err != nil && !errs.Is(err, errs.NotFound) {
			return rep, errs.Wrap(errs.CodeOf(err), err, "deleted %v, then failed on %s", rep.Deleted, id)
		}
		rep.Deleted = append(rep.Deleted, id)
	}
	return rep, nil
}

func (s *Server) recipients(extra []string) ([]*age.X25519Recipient, error) {
	out := append([]*age.X25519Recipient(nil), s.opts.Recipients...)
	for _, r := range extra {
		rs, err := parseRecipient(r)
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	if len(out) == 0 {
		return nil, errs.BadRequestf("no age recipients: configure the backup service with -recipients (public keys) or pass recipients in the request")
	}
	return out, nil
}

func parseRecipient(text string) ([]*age.X25519Recipient, error) {
	return datakey.ParseRecipients(text)
}

func reverse(in []string) []string {
	out := make([]string, len(in))
	for i, v := range in {
		out[len(in)-1-i] = v
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func decodeParams(job jobs.Job, into any) error {
	if err := json.Unmarshal(job.Params, into); err != nil {
		return errs.Wrap(errs.BadRequest, err, "job %s has unreadable parameters", job.ID)
	}
	if v, ok := into.(service.Validator); ok {
		return v.Validate()
	}
	return nil
}
