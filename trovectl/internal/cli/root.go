// Package cli implements trovectl's commands.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/natsauth"
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
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
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

// exitError ends trovectl with a given exit code: `guest exec` passes on the remote tool's own exit code.
// msg, when not empty, is printed like any other error.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// globals are the flags every command shares.
type globals struct {
	natsURL string
	creds   string
	nkey    string
	timeout time.Duration
	output  string
	stdin   io.Reader
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
	return runIO(context.Background(), args, os.Stdin, os.Stdout, os.Stderr)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runIO(ctx, args, eofReader{}, stdout, stderr)
}

// eofReader is an empty standard input.
type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

func runIO(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "trovectl",
		Short:         "Operate the Trove-NG database-operations services",
		Long:          "trovectl runs the embedded default stack, drives the storage, backup and other services over NATS, and lists, drives and runs guests (database hosts) through their agents.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	pf := root.PersistentFlags()
	pf.StringVar(&g.natsURL, "nats", envOr("TROVE_NATS_URL", nats.DefaultURL), "NATS server URL (env TROVE_NATS_URL)")
	pf.StringVar(&g.creds, "creds", os.Getenv("TROVE_NATS_CREDS"), "NATS credentials file (env TROVE_NATS_CREDS)")
	pf.StringVar(&g.nkey, "nkey", os.Getenv("TROVE_NATS_NKEY"), "NATS NKey seed file (env TROVE_NATS_NKEY; default "+defaultNKey+" when it exists, the key `trovectl up` makes)")
	pf.DurationVar(&g.timeout, "timeout", 30*time.Second, "timeout of each request (transfers and --wait run until done)")
	pf.StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	root.AddCommand(upCmd(g), storageCmd(g), jobCmd(g), serviceCmd(g), guestCmd(g), backupCmd(g), restoreCmd(g))
	err := root.ExecuteContext(ctx)
	if err != nil && err.Error() != "" {
		fmt.Fprintf(stderr, "trovectl: %v\n", err)
	}
	return exitCode(err)
}

// defaultNKey is the client identity `trovectl up` writes under its default --data-dir: used when no
// identity is given, so commands run from the directory `up` ran in just work.
const defaultNKey = "data/nkeys/cli.nk"

// identity is the connect option of the identity to use: --nkey, --creds (or their env), else the key
// `up` made in ./data, else none.
func (g *globals) identity() (nats.Option, error) {
	switch {
	case g.nkey != "" && g.creds != "":
		return nil, errs.BadRequestf("give either --nkey or --creds (TROVE_NATS_NKEY or TROVE_NATS_CREDS), not both")
	case g.nkey != "":
		return natsauth.SeedOption(g.nkey)
	case g.creds != "":
		if _, err := os.Stat(g.creds); err != nil {
			return nil, errs.Wrap(errs.BadRequest, err, "NATS credentials file")
		}
		return nats.UserCredentials(g.creds), nil
	}
	if _, err := os.Stat(defaultNKey); err == nil {
		return natsauth.SeedOption(defaultNKey)
	}
	return nil, nil
}

// connect opens a NATS connection for a command.
func (g *globals) connect() (*nats.Conn, error) {
	opts := []nats.Option{nats.Name("trovectl"), nats.Timeout(5 * time.Second)}
	id, err := g.identity()
	if err != nil {
		return nil, err
	}
	if id != nil {
		opts = append(opts, id)
	}
	nc, err := nats.Connect(g.natsURL, opts...)
	if natsauth.IsAuthError(err) {
		return nil, errs.Wrap(errs.Unauthorized, err, "NATS at %s refused this client's identity (give --nkey with the cli key `trovectl up` printed, or --creds)", g.natsURL)
	}
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
