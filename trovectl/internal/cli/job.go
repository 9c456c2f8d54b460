package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/ids"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/rpc"
)

func jobCmd(g *globals) *cobra.Command {
	var family string
	c := &cobra.Command{Use: "job", Short: "Show, watch and cancel long-running jobs of a service family"}
	c.PersistentFlags().StringVar(&family, "family", "storage", "service family that owns the job (storage, backup, restore, ...)")
	withJob := func(run func(ctx context.Context, nc *nats.Conn, id string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			if err := ids.Validate("family", family); err != nil {
				return err
			}
			if err := ids.Validate("job", args[0]); err != nil {
				return err
			}
			nc, err := g.connect()
			if err != nil {
				return err
			}
			defer nc.Close()
			return run(cmd.Context(), nc, args[0])
		}
	}
	show := &cobra.Command{
		Use: "show ID", Short: "Show a job's state, progress and result", Args: cobra.ExactArgs(1),
		RunE: withJob(func(ctx context.Context, nc *nats.Conn, id string) error {
			ctx, cancel := g.requestCtx(ctx)
			defer cancel()
			j, err := jobStatus(ctx, nc, family, id)
			if err != nil {
				return err
			}
			return g.print(j, func(w io.Writer) { printJob(w, j) })
		}),
	}
	watch := &cobra.Command{
		Use: "watch ID", Short: "Follow a job's progress until it ends", Args: cobra.ExactArgs(1),
		RunE: withJob(func(ctx context.Context, nc *nats.Conn, id string) error {
			return g.watchJob(ctx, nc, family, id)
		}),
	}
	cancelCmd := &cobra.Command{
		Use: "cancel ID", Short: "Ask a job to stop; it ends in state cancelled", Args: cobra.ExactArgs(1),
		RunE: withJob(func(ctx context.Context, nc *nats.Conn, id string) error {
			ctx, cancel := g.requestCtx(ctx)
			defer cancel()
			var j jobs.Job
			if err := rpc.Call(ctx, nc, jobSubject(family, "job_cancel"), map[string]string{"id": id}, &j); err != nil {
				return err
			}
			return g.print(j, func(w io.Writer) { printJob(w, j) })
		}),
	}
	ls := &cobra.Command{
		Use: "ls", Short: "List the family's jobs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ids.Validate("family", family); err != nil {
				return err
			}
			nc, err := g.connect()
			if err != nil {
				return err
			}
			defer nc.Close()
			ctx, cancel := g.requestCtx(cmd.Context())
			defer cancel()
			var list []jobs.Job
			if err := rpc.Call(ctx, nc, jobSubject(family, "job_list"), struct{}{}, &list); err != nil {
				return err
			}
			return g.print(list, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tKIND\tSTATE\tPROGRESS\tUPDATED")
				for _, j := range list {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", j.ID, j.Kind, j.State, progressText(j.Progress), j.Updated.Format(time.RFC3339))
				}
				_ = tw.Flush()
			})
		},
	}
	c.AddCommand(show, watch, cancelCmd, ls)
	return c
}

func jobSubject(family, endpoint string) string { return "trove." + family + ".v1." + endpoint }

func jobStatus(ctx context.Context, nc *nats.Conn, family, id string) (jobs.Job, error) {
	var j jobs.Job
	err := rpc.Call(ctx, nc, jobSubject(family, "job_status"), map[string]string{"id": id}, &j)
	return j, err
}

func progressText(p jobs.Progress) string {
	switch {
	case p.Total > 0 && p.Unit == "bytes":
		return fmt.Sprintf("%s/%s %.0f%%", humanBytes(p.Done), humanBytes(p.Total), 100*float64(p.Done)/float64(p.Total))
	case p.Total > 0:
		return fmt.Sprintf("%d/%d %s", p.Done, p.Total, p.Unit)
	case p.Done > 0:
		return fmt.Sprintf("%d %s", p.Done, p.Unit)
	}
	return "-"
}

func printJob(w io.Writer, j jobs.Job) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%s\nkind\t%s/%s\nstate\t%s\nprogress\t%s\nattempts\t%d\n", j.ID, j.Family, j.Kind, j.State, progressText(j.Progress), j.Attempts)
	if !j.Finished.IsZero() && !j.Started.IsZero() {
		fmt.Fprintf(tw, "duration\t%s\n", j.Finished.Sub(j.Started).Round(time.Millisecond))
	}
	if len(j.Result) > 0 {
		fmt.Fprintf(tw, "result\t%s\n", j.Result)
	}
	if j.Error != nil {
		fmt.Fprintf(tw, "error\t%s: %s\n", j.Error.Code, j.Error.Message)
	}
	_ = tw.Flush()
}

// followJob follows a job through its event subject, with a status poll as a safety net for missed events,
// calling onUpdate with every newer record until the job ends; it returns the final record.
func followJob(ctx context.Context, nc *nats.Conn, family, id string, poll time.Duration, onUpdate func(jobs.Job)) (jobs.Job, error) {
	events := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(jobs.EventSubject(family, id), events)
	if err != nil {
		return jobs.Job{}, errs.Wrap(errs.Unavailable, err, "cannot subscribe to the job's events")
	}
	defer func() { _ = sub.Unsubscribe() }()
	tick := time.NewTicker(poll)
	defer tick.Stop()
	j, err := jobStatus(ctx, nc, family, id)
	for {
		if err != nil {
			return j, err
		}
		onUpdate(j)
		if j.State.Final() {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, errs.New(errs.Cancelled, "stopped watching job %s (it goes on; `trovectl job watch %s` resumes)", id, id)
		case m := <-events:
			var ev jobs.Job
			if json.Unmarshal(m.Data, &ev) == nil && ev.ID == id && ev.Revision > j.Revision {
				j = ev
			}
		case <-tick.C:
			j, err = jobStatus(ctx, nc, family, id)
		}
	}
}

// jobOutcome is a finished job's error: its own coded error, or cancelled.
func jobOutcome(j jobs.Job) error {
	if j.Error != nil {
		return j.Error
	}
	if j.State == jobs.StateCancelled {
		return errs.New(errs.Cancelled, "job %s was cancelled", j.ID)
	}
	return nil
}

// watchJob follows a job until it ends, drawing byte progress on a terminal, then prints it; a failed or
// cancelled job returns its coded error.
func (g *globals) watchJob(ctx context.Context, nc *nats.Conn, family, id string) error {
	j, err := g.followWithProgress(ctx, nc, family, id)
	if err != nil {
		return err
	}
	if err := g.print(j, func(w io.Writer) { printJob(w, j) }); err != nil {
		return err
	}
	return jobOutcome(j)
}
