// Command backup runs one replica of the backup service.
//
//	backup -recipients-file /etc/trove/backup-recipients.txt
//
// Every backup's data key is wrapped for the age public keys in the recipients file (or TROVE_BACKUP_RECIPIENTS);
// the service never holds anything that can decrypt a backup.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go"

	"troveng.dev/services/backup"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/service"
	"troveng.dev/shared/telemetry"
)

func main() {
	var recipientsFile string
	direct := os.Getenv("TROVE_BACKUP_DIRECT") == "true"
	err := service.Main(service.Daemon{
		Family: backup.Family, Version: backup.Version,
		Flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&direct, "direct", direct, "agents move artifacts straight to and from object storage (the storage service's s3 strategy, presigned parts) where guests can reach it (env TROVE_BACKUP_DIRECT=true)")
			fs.StringVar(&recipientsFile, "recipients-file", os.Getenv("TROVE_BACKUP_RECIPIENTS_FILE"), "file of age public keys every data key is wrapped for (env TROVE_BACKUP_RECIPIENTS_FILE; or the keys in TROVE_BACKUP_RECIPIENTS)")
		},
		Start: func(ctx context.Context, nc *nats.Conn, tel *telemetry.Telemetry) (service.Running, error) {
			recipients := os.Getenv("TROVE_BACKUP_RECIPIENTS")
			if recipientsFile != "" {
				b, err := os.ReadFile(recipientsFile)
				if err != nil {
					return nil, errs.Wrap(errs.BadRequest, err, "read the recipients file")
				}
				recipients = string(b)
			}
			return backup.Start(ctx, nc, tel, backup.Config{Recipients: recipients, Direct: direct})
		},
	})
	if err != nil {
		slog.Error("backup service failed", "error", err)
		os.Exit(1)
	}
}
