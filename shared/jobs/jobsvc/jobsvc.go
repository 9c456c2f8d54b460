// Package jobsvc exposes a job runner's records as the job_status, job_cancel and job_list endpoints every
// family with jobs serves (trove.<family>.v1.job_status ...).
package jobsvc

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/telemetry"
)

// Endpoint names.
const (
	Status = "job_status"
	Cancel = "job_cancel"
	List   = "job_list"
)

// Request names a job.
type Request struct {
	ID string `json:"id"`
}

// Validate checks the job id before it becomes a KV key.
func (r *Request) Validate() error { return ids.Validate("job", r.ID) }

// Endpoints serves runner's jobs.
func Endpoints(runner *jobs.Runner) []service.Endpoint {
	return []service.Endpoint{
		{Name: Status, Handler: service.JSON(func(ctx context.Context, r Request) (jobs.Job, error) { return runner.Get(ctx, r.ID) })},
		{Name: Cancel, Handler: service.JSON(func(ctx context.Context, r Request) (jobs.Job, error) { return runner.Cancel(ctx, r.ID) }), Mutating: true},
		{Name: List, Handler: service.JSON(func(ctx context.Context, _ struct{}) ([]jobs.Job, error) { return runner.List(ctx, nil) })},
	}
}

// Spec describes a family's service whose work runs as jobs.
type Spec struct {
	Family      string
	Version     string
	Description string
	Metadata    map[string]string
	Jobs        jobs.Options // Family is set from Spec.Family
	// Endpoints builds the service's own endpoints once the runner exists (and registers its job kinds on
	// it); the job endpoints are added to them.
	Endpoints func(js jetstream.JetStream, runner *jobs.Runner, m *telemetry.Metrics) []service.Endpoint
}

// Service is a running job service replica.
type Service struct {
	runner *jobs.Runner
	svc    *service.Service
}

// Start assembles a job service: JetStream, the family's job runner, metrics (tel may be nil), the micro
// service with the family's endpoints plus the job endpoints, then the runner's workers.
func Start(ctx context.Context, nc *nats.Conn, tel *telemetry.Telemetry, spec Spec) (*Service, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "JetStream")
	}
	jo := spec.Jobs
	jo.Family = spec.Family
	runner, err := jobs.New(ctx, js, jo)
	if err != nil {
		return nil, err
	}
	var m *telemetry.Metrics
	if tel != nil {
		if m, err = telemetry.NewMetrics(tel.Meter()); err != nil {
			return nil, errs.Wrap(errs.Internal, err, "metrics")
		}
	}
	eps := append(spec.Endpoints(js, runner, m), Endpoints(runner)...)
	svc, err := service.Start(nc, service.Spec{Family: spec.Family, Version: spec.Version, Description: spec.Description,
		Endpoints: eps, Metadata: spec.Metadata}, tel, m)
	if err != nil {
		return nil, err
	}
	if err := runner.Start(ctx); err != nil {
		_ = svc.Stop()
		return nil, err
	}
	return &Service{runner: runner, svc: svc}, nil
}

// Micro exposes the micro service.
func (s *Service) Micro() *service.Service { return s.svc }

// Stop stops taking requests and jobs; running jobs are handed back for another replica to take over.
func (s *Service) Stop() error {
	err := s.svc.Stop()
	s.runner.Stop()
	return err
}
