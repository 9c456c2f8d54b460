package jobs

// RunnerPublish lists the subjects a job runner of family publishes to (see docs/jobs.md for why each):
// job events, the work queue stream and its one consumer, and the job records' KV bucket. A service's
// least-privilege set is these plus its own (services/*/permissions.go); they were found by running every
// job path under a real server with permissions and reading the violations (services/storage's
// permissions_test.go keeps them honest).
func RunnerPublish(family string) []string {
	kvBucket := BucketName(family)
	kvStream := "KV_" + kvBucket
	work := StreamName(family)
	workFilter := "trove.work." + family + ".>"
	return []string{
		// Job events.
		"trove." + family + ".v1.jobs.>",
		// JetStream account API level: the KV client asks for it before creating a bucket with TTLs.
		"$JS.API.INFO",
		// Job work queue: create or update the stream and its durable pull consumer, queue a job, fetch work,
		// ack / nak / in-progress / term it, read a queued job's message back on a repeated submit.
		"$JS.API.STREAM.CREATE." + work,
		"$JS.API.STREAM.UPDATE." + work,
		"$JS.API.STREAM.MSG.GET." + work,
		"$JS.API.CONSUMER.CREATE." + work + "." + ConsumerName + "." + workFilter,
		"$JS.API.CONSUMER.MSG.NEXT." + work + "." + ConsumerName,
		"$JS.ACK." + work + ".>",
		workFilter,
		// Job records (KV): create or update the bucket, write records, read them (direct get), watch them.
		"$JS.API.STREAM.CREATE." + kvStream,
		"$JS.API.STREAM.UPDATE." + kvStream,
		"$KV." + kvBucket + ".>",
		"$JS.API.DIRECT.GET." + kvStream + ".$KV." + kvBucket + ".>",
		"$JS.API.CONSUMER.CREATE." + kvStream + ".*.$KV." + kvBucket + ".>",
		"$JS.API.CONSUMER.DELETE." + kvStream + ".*",
		"$JS.FC." + kvStream + ".>",
	}
}
