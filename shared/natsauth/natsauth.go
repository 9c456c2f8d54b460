// Package natsauth holds what least-privilege NATS identities need: a permission set per identity (the
// subjects it may publish to and subscribe to), NKey user keys kept in seed files, and the client option
// that connects with one. Each service defines its own permission set next to the code that uses the
// subjects (e.g. storage.Permissions); ClientPermissions is the set of a control-plane client (trovectl).
package natsauth

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"troveng.dev/shared/errs"
)

// Permissions is what one identity may do on NATS. Subjects may use the * and > wildcards. An empty allow
// list allows nothing (unlike nats-server, where an absent list allows everything): an identity gets exactly
// the subjects listed. Deny lists narrow the allow lists (a subject matching both is denied).
type Permissions struct {
	Publish       []string `json:"publish"`
	Subscribe     []string `json:"subscribe"`
	PublishDeny   []string `json:"publish_deny,omitempty"`
	SubscribeDeny []string `json:"subscribe_deny,omitempty"`
}

// Validate checks that every subject is a valid NATS subject (wildcards allowed).
func (p Permissions) Validate() error {
	for _, list := range []struct {
		name     string
		subjects []string
	}{{"publish", p.Publish}, {"subscribe", p.Subscribe}, {"publish deny", p.PublishDeny}, {"subscribe deny", p.SubscribeDeny}} {
		for _, s := range list.subjects {
			if !server.IsValidSubject(s) {
				return errs.BadRequestf("NATS permissions: %s subject %q is not a valid subject", list.name, s)
			}
		}
	}
	return nil
}

// Server is p in nats-server's form, for an embedded server's NKey users or a server configuration.
func (p Permissions) Server() *server.Permissions {
	return &server.Permissions{
		Publish:   subjectPermission(p.Publish, p.PublishDeny),
		Subscribe: subjectPermission(p.Subscribe, p.SubscribeDeny),
	}
}

// subjectPermission keeps "nothing allowed" meaning nothing: nats-server reads an empty allow list as
// "everything", so an empty list becomes a deny of every subject.
func subjectPermission(allow, deny []string) *server.SubjectPermission {
	sp := &server.SubjectPermission{Allow: slices.Clone(allow), Deny: slices.Clone(deny)}
	if len(allow) == 0 {
		sp.Allow = nil
		sp.Deny = []string{">"}
	}
	return sp
}

// ClientPermissions is the set of a control-plane client (trovectl, an orchestrator): it sends requests to
// every family's v1 endpoints and to $SRV discovery, streams bytes to and from services' inboxes, and
// follows job events. It cannot serve a family's subjects (so cannot impersonate a service) and cannot
// touch JetStream: job state is read through the services.
func ClientPermissions() Permissions {
	return Permissions{
		Publish:   []string{"trove.*.v1.*", "$SRV.>", "_INBOX.>"},
		Subscribe: []string{"_INBOX.>", "trove.*.v1.jobs.>"},
	}
}

// User is an NKey user a server lets in: its public key (starts with U) and what it may do.
type User struct {
	Name        string // for messages and logs only
	PublicKey   string
	Permissions Permissions
}

// NewUserKey creates a user NKey pair and returns its public key and seed. The seed is the secret: write it
// with WriteSeed and never log it.
func NewUserKey() (publicKey string, seed []byte, err error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return "", nil, errs.Wrap(errs.Internal, err, "creating an NKey user")
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", nil, errs.Wrap(errs.Internal, err, "creating an NKey user")
	}
	s, err := kp.Seed()
	if err != nil {
		return "", nil, errs.Wrap(errs.Internal, err, "creating an NKey user")
	}
	return pub, bytes.Clone(s), nil // Wipe clears the key pair's own copy

}

// WriteSeed writes a user seed to path with mode 0600, creating its directory (and missing parents) with
// mode 0700; an existing directory keeps its mode. It refuses to overwrite an existing file, so a key in
// use is never replaced by accident.
func WriteSeed(path string, seed []byte) error {
	if _, err := nkeys.FromSeed(seed); err != nil || !bytes.HasPrefix(seed, []byte("SU")) {
		return errs.BadRequestf("not an NKey user seed; refusing to write %s", path)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return errs.Wrap(errs.BadRequest, err, "creating the NKey directory")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return errs.Wrap(errs.Conflict, err, "NKey seed file exists; remove it first to replace the key")
		}
		return errs.Wrap(errs.BadRequest, err, "writing the NKey seed file")
	}
	_, werr := f.Write(append(slices.Clone(seed), '\n'))
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(path)
		return errs.Wrap(errs.Internal, werr, "writing the NKey seed file %s", path)
	}
	return nil
}

// ReadSeed reads a user seed file (a bare seed, as WriteSeed and `nk -gen user` write, or a decorated
// one) and returns its public key.
func ReadSeed(path string) (publicKey string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", errs.Wrap(errs.BadRequest, err, "reading the NKey seed file")
	}
	defer clear(b)
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		// The parser's message never contains the seed, but keep to the file name to be sure.
		return "", errs.BadRequestf("%s holds no valid NKey user seed", path)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", errs.BadRequestf("%s holds no valid NKey user seed", path)
	}
	return pub, nil
}

// EnsureSeed returns the public key of the seed in path, creating the key (and the file, mode 0600) first
// when the file does not exist. Keys made once are kept, so clients configured with them keep working.
func EnsureSeed(path string) (publicKey string, err error) {
	if _, err := os.Stat(path); err == nil {
		return ReadSeed(path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", errs.Wrap(errs.BadRequest, err, "NKey seed file")
	}
	pub, seed, err := NewUserKey()
	if err != nil {
		return "", err
	}
	defer clear(seed)
	if err := WriteSeed(path, seed); err != nil {
		return "", err
	}
	return pub, nil
}

// SeedOption is the connect option that authenticates as the NKey user whose seed is in path. The seed is
// read now to check it and again for each (re)connect's signature; it is not kept in memory.
func SeedOption(path string) (nats.Option, error) {
	if _, err := ReadSeed(path); err != nil {
		return nil, err
	}
	opt, err := nats.NkeyOptionFromSeed(path)
	if err != nil {
		return nil, errs.BadRequestf("%s holds no valid NKey user seed", path)
	}
	return opt, nil
}

// IsAuthError tells whether a connect failed because the server refused the identity (no, unknown or
// wrong credentials), which retrying will not fix.
func IsAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired) ||
		(err != nil && strings.Contains(strings.ToLower(err.Error()), "authorization violation"))
}
