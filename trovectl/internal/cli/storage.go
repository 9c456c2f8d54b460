package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/storageclient"
	"troveng.dev/shared/stream"
)

func storageCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "storage", Short: "Put, get and manage objects in the storage service"}
	c.AddCommand(storagePutCmd(g), storageGetCmd(g), storageLsCmd(g), storageStatCmd(g), storageRmCmd(g),
		storageVerifyCmd(g), storageCpCmd(g))
	return c
}

// withStorage connects and hands a storage client to f.
func (g *globals) withStorage(f func(nc *nats.Conn, c *storageclient.Client) error) error {
	nc, err := g.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	return f(nc, storageclient.New(nc, stream.Options{}))
}

func parseMeta(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, errs.BadRequestf("metadata %q is not key=value", kv)
		}
		m[k] = v
	}
	return m, nil
}

func storagePutCmd(g *globals) *cobra.Command {
	var meta []string
	var showProgress, viaService bool
	c := &cobra.Command{
		Use:   "put KEY [FILE|-]",
		Short: "Upload a file (or standard input) as an object",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := parseMeta(meta)
			if err != nil {
				return err
			}
			var src io.Reader = os.Stdin
			var size int64
			if len(args) == 2 && args[1] != "-" {
				f, err := os.Open(args[1])
				if err != nil {
					return errs.Wrap(errs.BadRequest, err, "cannot read the file to upload")
				}
				defer func() { _ = f.Close() }()
				if st, err := f.Stat(); err == nil {
					size = st.Size()
				}
				src = f
			}
			return g.withStorage(func(_ *nats.Conn, sc *storageclient.Client) error {
				p := newProgress(g.stderr, "put "+args[0], size, showProgress || isTerminal(os.Stderr))
				put := sc.PutDirect // straight to object storage where the strategy allows it, else streamed
				if viaService {
					put = sc.Put
				}
				obj, err := put(cmd.Context(), args[0], progressReader{src, p}, m)
				p.finish()
				if err != nil {
					return err
				}
				return g.print(obj, func(w io.Writer) { printObject(w, obj) })
			})
		},
	}
	c.Flags().StringArrayVar(&meta, "meta", nil, "user metadata key=value (repeatable)")
	c.Flags().BoolVar(&viaService, "via-service", false, "stream the bytes through the storage service even where direct transfers exist")
	c.Flags().BoolVar(&showProgress, "progress", false, "draw a progress bar even when stderr is not a terminal")
	return c
}

func storageGetCmd(g *globals) *cobra.Command {
	var offset, length int64
	var showProgress, viaService bool
	c := &cobra.Command{
		Use:   "get KEY [FILE|-]",
		Short: "Download an object (or a byte range of it) to a file or standard output",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStorage(func(_ *nats.Conn, sc *storageclient.Client) error {
				dst := g.stdout
				var tmp *os.File
				target := ""
				if len(args) == 2 && args[1] != "-" {
					// Download to a temporary file beside the target and rename at the end, so a failed
					// download never leaves a truncated file under the requested name.
					target = args[1]
					f, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".part-*")
					if err != nil {
						return errs.Wrap(errs.BadRequest, err, "cannot write the download")
					}
					tmp, dst = f, f
					defer func() {
						_ = tmp.Close()
						_ = os.Remove(tmp.Name())
					}()
				}
				p := newProgress(g.stderr, "get "+args[0], 0, showProgress || (target != "" && isTerminal(os.Stderr)))
				var err error
				if viaService {
					_, err = sc.Get(cmd.Context(), args[0], offset, length, progressWriter{dst, p}, func(r storagev1.GetReply) { p.setTotal(r.Length) })
				} else {
					if p != nil {
						if obj, serr := sc.Stat(cmd.Context(), args[0]); serr == nil {
							p.setTotal(obj.Size - offset)
						}
					}
					// Straight from object storage where the strategy allows it, else streamed.
					_, err = sc.GetDirect(cmd.Context(), args[0], offset, length, progressWriter{dst, p})
				}
				p.finish()
				if err != nil {
					return err
				}
				if tmp != nil {
					if err := tmp.Sync(); err != nil {
						return errs.Wrap(errs.Internal, err, "flushing the download")
					}
					if err := os.Rename(tmp.Name(), target); err != nil {
						return errs.Wrap(errs.Internal, err, "moving the download into place")
					}
				}
				return nil
			})
		},
	}
	c.Flags().Int64Var(&offset, "offset", 0, "first byte to read")
	c.Flags().Int64Var(&length, "length", 0, "number of bytes to read (0: to the end)")
	c.Flags().BoolVar(&viaService, "via-service", false, "stream the bytes through the storage service even where direct transfers exist")
	c.Flags().BoolVar(&showProgress, "progress", false, "draw a progress bar even when stderr is not a terminal")
	return c
}

