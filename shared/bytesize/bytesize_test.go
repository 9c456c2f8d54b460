package bytesize

import (
	"testing"

	"troveng.dev/shared/errs"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "1048576": 1 << 20, "64MiB": 64 << 20, "2GiB": 2 << 30, "1TiB": 1 << 40, "8K": 8 << 10,
		" 5 MiB ": 5 << 20, "4GB": 4e9, "512KB": 512e3, "100B": 100, "3G": 3 << 30,
	} {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5GiB", "GiB", "12XB", "9999999999TiB", "0x10"} {
		if _, err := Parse(in); !errs.Is(err, errs.BadRequest) {
			t.Errorf("Parse(%q): %v, want bad_request", in, err)
		}
	}
}
