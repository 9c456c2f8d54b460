#!/usr/bin/env bash
# Makes this machine able to run guest containers, idempotently (a second run takes a second or two).
#
# With a real Docker engine (`docker info` answers and it is not Podman) it changes nothing and says so.
# Otherwise it sets up rootful Podman the way it works on these machines (see docs/guest-image.md):
#   1. apt packages podman, debootstrap, runc (and curl, to ask the socket);
#   2. /etc/containers/containers.conf: [containers] default_ulimits = [] (crun/runc cannot raise
#      RLIMIT_NOFILE here) and [engine] runtime = "runc" (crun rejects the hybrid cgroup layout);
#   3. the Docker-compatible API service on $TROVE_PODMAN_SOCK for testcontainers-go, left running;
#   4. the base image localhost/debian:bookworm, made with debootstrap and `podman import`,
#      because no registry can be reached;
#   5. host-port DNAT rules netavark left for containers that are gone are removed.
# Finally it prints the environment the tests need and writes it to bin/containers.env
# (`set -a; . bin/containers.env; set +a` in a script).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENV_FILE=${TROVE_CONTAINERS_ENV:-$ROOT/bin/containers.env}
SOCK=${TROVE_PODMAN_SOCK:-/run/podman/podman.sock}
PID_FILE=${SOCK%.sock}.trove.pid
LOG_FILE=/var/log/trove-podman-service.log
BASE_IMAGE=localhost/debian:bookworm
CONF=${TROVE_CONTAINERS_CONF:-/etc/containers/containers.conf} # overridable to test the merge

