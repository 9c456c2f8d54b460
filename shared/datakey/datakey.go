// Package datakey makes and wraps the per-artifact data keys of the framed format.
//
// Every backup gets a fresh random 32-byte AES-256-GCM key (frames derive their nonces from the frame
// number, which is only safe because no key is ever used for two artifacts). The key is wrapped for one or
// more age X25519 recipients and the wrapped form goes into the manifest: making a backup needs only public
// keys, restoring needs one matching identity. The plain key lives in memory for one job and is zeroed after.
package datakey

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"strings"

	"filippo.io/age"

	"troveng.dev/shared/errs"
)

// Size is the length of a data key (AES-256).
const Size = 32

// maxWrapped bounds a wrapped key read from a manifest (an age header per recipient plus 32 bytes).
const maxWrapped = 64 << 10

// New returns a fresh random data key.
func New() ([]byte, error) {
	k := make([]byte, Size)
	if _, err := rand.Read(k); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "reading random bytes for a data key")
	}
	return k, nil
}

// Zero overwrites a key in place once a job is done with it.
func Zero(k []byte) {
	for i := range k {
		k[i] = 0
	}
}

// Wrapped is a data key sealed for a set of recipients, as the manifest records it.
type Wrapped struct {
	// Age is the age-encrypted key, base64 (standard encoding) of the binary age file.
	Age string `json:"age"`
	// Recipients are the ids (RecipientID) of the public keys it was wrapped for: enough to tell an operator
	// which identity restores it, without the keys themselves.
	Recipients []string `json:"recipients"`
}

// RecipientID is a short, stable id of an age public key (first 16 hex digits of its SHA-256).
func RecipientID(recipient string) string {
	sum := sha256.Sum256([]byte(strings.TrimSpace(recipient)))
	return hex.EncodeToString(sum[:8])
}

// ParseRecipients reads age X25519 public keys ("age1..."), one per line or comma separated; blank lines and
// lines starting with '#' are skipped. At least one is required.
func ParseRecipients(text string) ([]*age.X25519Recipient, error) {
	var out []*age.X25519Recipient
	for _, f := range fields(text) {
		r, err := age.ParseX25519Recipient(f)
		if err != nil {
			return nil, errs.BadRequestf("not an age X25519 recipient (want a public key starting with age1): %q", short(f))
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, errs.BadRequestf("no age recipients given: a backup's data key must be wrapped for at least one public key")
	}
	return out, nil
}

// ParseIdentities reads age X25519 identities ("AGE-SECRET-KEY-1...") as an identity file holds them.
// Errors never quote the text (it is secret).
func ParseIdentities(text string) ([]*age.X25519Identity, error) {
	var out []*age.X25519Identity
	for i, f := range fields(text) {
		id, err := age.ParseX25519Identity(f)
		if err != nil {
			return nil, errs.BadRequestf("line %d of the identity is not an age X25519 identity (want AGE-SECRET-KEY-1...)", i+1)
		}
		out = append(out, id)
	}
	if len(out) == 0 {
		return nil, errs.BadRequestf("no age identity given: restoring needs the identity matching one of the backup's recipients")
	}
	return out, nil
}

// Wrap seals key for every recipient.
func Wrap(key []byte, recipients []*age.X25519Recipient) (Wrapped, error) {
	if len(key) != Size {
		return Wrapped{}, errs.BadRequestf("a data key is %d bytes, got %d", Size, len(key))
	}
	if len(recipients) == 0 {
		return Wrapped{}, errs.BadRequestf("no age recipients given")
	}
	rs := make([]age.Recipient, len(recipients))
	ids := make([]string, len(recipients))
	for i, r := range recipients {
		rs[i] = r
		ids[i] = RecipientID(r.String())
	}
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, rs...)
	if err != nil {
		return Wrapped{}, errs.Wrap(errs.Internal, err, "wrapping the data key")
	}
	if _, err := w.Write(key); err != nil {
		return Wrapped{}, errs.Wrap(errs.Internal, err, "wrapping the data key")
	}
	if err := w.Close(); err != nil {
		return Wrapped{}, errs.Wrap(errs.Internal, err, "wrapping the data key")
	}
	return Wrapped{Age: base64.StdEncoding.EncodeToString(buf.Bytes()), Recipients: ids}, nil
}

// Unwrap opens a wrapped key with any of the identities. A key wrapped for none of them is
// errs.Unauthorized ("wrong or missing decryption key"); a damaged wrapped key is errs.Corrupt.
func Unwrap(w Wrapped, identities []*age.X25519Identity) ([]byte, error) {
	if len(identities) == 0 {
		return nil, errs.New(errs.Unauthorized, "missing decryption key: restoring needs an age identity for one of recipients %v", w.Recipients)
	}
	if len(w.Age) > maxWrapped {
		return nil, errs.New(errs.Corrupt, "wrapped data key is %d bytes, more than any real one", len(w.Age))
	}
	raw, err := base64.StdEncoding.DecodeString(w.Age)
	if err != nil {
		return nil, errs.New(errs.Corrupt, "wrapped data key is not valid base64")
	}
	ids := make([]age.Identity, len(identities))
	for i, id := range identities {
		ids[i] = id
	}
	r, err := age.Decrypt(bytes.NewReader(raw), ids...)
	if err != nil {
		var noMatch *age.NoIdentityMatchError
		if errors.As(err, &noMatch) {
			return nil, errs.New(errs.Unauthorized, "wrong decryption key: the identity given matches none of recipients %v", w.Recipients)
		}
		return nil, errs.New(errs.Corrupt, "wrapped data key is damaged: %v", err)
	}
	key, err := io.ReadAll(io.LimitReader(r, Size+1))
	if err != nil {
		return nil, errs.New(errs.Corrupt, "wrapped data key is damaged: %v", err)
	}
	if len(key) != Size {
		Zero(key)
		return nil, errs.New(errs.Corrupt, "wrapped data key holds %d bytes, want %d", len(key), Size)
	}
	return key, nil
}

// Generate makes a new age identity and returns it with its public key (for `trovectl keys new`, tests and
// the embedded demo).
func Generate() (identity, recipient string, err error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", "", errs.Wrap(errs.Internal, err, "generating an age identity")
	}
	return id.String(), id.Recipient().String(), nil
}

func fields(text string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for _, f := range strings.Split(line, ",") {
			if f = strings.TrimSpace(f); f != "" {
				out = append(out, f)
			}
		}
	}
	return out
}

func short(s string) string {
	if len(s) > 24 {
		return s[:24] + "..."
	}
	return s
}

// RecipientOf returns the public key of an age identity (to wrap keys for an identity one holds).
func RecipientOf(identity string) (string, error) {
	ids, err := ParseIdentities(identity)
	if err != nil {
		return "", err
	}
	return ids[0].Recipient().String(), nil
}
