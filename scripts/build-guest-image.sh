#!/usr/bin/env bash
# Builds the guest image localhost/trove-guest:dev from deploy/images/guest, only when its inputs changed.
# Runs scripts/setup-containers.sh first (Podman + base image here; nothing with a real Docker engine).
# With --check it then starts one guest per engine and checks that each engine answers.
#
# The image carries the label trove.guest.input-hash: a SHA-256 over the name and content of every file in
# the build context (Containerfile, entrypoint, ...) and the base image's name. An image whose label
# matches is current, and the build is skipped. TROVE_GUEST_REBUILD=1 forces a build.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONTEXT=$ROOT/deploy/images/guest
IMAGE=${TROVE_GUEST_IMAGE:-localhost/trove-guest:dev}
LABEL=trove.guest.input-hash
LOCAL_BASE=localhost/debian:bookworm

say() { printf '== build-guest-image: %s\n' "$*" >&2; }
die() { printf '!! build-guest-image: %s\n' "$*" >&2; exit 1; }

bash "$ROOT/scripts/setup-containers.sh" >&2
set -a
# shellcheck disable=SC1091
. "$ROOT/bin/containers.env"
set +a

# The engine setup-containers.sh chose: Docker when a real Docker engine answers, else Podman (the CLI
# directly, not through its socket: same storage, and podman build needs no Docker client).
if [ "${DOCKER_HOST:-}" = "unix://${TROVE_PODMAN_SOCK:-/run/podman/podman.sock}" ] || ! command -v docker >/dev/null; then
	engine=podman
else
	engine=docker
fi

# The base: the locally made one when it exists (always with Podman); with Docker, Debian's from the registry.
base=$LOCAL_BASE
if [ "$engine" = docker ] && ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
	base=docker.io/library/debian:bookworm
fi

hash=$(
	cd "$CONTEXT"
	{
		echo "base $base"
		find . -type f -print0 | LC_ALL=C sort -z | while IFS= read -r -d '' f; do
			printf 'file %s %s\n' "$f" "$(sha256sum <"$f" | cut -d' ' -f1)"
		done
	} | sha256sum | cut -d' ' -f1
)

current=$($engine image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null || true)
if [ "$current" = "$hash" ] && [ "${TROVE_GUEST_REBUILD:-0}" != 1 ]; then
	say "$IMAGE is current (input hash ${hash:0:12}); not rebuilding"
else
	say "building $IMAGE with $engine from $base (input hash ${hash:0:12}${current:+, was ${current:0:12}})"
	start=$(date +%s)
	args=(build --build-arg "BASE_IMAGE=$base" --label "$LABEL=$hash" -t "$IMAGE" -f "$CONTEXT/Containerfile")
	# Podman: never pull (there is no registry); docker format keeps metadata as Docker's would be.
	[ "$engine" = podman ] && args+=(--pull=never --format docker)
	$engine "${args[@]}" "$CONTEXT"
	size=$($engine image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%d MB", $1 / 1e6 }')
	say "built $IMAGE in $(($(date +%s) - start))s ($size)"
	# The image this build replaced keeps no tag; drop it so rebuilds do not fill the disk.
	$engine image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true
fi

# --check: start one guest per engine, wait until it answers, run the engine's own query inside it,
# report the time from `run` to answering, and remove the guest.
[ "${1:-}" = --check ] || exit 0
running=
trap '[ -z "$running" ] || $engine rm -f "$running" >/dev/null 2>&1' EXIT
check() { # check ENGINE QUERY-COMMAND...
	local e=$1 name t0 ready=
	shift
	name=trove-guest-check-$e-$$
	running=$name
	t0=$(date +%s.%N)
	$engine run -d --name "$name" -e "TROVE_ENGINE=$e" "$IMAGE" >/dev/null
	for _ in $(seq 600); do
		if $engine exec "$name" trove-guest-ready; then ready=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'); break; fi
		[ "$($engine inspect --format '{{.State.Running}}' "$name")" = true ] || break
		sleep 0.1
	done
	if [ -z "$ready" ]; then
		$engine logs "$name" 2>&1 | tail -20 >&2
		$engine rm -f "$name" >/dev/null
		die "$e guest did not answer within 60s (its log above)"
	fi
	say "$e answers ${ready}s after run: $($engine exec "$name" "$@" | head -1 | sed 's/^ *//')"
	$engine rm -f "$name" >/dev/null
	running=
}
check mariadb mariadb -N -e 'select version()'
check postgresql runuser -u postgres -- psql -X -A -t -c 'select version()'
check redis redis-cli ping
