// Package bytesize reads byte counts as flags, options and environment variables give them.
package bytesize

import (
	"math"
	"strconv"
	"strings"

	"troveng.dev/shared/errs"
)

var units = []struct {
	suffix string
	mult   int64
}{
	// Longest first, so "GiB" is not read as "B".
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3},
	{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1},
}

// Parse reads a non-negative byte count: an integer with an optional suffix, KiB, MiB, GiB, TiB (and K, M,
// G, T) in powers of 1024, KB, MB, GB, TB in powers of 1000, or B. A malformed or overflowing value is
// errs.BadRequest.
func Parse(s string) (int64, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if v, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(v), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, errs.BadRequestf("%q is not a byte count (e.g. 1048576, 64MiB, 2GiB)", s)
	}
	return n * mult, nil
}
