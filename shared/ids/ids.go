// Package ids validates every identifier that ends up in a NATS subject or a filesystem/object path, and
// makes new ones. Validation is deliberately strict: an id is one subject token and one path element.
package ids

import (
	"crypto/rand"
	"encoding/base32"
	"strings"
	"unicode/utf8"

	"troveng.dev/shared/errs"
)

// MaxLen is the longest id accepted.
const MaxLen = 64

// MaxKeyLen is the longest object key accepted (S3's own limit is 1024 bytes).
const MaxKeyLen = 1024

// Validate checks that id (naming a kind such as "instance", "job", "backup") is 1..64 characters of
// [A-Za-z0-9_-] starting with a letter or digit: safe as one NATS subject token and one path element.
func Validate(kind, id string) error {
	if id == "" {
		return errs.BadRequestf("%s id is empty", kind)
	}
	if len(id) > MaxLen {
		return errs.BadRequestf("%s id is %d characters long; the limit is %d", kind, len(id), MaxLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || (i > 0 && (c == '-' || c == '_'))
		if !ok {
			return errs.BadRequestf("%s id %q has %q at position %d; use letters, digits, '-' and '_' (not first)", kind, printable(id), rune(c), i)
		}
	}
	return nil
}

// ValidateKey checks an object key: 1..1024 bytes of UTF-8, '/' separates segments, no leading or trailing
// '/', no empty, "." or ".." segment, no control characters and no backslash.
func ValidateKey(key string) error {
	if key == "" {
		return errs.BadRequestf("object key is empty")
	}
	if len(key) > MaxKeyLen {
		return errs.BadRequestf("object key is %d bytes long; the limit is %d", len(key), MaxKeyLen)
	}
	if !utf8.ValidString(key) {
		return errs.BadRequestf("object key is not valid UTF-8")
	}
	if strings.HasPrefix(key, "/") {
		return errs.BadRequestf("object key %q starts with '/'; keys are relative", printable(key))
	}
	if strings.HasSuffix(key, "/") {
		return errs.BadRequestf("object key %q ends with '/'", printable(key))
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return errs.BadRequestf("object key %q contains a control character", printable(key))
		}
		if r == '\\' {
			return errs.BadRequestf("object key %q contains a backslash; use '/' as the separator", printable(key))
		}
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "":
			return errs.BadRequestf("object key %q has an empty segment ('//')", printable(key))
		case ".", "..":
			return errs.BadRequestf("object key %q has a %q segment", printable(key), seg)
		}
	}
	return nil
}

// ValidatePrefix checks a listing prefix: empty, or a key-like string that may end with '/'.
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := ValidateKey(strings.TrimSuffix(prefix, "/")); err != nil {
		return errs.BadRequestf("prefix: %s", errs.From(err).Message)
	}
	return nil
}

var enc = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// New returns a random id (130 bits, 26 characters of [0-9a-v]) that passes Validate.
func New() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return enc.EncodeToString(b[:])
}

// printable cuts a hostile value short and escapes it for messages.
func printable(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
