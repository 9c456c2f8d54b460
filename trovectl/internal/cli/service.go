package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/spf13/cobra"

	"troveng.dev/shared/errs"
)

func serviceCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "service", Short: "Discover running services ($SRV.INFO / $SRV.STATS)"}
	c.AddCommand(&cobra.Command{
		Use: "ls", Short: "List every service replica that answers, with its endpoints", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nc, err := g.connect()
			if err != nil {
				return err
			}
			defer nc.Close()
			infos, err := discover[micro.Info](cmd.Context(), nc, micro.InfoVerb)
			if err != nil {
				return err
			}
			sort.Slice(infos, func(i, j int) bool { return infos[i].Name+infos[i].ID < infos[j].Name+infos[j].ID })
			return g.print(infos, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tVERSION\tID\tENDPOINTS")
				for _, in := range infos {
					eps := ""
					for i, e := range in.Endpoints {
						if i > 0 {
							eps += " "
						}
						eps += e.Subject
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", in.Name, in.Version, in.ID, eps)
				}
				_ = tw.Flush()
			})
		},
	}, &cobra.Command{
		Use: "stats", Short: "Request counts, errors and processing time per endpoint of every replica", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nc, err := g.connect()
			if err != nil {
				return err
			}
			defer nc.Close()
			stats, err := discover[micro.Stats](cmd.Context(), nc, micro.StatsVerb)
			if err != nil {
				return err
			}
			return g.print(stats, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SERVICE\tID\tENDPOINT\tREQUESTS\tERRORS\tAVG")
				for _, s := range stats {
					for _, e := range s.Endpoints {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", s.Name, s.ID, e.Subject, e.NumRequests, e.NumErrors, e.AverageProcessingTime)
					}
				}
				_ = tw.Flush()
			})
		},
	})
	return c
}

// discover collects every reply to a $SRV verb within a short window.
func discover[T any](ctx context.Context, nc *nats.Conn, verb micro.Verb) ([]T, error) {
	subj, err := micro.ControlSubject(verb, "", "")
	if err != nil {
		return nil, errs.Wrap(errs.Internal, err, "building the discovery subject")
	}
	inbox := nats.NewInbox()
	ch := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "subscribing for discovery replies")
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subj, inbox, nil); err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "sending the discovery request")
	}
	var out []T
	window := time.NewTimer(time.Second)
	defer window.Stop()
	for {
		select {
		case m := <-ch:
			var v T
			if json.Unmarshal(m.Data, &v) == nil {
				out = append(out, v)
			}
		case <-window.C:
			return out, nil
		case <-ctx.Done():
			return out, nil
		}
	}
}
