package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/rpc"
)

// withNATS connects for one command and runs it.
func (g *globals) withNATS(run func(ctx context.Context, nc *nats.Conn, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		nc, err := g.connect()
		if err != nil {
			return err
		}
		defer nc.Close()
		return run(cmd.Context(), nc, args)
	}
}

// call makes one request bounded by --timeout.
func (g *globals) call(ctx context.Context, nc *nats.Conn, subject string, req, resp any) error {
	ctx, cancel := g.requestCtx(ctx)
	defer cancel()
	return rpc.Call(ctx, nc, subject, req, resp)
}

func backupCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "backup", Short: "Make, list, show, verify, delete and prune backups"}
	subj := func(op string) string { return backupv1.Subject(backupv1.BackupGroup, op) }

	var cr backupv1.CreateRequest
	var incremental, noWait bool
	create := &cobra.Command{
		Use: "create --instance ID", Short: "Back up a guest (a job: progress, then a summary)", Args: cobra.NoArgs,
		RunE: g.withNATS(func(ctx context.Context, nc *nats.Conn, _ []string) error {
			if incremental {
				cr.Type = catalog.TypeIncremental
			}
			if err := cr.Validate(); err != nil {
				return err
			}
			var j jobs.Job
			if err := g.call(ctx, nc, subj(backupv1.OpCreate), cr, &j); err != nil {
				return err
			}
			if noWait {
				return g.print(j, func(w io.Writer) { printJob(w, j) })
			}
			final, err := g.followWithProgress(ctx, nc, backupv1.BackupFamily, j.ID)
			if err != nil {
				return err
			}
			var res backupv1.BackupResult
			if final.State == jobs.StateSucceeded && json.Unmarshal(final.Result, &res) == nil {
				if err := g.print(res.Backup, func(w io.Writer) { printBackupSummary(w, res.Backup) }); err != nil {
					return err
				}
			} else if err := g.print(final, func(w io.Writer) { printJob(w, final) }); err != nil {
				return err
			}
			return jobOutcome(final)
		}),
	}
	f := create.Flags()
	f.StringVar(&cr.Instance, "instance", "", "guest instance id to back up (required)")
	f.StringVar(&cr.Strategy, "strategy", "", "strategy (default: the engine's physical one)")
	f.BoolVar(&incremental, "incremental", false, "continue from a parent backup (strategies that support it)")
	f.StringVar(&cr.Parent, "parent", "", "parent of an incremental (default: the newest COMPLETED one)")
	f.StringVar(&cr.BackupID, "id", "", "backup id (default: generated)")
	f.StringArrayVar(&cr.Recipients, "recipient", nil, "extra age public key to wrap the data key for (repeatable)")
	f.StringVar(&cr.Compression, "compression", "", "zstd (default), gzip or none")
	f.IntVar(&cr.Level, "level", 0, "compression level (0: the codec's fast default)")
	f.IntVar(&cr.FrameSize, "frame-size", 0, "raw bytes per frame (0: default)")
	f.Int64Var(&cr.BandwidthLimit, "bwlimit", 0, "bytes/s cap of the transfer to storage (0: none)")
	f.StringToStringVar(&cr.Options, "opt", nil, "strategy option key=value (repeatable)")
	f.BoolVar(&noWait, "no-wait", false, "print the job and return at once")
	_ = create.MarkFlagRequired("instance")

	var lr backupv1.ListRequest
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List backups (oldest first)", Args: cobra.NoArgs,
		RunE: g.withNATS(func(ctx context.Context, nc *nats.Conn, _ []string) error {
			var rep backupv1.ListReply
			if err := g.call(ctx, nc, subj(backupv1.OpList), lr, &rep); err != nil {
				return err
			}
			return g.print(rep, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tINSTANCE\tENGINE\tSTRATEGY\tTYPE\tPARENT\tSTATE\tSIZE\tRAW\tCREATED")
				for _, m := range rep.Backups {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Instance, m.Engine, m.Strategy, m.Type,
						dash(m.Parent), m.State, humanBytes(m.StoredSize), humanBytes(m.RawSize), m.Created.Format(time.RFC3339))
				}
				_ = tw.Flush()
				for id, why := range rep.Unreadable {
					fmt.Fprintf(w, "unreadable manifest %s: %s\n", id, why)
				}
			})
		}),
	}
	list.Flags().StringVar(&lr.Instance, "instance", "", "only this instance")
	list.Flags().StringVar(&lr.Engine, "engine", "", "only this engine")
	list.Flags().StringVar(&lr.State, "state", "", "only this state (RUNNING, COMPLETED, FAILED)")

	show := &cobra.Command{
		Use: "show ID", Short: "Show a backup's manifest", Args: cobra.ExactArgs(1),
		RunE: g.withNATS(func(ctx context.Context, nc *nats.Conn, args []string) error {
			var m catalog.Manifest
			if err := g.call(ctx, nc, subj(backupv1.OpShow), backupv1.IDRequest{ID: args[0]}, &m); err != nil {
				return err
			}
			return g.print(m, func(w io.Writer) { printManifest(w, m) })
		}),
	}

	var chain bool
	verify := &cobra.Command{
		Use: "verify ID", Short: "Check every frame of a backup (and with --chain its parents) without restoring", Args: cobra.ExactArgs(1),
		RunE: g.withNATS(func(ctx context.Context, nc *nats.Conn, args []string) error {
			var j jobs.Job
			if err := g.call(ctx, nc, subj(backupv1.OpVerify), backupv1.VerifyRequest{ID: args[0], Chain: chain}, &j); err != nil {
				return err
			}
			return g.watchJob(ctx, nc, backupv1.BackupFamily, j.ID)
		}),
	}
	verify.Flags().BoolVar(&chain, "chain", false, "verify every backup the restore of this one needs")

	var cascade bool
	del := &cobra.Command{
		Use: "delete ID", Short: "Delete a backup (refused when incrementals depend on it, unless --cascade)", Args: cobra.ExactArgs(1),
		RunE: g.withNATS(func(ctx context.Context, nc *nats.Conn, args []string) error {
			var rep backupv1.DeleteReply
			if err := g.call(ctx, nc, subj(backupv1.OpDelete), backupv1.DeleteRequest{ID: args[0], Cascade: cascade}, &rep); err != nil {
				return err
			}
			return g.print(rep, func(w io.Writer) { fmt.Fprintf(w, "deleted %s\n", strings.Join(rep.Deleted, " ")) })
		}),
	}
	del.Flags().BoolVar(&cascade, "cascade", false, "also delete the incrementals that depend on it")

	var pr backupv1.PruneRequest
	var keepNewer time.Duration
	prune := &cobra.Command{
		Use: "prune", Short: "Delete whole chains a retention policy no longer keeps", Args: cobra.NoArgs,
		RunE: g.withNATS(func(ctx context.Context, nc *nats.Conn, _ []string) error {
			if keepNewer > 0 {
				pr.KeepNewerThan = keepNewer.String()
			}
			if err := pr.Validate(); err != nil {
				return err
			}
			var rep backupv1.DeleteReply
			if err := g.call(ctx, nc, subj(backupv1.OpPrune), pr, &rep); err != nil {
				return err
			}
			return g.print(rep, func(w io.Writer) {
				verb := "deleted"
				if rep.DryRun {
					verb = "would delete"
				}
				fmt.Fprintf(w, "%s %d backups: %s\n", verb, len(rep.Deleted), strings.Join(rep.Deleted, " "))
			})
		}),
	}
	prune.Flags().StringVar(&pr.Instance, "instance", "", "only this instance's backups")
	prune.Flags().IntVar(&pr.KeepLast, "keep-last", 0, "keep the newest N full chains")
	prune.Flags().DurationVar(&keepNewer, "keep-newer-than", 0, "keep chains with a backup newer than this (e.g. 168h)")
	prune.Flags().BoolVar(&pr.DryRun, "dry-run", false, "only show what would be deleted")

	c.AddCommand(create, list, show, verify, del, prune)
	return c
}

