#!/usr/bin/env bash
# Engine backup and restore benchmarks (issue 4; not part of CI): a generated MariaDB and PostgreSQL
# database (default 1 GiB, then grown to 2 GiB) backed up through the services (storage with the s3
# strategy on versitygw, backup, restore, the guests' agents) and restored into a second guest, against
# local pipelines on the guest (mariadb-backup | zstd | age; Trove's gzip | openssl aes-256-cbc) and
# pgBackRest (zstd, process-max 2); with the peak RSS of every service and agent at each size. Prints the
# machine, the command and Markdown tables for docs/benchmarks.md ("Engine backup and restore").
#
#   scripts/bench-engines.sh                          # both engines, 1 GiB and 2 GiB
#   TROVE_BENCH_SIZES=256MiB scripts/bench-engines.sh BenchmarkEnginesMariaDB
#   TROVE_BENCH_BASELINES=0 scripts/bench-engines.sh  # services only
#
# Builds the bench image (scripts/build-bench-image.sh; the guest image first) and the service binaries
# into bin/. Holds /tmp/trove-integration.lock while it runs, as CI's integration tests do, so that heavy
# runs on this shared machine do not overlap.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bench=${1:-BenchmarkEngines}

bash "$ROOT/scripts/build-bench-image.sh" >&2
(cd "$ROOT" && go build -o bin/ ./services/storage/cmd/storage ./services/backup/cmd/backup ./services/restore/cmd/restore)

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/^Mem:/ { print $2 " GiB" }') RAM, $(uname -r), $(go version | cut -d' ' -f3)"
echo "== commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- services shared agent || echo ' (with uncommitted changes)'), sizes ${TROVE_BENCH_SIZES:-1GiB,2GiB}, image ${TROVE_BENCH_IMAGE:-localhost/trove-guest-bench:dev}"
cmd=(go test -tags integration -run '^$' -bench "^${bench}" -benchtime 1x -count 1 -timeout 90m -v .)
echo "== cd services/backup && flock -o /tmp/trove-integration.lock env GOWORK=off ${cmd[*]}"
cd "$ROOT/services/backup"
flock -o /tmp/trove-integration.lock env GOWORK=off "${cmd[@]}" 2>&1 | grep -v '^goos:\|^goarch:\|^pkg:\|^cpu:'
