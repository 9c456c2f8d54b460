package cli

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"troveng.dev/shared/benchdata"
	"troveng.dev/shared/bytesize"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/stream"
)

func guestGenCmd(g *globals) *cobra.Command {
	var size string
	var parallel int
	c := &cobra.Command{
		Use:   "gen [flags] ID",
		Short: "Grow the benchmark database `bench` on a MariaDB or PostgreSQL guest to a size (the bench:gen task)",
		Long: `gen adds generated tables to the database bench of a MariaDB or PostgreSQL guest until it holds at least
--size bytes: the data of the engine benchmarks (docs/benchmarks.md), made inside the engine (INSERT ...
SELECT from a sequence) through the agent's exec of the engine's own client, so the same data can be
regenerated for any other tool. Tables t_001, t_002, ... hold ~115 MiB (MariaDB) or ~110 MiB (PostgreSQL)
each of mixed columns (numbers, dates, vocabulary text, hex digests, 32 random bytes a row). Running it
again on the same guest continues from what is there.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := guestv1.ValidateInstance(id); err != nil {
				return err
			}
			target, err := bytesize.Parse(size)
			if err != nil {
				return err
			}
			if parallel < 1 {
				return errs.BadRequestf("--parallel %d: at least 1", parallel)
			}
			return g.withRegistry(func(nc *nats.Conn, js jetstream.JetStream) error {
				reg, gc, err := guestclient.Live(cmd.Context(), nc, js, id, "", stream.Options{})
				if err != nil {
					return err
				}
				eng, err := benchdata.ByName(reg.Engine)
				if err != nil {
					return err
				}
				admin, bench, err := benchdata.AgentQueries(gc, reg)
				if err != nil {
					return err
				}
				start := time.Now()
				have, err := eng.Grow(cmd.Context(), admin, bench, target, 0, parallel, func(size int64, tables int) {
					fmt.Fprintf(g.stderr, "bench on %s: %d tables, %s\n", id, tables, humanBytes(size))
				})
				if err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "bench on %s (%s): %s in %s\n", id, reg.Engine, humanBytes(have), time.Since(start).Round(time.Second))
				return nil
			})
		},
	}
	c.Flags().StringVar(&size, "size", "2GiB", "grow bench to at least this many bytes (suffixes MiB, GiB, ...)")
	c.Flags().IntVar(&parallel, "parallel", 2, "tables generated at once (one engine session keeps about one core busy)")
	return c
}
