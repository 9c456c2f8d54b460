#!/usr/bin/env bash
# Builds the benchmark-only guest image localhost/trove-guest-bench:dev (scripts/bench-image/Containerfile:
# the guest image plus age, openssl and pgBackRest for the engine benchmarks' baselines) FROM the guest
# image, which it builds first if needed (scripts/build-guest-image.sh). Skipped when current: the image's
# label trove.bench.input-hash is a SHA-256 of the base image's id and the Containerfile.
# TROVE_BENCH_REBUILD=1 forces a build. The production guest image is not changed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONTEXT=$ROOT/scripts/bench-image
BASE=${TROVE_GUEST_IMAGE:-localhost/trove-guest:dev}
IMAGE=${TROVE_BENCH_IMAGE:-localhost/trove-guest-bench:dev}
LABEL=trove.bench.input-hash

say() { printf '== build-bench-image: %s\n' "$*" >&2; }

bash "$ROOT/scripts/build-guest-image.sh" >&2
engine=podman
command -v podman >/dev/null || engine=docker

base_id=$($engine image inspect --format '{{.Id}}' "$BASE")
hash=$( { echo "base $base_id"; sha256sum <"$CONTEXT/Containerfile"; } | sha256sum | cut -d' ' -f1)
current=$($engine image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null || true)
if [ "$current" = "$hash" ] && [ "${TROVE_BENCH_REBUILD:-0}" != 1 ]; then
	say "$IMAGE is current (input hash ${hash:0:12}); not rebuilding"
	exit 0
fi
say "building $IMAGE from $BASE (input hash ${hash:0:12}${current:+, was ${current:0:12}})"
start=$(date +%s)
args=(build --build-arg "BASE_IMAGE=$BASE" --label "$LABEL=$hash" -t "$IMAGE" -f "$CONTEXT/Containerfile")
[ "$engine" = podman ] && args+=(--pull=never --format docker)
$engine "${args[@]}" "$CONTEXT"
say "built $IMAGE in $(($(date +%s) - start))s"
$engine image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true
