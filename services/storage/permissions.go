package storage

import (
	"troveng.dev/services/storage/internal/backend"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/natsauth"
)

// Permissions is the least-privilege NATS permission set of a storage service replica. bucket is the Object
// Store bucket of the nats strategy when it stores through the service's own connection (Config.NATSBucket;
// "" for fs, s3, or a nats strategy with its own url and credentials).
//
// The set was found by running every operation under it against a real server and reading the permission
// violations, then removing each subject in turn to keep only those something fails without (the flow
// control, update and message-get subjects serve paths that need a large watch, strategy settings or a
// repeated submit; permissions_test.go exercises those too). The tests fail when the code starts to need a
// subject the set lacks. docs/operations.md prints the result.
func Permissions(bucket string) natsauth.Permissions {
	p := natsauth.Permissions{
		// Replies to requests, and stream data and control, go to the peer's inbox; then the job runner's.
		Publish: append([]string{"_INBOX.>"}, jobs.RunnerPublish(Family)...),
		Subscribe: []string{
			"trove." + Family + ".v1.>", // the endpoints (queue group trove-storage)
			"$SRV.>",                    // $SRV.PING|INFO|STATS discovery
			"_INBOX.>",                  // replies to its own requests, its stream inboxes
		},
	}
	if bucket != "" {
		obj := "OBJ_" + bucket
		p.Publish = append(p.Publish,
			// Object Store: open (info) or create the bucket, update it when replicas/max_bytes are set,
			// write chunks and metadata, read metadata (direct get) and chunks and lists (ordered consumers),
			// and purge an object's chunks on delete or overwrite.
			"$JS.API.STREAM.INFO."+obj,
			"$JS.API.STREAM.CREATE."+obj,
			"$JS.API.STREAM.UPDATE."+obj,
			"$JS.API.STREAM.PURGE."+obj,
			"$O."+bucket+".>",
			"$JS.API.DIRECT.GET."+obj+".$O."+bucket+".M.>",
			"$JS.API.CONSUMER.CREATE."+obj+".*.$O."+bucket+".>",
			"$JS.API.CONSUMER.DELETE."+obj+".*",
			"$JS.FC."+obj+".>",
		)
	}
	return p
}

// NATSBucket is the Object Store bucket the nats strategy of cfg stores into through the service's own
// connection, or "" when cfg needs none (another strategy, or the nats strategy on its own connection).
func (cfg Config) NATSBucket() string {
	if cfg.Strategy != "nats" || cfg.Options["url"] != "" {
		return ""
	}
	if b := cfg.Options["bucket"]; b != "" {
		return b
	}
	return backend.NATSDefaultBucket
}