func restoreCmd(g *globals) *cobra.Command {
	var rr backupv1.RestoreRequest
	var noWait bool
	c := &cobra.Command{
		Use: "restore BACKUP --instance ID", Short: "Restore a backup (its whole chain) into a guest", Args: cobra.ExactArgs(1),
		RunE: g.withNATS(func(ctx context.Context, nc *nats.Conn, args []string) error {
			rr.Backup = args[0]
			if err := rr.Validate(); err != nil {
				return err
			}
			var j jobs.Job
			if err := g.call(ctx, nc, backupv1.Subject(backupv1.RestoreGroup, backupv1.OpRestore), rr, &j); err != nil {
				return err
			}
			if noWait {
				return g.print(j, func(w io.Writer) { printJob(w, j) })
			}
			final, err := g.followWithProgress(ctx, nc, backupv1.RestoreFamily, j.ID)
			if err != nil {
				return err
			}
			var res backupv1.RestoreResult
			if final.State == jobs.StateSucceeded && json.Unmarshal(final.Result, &res) == nil {
				if err := g.print(res, func(w io.Writer) { printRestoreSummary(w, res) }); err != nil {
					return err
				}
			} else if err := g.print(final, func(w io.Writer) { printJob(w, final) }); err != nil {
				return err
			}
			return jobOutcome(final)
		}),
	}
	c.Flags().StringVar(&rr.Instance, "instance", "", "target guest instance id (required)")
	c.Flags().StringVar(&rr.Mode, "mode", "", "new (default: replace the target's data) or existing (load a logical backup into it)")
	c.Flags().StringVar(&rr.JobID, "job-id", "", "job id (default: generated; the same id again returns the same job)")
	c.Flags().Int64Var(&rr.BandwidthLimit, "bwlimit", 0, "bytes/s cap of the transfer from storage (0: none)")
	c.Flags().BoolVar(&noWait, "no-wait", false, "print the job and return at once")
	_ = c.MarkFlagRequired("instance")
	return c
}

