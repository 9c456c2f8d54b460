package cli

import (
	"slices"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/guestclient"
	"troveng.dev/shared/natsauth"
)

// The NATS permission sets of the embedded stack's guest identities: the cli key's additions and the agent
// key (which lives here until the agent module declares its own; then `up` should take that). Tests run
// every guest command and a stand-in agent under them on a real server (guest_test.go).

// registryStream is the JetStream stream behind the registry KV bucket.
const registryStream = "KV_" + guestv1.RegistryBucket

// guestRegistryRead is what reading the registry takes: open the bucket and get a record (the callers' set,
// guestclient.CallerPublish, has these), and list the keys, which `guest ls` does: an ordered consumer with
// its clean-up and flow control.
func guestRegistryRead() []string {
	return []string{
		"$JS.API.STREAM.INFO." + registryStream,
		"$JS.API.DIRECT.GET." + registryStream + ".$KV." + guestv1.RegistryBucket + ".>",
		"$JS.API.CONSUMER.CREATE." + registryStream + ".*.$KV." + guestv1.RegistryBucket + ".>",
		"$JS.API.CONSUMER.DELETE." + registryStream + ".*",
		"$JS.FC." + registryStream + ".>",
	}
}

// cliPermissions is the client set (natsauth.ClientPermissions) plus what the guest commands need:
// requests to every guest's operations and the registry read and listed (never written).
func cliPermissions() natsauth.Permissions {
	p := natsauth.ClientPermissions()
	p.Publish = slices.Concat(p.Publish, guestclient.CallerPublish(), guestRegistryRead())
	slices.Sort(p.Publish)
	p.Publish = slices.Compact(p.Publish)
	return p
}

// agentPermissions is the set of the agents `trovectl guest start` runs against the embedded stack: serve
// the guest subjects and $SRV discovery, keep the registry (create the bucket, write and read records),
// call the storage service and stream to and from callers' inboxes. One identity is shared by every local
// guest, so an agent could serve another guest's subjects: a development stack's limit. A deployment gives
// each agent its own identity limited to trove.guest.<instance>.> and $KV.trove_guests.<instance>.
func agentPermissions() natsauth.Permissions {
	return natsauth.Permissions{
		Subscribe: []string{guestv1.Group("*") + ".>", "$SRV.>", "_INBOX.>"},
		Publish: slices.Concat([]string{
			"_INBOX.>",
			"trove.storage.v1.*",
			"$JS.API.INFO",
			"$JS.API.STREAM.CREATE." + registryStream,
			"$JS.API.STREAM.UPDATE." + registryStream,
			"$KV." + guestv1.RegistryBucket + ".*",
		}, guestRegistryRead()),
	}
}
