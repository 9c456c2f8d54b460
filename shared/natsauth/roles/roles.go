// Package roles builds the least-privilege NATS permission sets of the kinds of services the project has,
// from the subjects each shared client declares it needs, so no service spells them out again.
package roles

import (
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/natsauth"
	"troveng.dev/shared/storageclient"
)

// GuestDriver is the set of a service of family that runs jobs which drive guests' agents and use the
// storage service (backup, restore, replication, cluster): its own endpoints and jobs, requests to storage
// and to agents, reads of the guest registry. It can't write the registry, answer as a guest or as storage,
// or touch another family's jobs.
func GuestDriver(family string) natsauth.Permissions {
	pub := append([]string{"_INBOX.>"}, jobs.RunnerPublish(family)...)
	pub = append(pub, storageclient.CallerPublish()...)
	pub = append(pub, guestclient.CallerPublish()...)
	return natsauth.Permissions{
		Publish: pub,
		Subscribe: []string{
			"trove." + family + ".v1.>", // the endpoints (queue group trove-<family>)
			"$SRV.>",                    // discovery
			"_INBOX.>",                  // replies, stream inboxes
		},
	}
}
