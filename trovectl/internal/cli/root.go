// Package cli implements trovectl's commands.
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"troveng.dev/shared/errs"
)

// Exit codes: distinct per error class so scripts can tell "retry later" from "fix your input".
const (
	exitOK          = 0
	exitInternal    = 1
	exitBadRequest  = 2
	exitNotFound    = 3
	exitConflict    = 4
	exitUnavailable = 5
	exitCorrupt     = 6
	exitCancelled   = 7
	exitTimeout     = 8
)

func exitCode(err error) int {
	switch errs.CodeOf(err) {
	case "":
		return exitOK
	case errs.BadRequest, errs.Unauthorized:
		return exitBadRequest
	case errs.NotFound:
		return exitNotFound
	case errs.Conflict:
		return exitConflict
	case errs.Unavailable, errs.Busy:
		return exitUnavailable
	case errs.Corrupt:
		return exitCorrupt
	case errs.Cancelled:
		return exitCancelled
	case errs.Timeout:
		return exitTimeout
	}
	return exitInternal
}

// globals are the flags every command shares.
type globals struct {
	natsURL string
	creds   string
	timeout time.Duration
	output  string
	stdout  io.Writer
	stderr  io.Writer
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// Main runs trovectl with args and returns the process exit code.
func Main(args []string) int {
	return run(context.Background(), args, os.Stdout, os.Stderr)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "trovectl",
		Short:         "Operate the Trove-NG database-operations services",
		Long:          "trovectl runs the embedded default stack and drives the storage, backup and other services over NATS.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	pf := root.PersistentFlags()
	pf.StringVar(&g.natsURL, "nats", envOr("TROVE_NATS_URL", nats.DefaultURL), "NATS server URL (env TROVE_NATS_URL)")
	pf.StringVar(&g.creds, "creds", os.Getenv("TROVE_NATS_CREDS"), "NATS credentials file (env TROVE_NATS_CREDS)")
	pf.DurationVar(&g.timeout, "timeout", 30*time.Second, "timeout of each request (transfers and --wait run until done)")
	pf.StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	root.AddCommand(upCmd(g), storageCmd(g), jobCmd(g), serviceCmd(g))
	err := root.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "trovectl: %v\n", err)
	}
	return exitCode(err)
}

// connect opens a NATS connection for a command.
func (g *globals) connect() (*nats.Conn, error) {
	opts := []nats.Option{nats.Name("trovectl"), nats.Timeout(5 * time.Second)}
	if g.creds != "" {
		opts = append(opts, nats.UserCredentials(g.creds))
	}
	nc, err := nats.Connect(g.natsURL, opts...)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "cannot reach NATS at %s (start the stack with `trovectl up` or set --nats)", g.natsURL)
	}
	return nc, nil
}

// print writes v as JSON with -o json, else calls text.
func (g *globals) print(v any, text func(w io.Writer)) error {
	switch g.output {
	case "json":
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "text", "":
		text(g.stdout)
		return nil
	}
	return errs.BadRequestf("unknown output format %q (use text or json)", g.output)
}

// requestCtx bounds one request by --timeout.
func (g *globals) requestCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, g.timeout)
}