// followWithProgress follows a job, drawing a byte progress bar (done, rate, ETA) on a terminal.
func (g *globals) followWithProgress(ctx context.Context, nc *nats.Conn, family, id string) (jobs.Job, error) {
	var p *progress
	j, err := followJob(ctx, nc, family, id, 2*time.Second, func(j jobs.Job) {
		if p == nil && j.Progress.Unit == "bytes" {
			p = newProgress(g.stderr, family+" "+j.ID, j.Progress.Total, isTerminal(os.Stderr))
		}
		if p != nil {
			p.setTotal(j.Progress.Total)
			p.done.Store(j.Progress.Done)
		}
	})
	p.finish()
	return j, err
}

// printBackupSummary is the final word of `backup create`: size, ratio, duration, throughput per stage.
func printBackupSummary(w io.Writer, m catalog.Manifest) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	d := m.Ended.Sub(m.Created)
	fmt.Fprintf(tw, "backup\t%s (%s %s of %s, %s)\n", m.ID, m.Strategy, m.Type, m.Instance, m.State)
	fmt.Fprintf(tw, "size\t%s stored, %s raw", humanBytes(m.StoredSize), humanBytes(m.RawSize))
	if m.StoredSize > 0 {
		fmt.Fprintf(tw, ", ratio %.2fx", float64(m.RawSize)/float64(m.StoredSize))
	}
	fmt.Fprintln(tw)
	if d > 0 {
		fmt.Fprintf(tw, "duration\t%s, %s/s raw\n", d.Round(time.Millisecond), humanBytes(int64(float64(m.RawSize)/d.Seconds())))
	}
	printStages(tw, m.Stages, m.RawSize)
	_ = tw.Flush()
}

// printStages shows each stage's busy time and the raw throughput it alone would allow (stages run in
// parallel, so the slowest one bounds the whole).
func printStages(tw io.Writer, stages map[string]int64, raw int64) {
	names := make([]string, 0, len(stages))
	for k := range stages {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		ms := stages[k]
		rate := "-"
		if ms > 0 {
			rate = humanBytes(int64(float64(raw)/(float64(ms)/1000))) + "/s"
		}
		fmt.Fprintf(tw, "stage %s\t%s busy, %s\n", k, (time.Duration(ms) * time.Millisecond).String(), rate)
	}
}

func printRestoreSummary(w io.Writer, r backupv1.RestoreResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	d := time.Duration(r.DurationMs) * time.Millisecond
	fmt.Fprintf(tw, "restored\t%s into %s (chain %s)\n", r.Backup, r.Instance, strings.Join(r.Chain, " → "))
	fmt.Fprintf(tw, "size\t%s raw\n", humanBytes(r.Bytes))
	if d > 0 {
		fmt.Fprintf(tw, "duration\t%s, %s/s\n", d.Round(time.Millisecond), humanBytes(int64(float64(r.Bytes)/d.Seconds())))
	}
	printStages(tw, r.Stages, r.Bytes)
	_ = tw.Flush()
}

func printManifest(w io.Writer, m catalog.Manifest) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%s\ninstance\t%s\nengine\t%s %s\nstrategy\t%s\ntype\t%s\n", m.ID, m.Instance, m.Engine, m.EngineVersion, m.Strategy, m.Type)
	if m.Parent != "" {
		fmt.Fprintf(tw, "parent\t%s\n", m.Parent)
	}
	fmt.Fprintf(tw, "state\t%s\ncreated\t%s\n", m.State, m.Created.Format(time.RFC3339))
	if !m.Ended.IsZero() {
		fmt.Fprintf(tw, "ended\t%s (%s)\n", m.Ended.Format(time.RFC3339), m.Ended.Sub(m.Created).Round(time.Millisecond))
	}
	if m.Error != nil {
		fmt.Fprintf(tw, "error\t%s: %s\n", m.Error.Code, m.Error.Message)
	}
	fmt.Fprintf(tw, "size\t%s stored, %s raw\n", humanBytes(m.StoredSize), humanBytes(m.RawSize))
	for _, k := range sortedKeys(m.Positions) {
		fmt.Fprintf(tw, "position %s\t%s\n", k, m.Positions[k])
	}
	for _, k := range sortedKeys(m.Tools) {
		fmt.Fprintf(tw, "tool %s\t%s\n", k, m.Tools[k])
	}
	for _, a := range m.Artifacts {
		fmt.Fprintf(tw, "artifact %s\t%s, %s (%s raw), %d frames %s, sha256 %s\n", a.Name, a.Key, humanBytes(a.Size), humanBytes(a.RawSize), a.Frames, a.Codec, a.SHA256)
	}
	if m.DataKey != nil {
		fmt.Fprintf(tw, "data key\twrapped for %s\n", strings.Join(m.DataKey.Recipients, ", "))
	}
	_ = tw.Flush()
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
