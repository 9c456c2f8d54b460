package agent

import (
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/contract/storagev1"
	"troveng.dev/shared/natsauth"
)

// Permissions is the least-privilege NATS permission set of the agent of one guest. Its connection must
// use InboxPrefix(instance) (nats.CustomInboxPrefix), so that it subscribes to its own inboxes only.
//
//   - subscribe: its own endpoints (trove.guest.<instance>.>), $SRV discovery of trove-guest, and its own
//     inboxes (replies to its requests, its stdin and extract stream receivers, its senders' control).
//   - publish: _INBOX.> (replies to callers, stdout streams to callers' receivers, stream traffic to the
//     storage service's receivers); the storage service's transfer endpoints only (put, get, direct and staged; no delete, list, copy,
//     verify or jobs); and in the registry bucket its own key only, plus opening and creating the bucket.
//
// Found by running every operation under it against a real server (permissions_test.go), which also checks
// what it refuses. docs/guest-agent.md prints the result.
func Permissions(instance string) natsauth.Permissions {
	kvStream := "KV_" + guestv1.RegistryBucket
	return natsauth.Permissions{
		Publish: []string{
			"_INBOX.>",
			storagev1.Subject(storagev1.EndpointPut),
			storagev1.Subject(storagev1.EndpointGet),
			storagev1.Subject(storagev1.EndpointPutDirect),
			storagev1.Subject(storagev1.EndpointPresignParts),
			storagev1.Subject(storagev1.EndpointCompleteDirect),
			storagev1.Subject(storagev1.EndpointAbortDirect),
			storagev1.Subject(storagev1.EndpointGetDirect),
			storagev1.Subject(storagev1.EndpointStagedBegin),
			storagev1.Subject(storagev1.EndpointStagedStatus),
			storagev1.Subject(storagev1.EndpointStagedAppend),
			storagev1.Subject(storagev1.EndpointStagedComplete),
			storagev1.Subject(storagev1.EndpointStagedAbort),
			// Registry: the account info (the KV client asks for it before it creates a bucket), open and
			// create the bucket, and write its own key (a put is a publish to it).
			"$JS.API.INFO",
			"$JS.API.STREAM.INFO." + kvStream,
			"$JS.API.STREAM.CREATE." + kvStream,
			"$KV." + guestv1.RegistryBucket + "." + instance,
		},
		Subscribe: []string{
			guestv1.Group(instance) + ".>",
			"$SRV.*",
			"$SRV.*.trove-guest",
			"$SRV.*.trove-guest.*",
			InboxPrefix(instance) + ".>",
		},
	}
}