say() { printf '== setup-containers: %s\n' "$*" >&2; }
die() { printf '!! setup-containers: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

write_env() { # write_env KEY=VALUE... : the env file scripts source, and the same lines on stdout
	mkdir -p "$(dirname "$ENV_FILE")"
	{
		echo "# Written by scripts/setup-containers.sh: the environment tests need to reach the container engine."
		printf '%s\n' "$@"
	} >"$ENV_FILE.tmp"
	mv "$ENV_FILE.tmp" "$ENV_FILE"
	# shellcheck disable=SC2016 # the command is shown, not run
	say "environment for tests (also in $ENV_FILE;"' eval "$(scripts/setup-containers.sh)" exports it):'
	[ $# -eq 0 ] || printf 'export %s\n' "$@"
}

# A real Docker engine: nothing to do. DOCKER_HOST pointing at Podman's socket also answers `docker info`,
# so ask the server what it is.
if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; then
	server=$(timeout 20 docker version --format '{{range .Server.Components}}{{.Name}} {{end}}' 2>/dev/null || true)
	if ! grep -qi podman <<<"$server"; then
		say "a Docker engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null)); nothing to set up"
		if [ -n "${DOCKER_HOST:-}" ]; then write_env "DOCKER_HOST=$DOCKER_HOST"; else write_env; fi
		exit 0
	fi
fi

[ "$(id -u)" -eq 0 ] || die "Podman is set up rootful here: run as root (or start a Docker engine)"

# 1. Packages. `apt-get update` only when a package has no install candidate (fresh or stale lists).
t=$(now)
need=()
for p in podman debootstrap runc curl; do dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
	if apt-cache policy "${need[@]}" 2>/dev/null | grep -q 'Candidate: (none)' ||
		[ "$(apt-cache policy "${need[@]}" 2>/dev/null | grep -c 'Candidate:')" -lt ${#need[@]} ]; then
		say "apt-get update"
		apt-get update -qq
	fi
	say "apt-get install ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
		{ say "install failed; retrying after apt-get update"; apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
	say "packages installed in $(since "$t")"
fi

# 2. containers.conf: set two keys, keeping whatever else the file holds.
conf_set() { # conf_set SECTION KEY VALUE : replace KEY in [SECTION], add it there, or add the section
	local section=$1 key=$2 value=$3 tmp
	mkdir -p "$(dirname "$CONF")"
	touch "$CONF"
	tmp=$(mktemp "$CONF.XXXXXX")
	awk -v section="$section" -v key="$key" -v value="$value" '
		function flush() { if (insec && !done) { print key " = " value; done = 1 } }
		function depth(s,  t) { t = s; o = gsub(/\[/, "", t); t = s; c = gsub(/\]/, "", t); return o - c }
		skip > 0 { skip += depth($0); next } # rest of a multi-line value being replaced
		/^[[:space:]]*\[/ {
			h = $0; sub(/#.*/, "", h); gsub(/[][[:space:]]/, "", h)
			if (insec) flush()
			insec = (h == section); if (insec) seen = 1
			print; next
		}
		insec && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
			v = $0; sub(/^[^=]*=/, "", v); skip = depth(v)
			if (!done) { print key " = " value; done = 1 }
			next
		}
		{ print }
		END { if (insec) flush(); if (!seen) { if (NR) print ""; print "[" section "]"; print key " = " value } }
	' "$CONF" >"$tmp"
	if cmp -s "$tmp" "$CONF"; then rm -f "$tmp"; else chmod 644 "$tmp"; mv "$tmp" "$CONF"; say "set $key in [$section] of $CONF"; fi
}
conf_set containers default_ulimits '[]'
conf_set engine runtime '"runc"'

runtime=$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null || true)
[ "$runtime" = runc ] || die "podman uses OCI runtime '$runtime', not runc: a file in /etc/containers/containers.conf.d or \$CONTAINERS_CONF overrides $CONF"

# 3. The Docker-compatible API service, detached from this script so it outlives it.
sock_answers() { curl -fsS --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }
wait_sock() { for _ in $(seq 100); do sock_answers && return 0; sleep 0.1; done; return 1; }
service_alive() { # the pid file names a live `podman system service` (not a zombie, not a reused pid)
	local pid
	pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
	tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q 'podman system service'
}
if ! sock_answers; then
	t=$(now)
	if service_alive; then # started a moment ago, by another run of this script
		wait_sock || die "podman service (pid $(cat "$PID_FILE")) runs but $SOCK does not answer; see $LOG_FILE"
	else
		mkdir -p "$(dirname "$SOCK")"
		rm -f "$SOCK" # a socket file left by a service that died would make the new one fail to listen
		# Descriptors 3-9 closed: the service lives on after this script, and must not keep a lock the
		# caller holds (flock LOCK cmd runs cmd with the lock on fd 3).
		setsid nohup podman system service --time=0 "unix://$SOCK" >>"$LOG_FILE" 2>&1 </dev/null 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
		echo $! >"$PID_FILE"
		wait_sock || die "podman service did not answer on $SOCK within 10s; see $LOG_FILE"
		say "podman service started (pid $(cat "$PID_FILE"), $SOCK) in $(since "$t")"
	fi
fi

# 4. The base image, from Debian's own packages (the same mirror apt uses here).
if ! podman image exists "$BASE_IMAGE"; then
	t=$(now)
	mirror=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit } /^deb / && $3 ~ /\/debian\/?$/ { print $3; exit }' \
		/etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)
	mirror=${mirror:-http://deb.debian.org/debian}
	rootfs=$(mktemp -d /var/tmp/trove-debootstrap.XXXXXX)
	trap 'rm -rf "$rootfs"' EXIT
	say "debootstrap --variant=minbase bookworm from $mirror"
	debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
		{ tail -20 "$rootfs.log" >&2; die "debootstrap failed (log above)"; }
	rm -f "$rootfs.log"
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
	tar -C "$rootfs" -c . | podman import -q --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
	rm -rf "$rootfs"
	trap - EXIT
	say "base image $BASE_IMAGE built in $(since "$t") ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{ printf "%d MB", $1 / 1e6 }'))"
fi

# 5. Host-port DNAT rules that netavark left behind for containers that no longer exist. They send every
#    local connection to their port to a dead container address, so a test server that later binds such a
#    port is unreachable ("dial tcp 127.0.0.1:PORT: i/o timeout"). Only rules whose container is gone go.
if command -v iptables >/dev/null && iptables -t nat -S NETAVARK-HOSTPORT-DNAT >/dev/null 2>&1; then
	live=" $(podman ps -a -q --no-trunc | tr '\n' ' ') "
	stale=0
	while IFS= read -r rule; do
		id=$(sed -n 's/.* id: \([0-9a-f]\{64\}\).*/\1/p' <<<"$rule")
		[ -n "$id" ] && [[ $live != *" $id "* ]] || continue
		eval "set -- ${rule#-A }" # the rule as iptables printed it, quotes and all, back into words
		iptables -t nat -D "$@" && stale=$((stale + 1))
	done < <(iptables -t nat -S NETAVARK-HOSTPORT-DNAT | grep '^-A ')
	[ "$stale" -eq 0 ] || say "removed $stale stale host-port DNAT rules of containers that are gone"
fi

say "podman $(podman version --format '{{.Client.Version}}') ready (runtime runc, socket $SOCK, base $BASE_IMAGE)"
write_env "DOCKER_HOST=unix://$SOCK" "TESTCONTAINERS_RYUK_DISABLED=true"
