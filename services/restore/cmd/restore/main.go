// Command restore runs one replica of the restore service.
//
//	restore -identity-file /run/secrets/trove-restore.age
//
// The identity file holds the age identities (AGE-SECRET-KEY-1...) that open backups' data keys. It is a
// secret: mount it read-only for this service alone; it is never logged and never travels in a request.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go"

	"troveng.dev/services/restore"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/telemetry"
)

func main() {
	var identityFile string
	direct := os.Getenv("TROVE_RESTORE_DIRECT") == "true"
	err := service.Main(service.Daemon{
		Family: restore.Family, Version: restore.Version,
		Flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&direct, "direct", direct, "agents move artifacts straight to and from object storage (the storage service's s3 strategy, presigned parts) where guests can reach it (env TROVE_RESTORE_DIRECT=true)")
			fs.StringVar(&identityFile, "identity-file", os.Getenv("TROVE_RESTORE_IDENTITY_FILE"), "age identity file that opens backups' data keys (env TROVE_RESTORE_IDENTITY_FILE)")
		},
		Start: func(ctx context.Context, nc *nats.Conn, tel *telemetry.Telemetry) (service.Running, error) {
			var identities string
			if identityFile != "" {
				b, err := os.ReadFile(identityFile)
				if err != nil {
					return nil, errs.New(errs.BadRequest, "cannot read the identity file %s", identityFile)
				}
				identities = string(b)
			}
			return restore.Start(ctx, nc, tel, restore.Config{Identities: identities, Direct: direct})
		},
	})
	if err != nil {
		slog.Error("restore service failed", "error", err)
		os.Exit(1)
	}
}
