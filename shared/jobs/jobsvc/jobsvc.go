// Package jobsvc exposes a job runner's records as the job_status, job_cancel and job_list endpoints every
// family with jobs serves (trove.<family>.v1.job_status ...).
package jobsvc

import (
	"context"

	"troveng.dev/shared/ids"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/service"
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
