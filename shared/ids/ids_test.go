package ids

import (
	"strings"
	"testing"

	"troveng.dev/shared/errs"
)

func TestValidate(t *testing.T) {
	good := []string{"a", "db1", "Z9", "inst-01", "backup_2026_11_25", strings.Repeat("x", MaxLen), New()}
	for _, id := range good {
		if err := Validate("instance", id); err != nil {
			t.Errorf("Validate(%q) = %v, want nil", id, err)
		}
	}
	bad := []string{"", "a.b", "*", ">", "a*", "a>", "a/b", "../x", "a b", "-a", "_a", "a\x00", "a\n", "é", "$SRV",
		strings.Repeat("x", MaxLen+1)}
	for _, id := range bad {
		err := Validate("instance", id)
		if !errs.Is(err, errs.BadRequest) {
			t.Errorf("Validate(%q) = %v, want bad_request", id, err)
		}
		if err != nil && !strings.Contains(err.Error(), "instance id") {
			t.Errorf("Validate(%q) error does not name the kind: %v", id, err)
		}
	}
}

func TestValidateKey(t *testing.T) {
	good := []string{"a", "backups/db1/full.bin", "unicode/ключ/数据", "dots.in.names/x..y", "a/.hidden", strings.Repeat("k", MaxKeyLen)}
	for _, k := range good {
		if err := ValidateKey(k); err != nil {
			t.Errorf("ValidateKey(%q) = %v, want nil", k, err)
		}
	}
	bad := []string{"", "/abs", "tail/", "a//b", "./a", "a/./b", "..", "../etc/passwd", "a/../b", "a/..", "ctl\x01", "nul\x00",
		"del\x7f", "c1\u0085", "back\\slash", "bad\xffutf8", strings.Repeat("k", MaxKeyLen+1)}
	for _, k := range bad {
		if err := ValidateKey(k); !errs.Is(err, errs.BadRequest) {
			t.Errorf("ValidateKey(%q) = %v, want bad_request", k, err)
		}
	}
}

func TestValidatePrefix(t *testing.T) {
	for _, p := range []string{"", "a", "a/", "backups/db1/"} {
		if err := ValidatePrefix(p); err != nil {
			t.Errorf("ValidatePrefix(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"/", "../", "a//", "/a/"} {
		if err := ValidatePrefix(p); !errs.Is(err, errs.BadRequest) {
			t.Errorf("ValidatePrefix(%q) = %v, want bad_request", p, err)
		}
	}
}

func TestNewIsUniqueAndValid(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := New()
		if err := Validate("job", id); err != nil {
			t.Fatal(err)
		}
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
	}
}

func TestHostileValueIsCutInMessages(t *testing.T) {
	err := Validate("backup", strings.Repeat("a", 500)+".")
	if err == nil || len(err.Error()) > 300 {
		t.Fatalf("message should be bounded: %d bytes", len(err.Error()))
	}
}
