#!/usr/bin/env bash
# Builds the guest image localhost/trove-guest:dev from deploy/images/guest, only when its inputs changed.
# Runs scripts/setup-containers.sh first (Podman + base image here; nothing with a real Docker engine).
# With --check it then starts one guest per engine (shared/testkit/cmd/guestcheck: NATS, the guest, its
# registration) and waits until each agent is registered with its engine healthy.
#
# The agent binary is built first (CGO_ENABLED=0, static) into deploy/images/guest/.build/ (ignored by
# git), which the Containerfile copies in its last layer.
#
# The image carries the label trove.guest.input-hash: a SHA-256 over the base image's name, the name and
# content of every file in the build context (Containerfile, ...; not .build/) and of the agent's inputs
# (the Go files of this repository's packages it is built from, and go.mod/go.sum). An image whose label
# matches is current, and both builds are skipped. TROVE_GUEST_REBUILD=1 forces a build.
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

# What the image is made of. Paths are relative to the repository so that the hash does not depend on
# where the clone lives. The agent's inputs are the Go files of every package of this repository that the
# binary is built from (`go list -deps`, as CGO_ENABLED=0 selects them) and the modules' go.mod/go.sum, so a
# change anywhere else in shared/ does not rebuild the image.
agent_inputs() {
	GOWORK=off CGO_ENABLED=0 go -C "$ROOT/agent" list -deps -f \
		'{{with .Module}}{{if or (eq .Path "troveng.dev/agent") (eq .Path "troveng.dev/shared")}}{{range $.GoFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{range $.EmbedFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{end}}{{end}}' \
		./cmd/trove-agent
	printf '%s\n' "$ROOT"/agent/go.mod "$ROOT"/agent/go.sum "$ROOT"/shared/go.mod "$ROOT"/shared/go.sum
}
inputs=$(agent_inputs) || die "go list of the agent's packages failed (output above)"
hash=$(
	cd "$ROOT"
	{
		echo "base $base"
		{
			find deploy/images/guest -path deploy/images/guest/.build -prune -o -type f -print
			sed "s|^$ROOT/||" <<<"$inputs"
		} | while IFS= read -r f; do [ ! -f "$f" ] || echo "$f"; done | LC_ALL=C sort -u |
			while IFS= read -r f; do printf 'file %s %s\n' "$f" "$(sha256sum <"$f" | cut -d' ' -f1)"; done
	} | sha256sum | cut -d' ' -f1
)

current=$($engine image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null || true)
if [ "$current" = "$hash" ] && [ "${TROVE_GUEST_REBUILD:-0}" != 1 ]; then
	say "$IMAGE is current (input hash ${hash:0:12}); not rebuilding"
else
	say "building $IMAGE with $engine from $base (input hash ${hash:0:12}${current:+, was ${current:0:12}})"
	start=$(date +%s)
	# The agent: static, so it runs on any base; -trimpath keeps build paths out of the binary. GOWORK=off
	# builds it from agent/go.mod alone, as its tests do.
	mkdir -p "$CONTEXT/.build"
	GOWORK=off CGO_ENABLED=0 go -C "$ROOT/agent" build -trimpath -buildvcs=false -ldflags='-s -w' \
		-o "$CONTEXT/.build/trove-agent.tmp" ./cmd/trove-agent
	mv "$CONTEXT/.build/trove-agent.tmp" "$CONTEXT/.build/trove-agent"
	say "agent built in $(($(date +%s) - start))s ($(du -h "$CONTEXT/.build/trove-agent" | cut -f1))"
	args=(build --build-arg "BASE_IMAGE=$base" --label "$LABEL=$hash" -t "$IMAGE" -f "$CONTEXT/Containerfile")
	# Podman: never pull (there is no registry); docker format keeps metadata as Docker's would be.
	[ "$engine" = podman ] && args+=(--pull=never --format docker)
	$engine "${args[@]}" "$CONTEXT"
	size=$($engine image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%d MB", $1 / 1e6 }')
	say "built $IMAGE in $(($(date +%s) - start))s ($size)"
	# The image this build replaced keeps no tag; drop it so rebuilds do not fill the disk.
	$engine image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true
fi

# --check: one guest per engine against an in-process NATS (the test kit), until each agent is registered
# and its engine healthy; prints the time from start to healthy and the engine's version.
[ "${1:-}" = --check ] || exit 0
TROVE_GUEST_IMAGE=$IMAGE GOWORK=off go -C "$ROOT/shared" run ./testkit/cmd/guestcheck mariadb postgresql redis
