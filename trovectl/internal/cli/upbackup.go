package cli

import (
	"context"
	"os"
	"path/filepath"

	"troveng.dev/services/backup"
	"troveng.dev/services/restore"
	"troveng.dev/shared/datakey"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/telemetry"
)

// startBackupRestore starts the backup and restore services of the embedded stack, each on its own NATS
// identity. The stack's age identity (made on the first run, 0600, in <dataDir>/keys/backup.age) is what
// the restore service opens data keys with; the backup service gets only its public key.
func startBackupRestore(ctx context.Context, url, dataDir string, keys upKeys, tel *telemetry.Telemetry) (stop func(), ageFile string, err error) {
	ageFile = filepath.Join(dataDir, "keys", "backup.age")
	identity, err := ensureAgeIdentity(ageFile)
	if err != nil {
		return nil, ageFile, err
	}
	recipient, err := datakey.RecipientOf(identity)
	if err != nil {
		return nil, ageFile, err
	}
	bnc, err := connectAs(url, "trove-backup", keys.backup)
	if err != nil {
		return nil, ageFile, err
	}
	bs, err := backup.Start(ctx, bnc, tel, backup.Config{Recipients: recipient})
	if err != nil {
		bnc.Close()
		return nil, ageFile, err
	}
	rnc, err := connectAs(url, "trove-restore", keys.restore)
	if err != nil {
		_ = bs.Stop()
		bnc.Close()
		return nil, ageFile, err
	}
	rs, err := restore.Start(ctx, rnc, tel, restore.Config{Identities: identity})
	if err != nil {
		_ = bs.Stop()
		bnc.Close()
		rnc.Close()
		return nil, ageFile, err
	}
	return func() {
		_ = rs.Stop()
		_ = bs.Stop()
		rnc.Close()
		bnc.Close()
	}, ageFile, nil
}

// ensureAgeIdentity reads the age identity in path, making one first if there is none.
func ensureAgeIdentity(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		return string(b), nil
	} else if !os.IsNotExist(err) {
		return "", errs.Wrap(errs.BadRequest, err, "reading the stack's age identity")
	}
	identity, _, err := datakey.Generate()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", errs.Wrap(errs.BadRequest, err, "creating the keys directory")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", errs.Wrap(errs.BadRequest, err, "writing the stack's age identity")
	}
	if _, err := f.WriteString(identity + "\n"); err != nil {
		_ = f.Close()
		return "", errs.Wrap(errs.Internal, err, "writing the stack's age identity")
	}
	if err := f.Close(); err != nil {
		return "", errs.Wrap(errs.Internal, err, "writing the stack's age identity")
	}
	return identity, nil
}
