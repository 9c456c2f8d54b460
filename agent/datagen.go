package agent

import (
	"bufio"
	"flag"
	"io"

	"troveng.dev/shared/bytesize"
	"troveng.dev/shared/datagen"
	"troveng.dev/shared/errs"
)

// Datagen is the agent binary's "datagen" subcommand (the allow-list's datagen tool): it writes -bytes
// bytes of deterministic dump-like text (shared/datagen, seed -seed) to w. The benchmark and the tests use
// it as a tool with a large, known stdout.
func Datagen(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("datagen", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	size := fs.String("bytes", "1MiB", "how many bytes to write (a number, or with a KiB, MiB or GiB suffix)")
	seed := fs.Int64("seed", 1, "seed of the generator (the same seed gives the same text)")
	if err := fs.Parse(args); err != nil {
		return errs.BadRequestf("datagen: %v (usage: datagen -bytes N -seed S)", err)
	}
	if fs.NArg() > 0 {
		return errs.BadRequestf("datagen: unexpected argument %q (usage: datagen -bytes N -seed S)", fs.Arg(0))
	}
	n, err := bytesize.Parse(*size)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if _, err := io.CopyN(bw, datagen.New(*seed), n); err != nil {
		return errs.Wrap(errs.Unavailable, err, "datagen: write")
	}
	if err := bw.Flush(); err != nil {
		return errs.Wrap(errs.Unavailable, err, "datagen: write")
	}
	return nil
}
