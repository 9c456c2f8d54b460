package agent

import (
	"bufio"
	"flag"
	"io"
	"strconv"
	"strings"

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
	n, err := ParseSize(*size)
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

// ParseSize reads a byte count: a non-negative integer, optionally with a KiB, MiB, GiB or TiB suffix
// (also K, M, G, T; powers of 1024).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, errs.BadRequestf("size %q is not a non-negative byte count (e.g. 1048576, 64MiB, 2GiB)", s)
	}
	return n * mult, nil
}