func printObject(w io.Writer, o storagev1.Object) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "key\t%s\nsize\t%d (%s)\nsha256\t%s\nmodified\t%s\n", o.Key, o.Size, humanBytes(o.Size), o.SHA256, o.Modified.Format("2006-01-02 15:04:05Z07:00"))
	for k, v := range o.Metadata {
		fmt.Fprintf(tw, "meta.%s\t%s\n", k, v)
	}
	_ = tw.Flush()
}

func storageLsCmd(g *globals) *cobra.Command {
	var limit int
	var startAfter string
	var all bool
	c := &cobra.Command{
		Use:   "ls [PREFIX]",
		Short: "List objects by key prefix",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			prefix := ""
			if len(args) == 1 {
				prefix = args[0]
			}
			return g.withStorage(func(_ *nats.Conn, sc *storageclient.Client) error {
				ctx, cancel := g.requestCtx(cmd.Context())
				defer cancel()
				var objs []storagev1.Object
				next := ""
				if all {
					err := sc.ListAll(ctx, prefix, func(o storagev1.Object) error { objs = append(objs, o); return nil })
					if err != nil {
						return err
					}
				} else {
					rep, err := sc.List(ctx, storagev1.ListRequest{Prefix: prefix, StartAfter: startAfter, Limit: limit})
					if err != nil {
						return err
					}
					objs, next = rep.Objects, rep.Next
				}
				return g.print(storagev1.ListReply{Objects: objs, Next: next}, func(w io.Writer) {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "KEY\tSIZE\tMODIFIED\tSHA256")
					for _, o := range objs {
						fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", o.Key, o.Size, o.Modified.Format("2006-01-02 15:04:05"), o.SHA256)
					}
					_ = tw.Flush()
					if next != "" {
						fmt.Fprintf(w, "(more: --start-after %q)\n", next)
					}
				})
			})
		},
	}
	c.Flags().IntVar(&limit, "limit", 0, "page size (default 100, at most 1000)")
	c.Flags().StringVar(&startAfter, "start-after", "", "continue after this key (from a previous page)")
	c.Flags().BoolVar(&all, "all", false, "walk every page")
	return c
}

func storageStatCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "stat KEY",
		Short: "Show an object's size, SHA-256 and metadata",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStorage(func(_ *nats.Conn, sc *storageclient.Client) error {
				ctx, cancel := g.requestCtx(cmd.Context())
				defer cancel()
				obj, err := sc.Stat(ctx, args[0])
				if err != nil {
					return err
				}
				return g.print(obj, func(w io.Writer) { printObject(w, obj) })
			})
		},
	}
}

func storageRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm KEY",
		Short: "Delete an object",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStorage(func(_ *nats.Conn, sc *storageclient.Client) error {
				ctx, cancel := g.requestCtx(cmd.Context())
				defer cancel()
				if err := sc.Delete(ctx, args[0]); err != nil {
					return err
				}
				return g.print(storagev1.DeleteReply{Deleted: args[0]}, func(w io.Writer) { fmt.Fprintf(w, "deleted %s\n", args[0]) })
			})
		},
	}
}

func storageVerifyCmd(g *globals) *cobra.Command {
	var wait bool
	c := &cobra.Command{
		Use:   "verify KEY",
		Short: "Start a job that reads an object end to end and checks its recorded SHA-256",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStorage(func(nc *nats.Conn, sc *storageclient.Client) error {
				ctx, cancel := g.requestCtx(cmd.Context())
				defer cancel()
				j, err := sc.Verify(ctx, storagev1.VerifyRequest{Key: args[0]})
				if err != nil {
					return err
				}
				return g.jobResult(cmd.Context(), nc, "storage", j, wait)
			})
		},
	}
	c.Flags().BoolVar(&wait, "wait", true, "wait for the job to end, with progress")
	return c
}

func storageCpCmd(g *globals) *cobra.Command {
	var wait bool
	c := &cobra.Command{
		Use:   "cp SOURCE DESTINATION",
		Short: "Start a job that copies an object to a new key (verifying the source as it reads)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withStorage(func(nc *nats.Conn, sc *storageclient.Client) error {
				ctx, cancel := g.requestCtx(cmd.Context())
				defer cancel()
				j, err := sc.Copy(ctx, storagev1.CopyRequest{Source: args[0], Destination: args[1]})
				if err != nil {
					return err
				}
				return g.jobResult(cmd.Context(), nc, "storage", j, wait)
			})
		},
	}
	c.Flags().BoolVar(&wait, "wait", true, "wait for the job to end, with progress")
	return c
}

// jobResult prints a just-submitted job, or waits for it and prints its end.
func (g *globals) jobResult(ctx context.Context, nc *nats.Conn, family string, j jobs.Job, wait bool) error {
	if !wait {
		return g.print(j, func(w io.Writer) { printJob(w, j) })
	}
	return g.watchJob(ctx, nc, family, j.ID)
}
