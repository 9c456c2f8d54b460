#!/usr/bin/env bash
# Storage benchmark (issue 2): the storage service's s3 and fs strategies against the transfer manager and
# plain files. Builds what it needs into bin/, prints the machine and Markdown tables (see docs/benchmarks.md).
#
#   bash scripts/bench-storage.sh                      # 1 GiB and 4 GiB, s3 and fs phases
#   bash scripts/bench-storage.sh -sizes 256MiB -runs 3 -phases s3
#
# Arguments go to storagebench (bin/storagebench -h lists them). The work directory (default under $TMPDIR)
# needs about 3x the largest size free.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/bin"
mkdir -p "$bin"
cd "$root"

go build -o "$bin/storage" ./services/storage/cmd/storage
go build -o "$bin/storagebench" ./services/storage/cmd/storagebench
gw="${TROVE_VERSITYGW:-$bin/versitygw}"
if [[ ! -x "$gw" ]]; then
	echo "building versitygw into $bin (about a minute, once)" >&2
	GOWORK=off go -C tools/versitygw build -o "$bin/versitygw" github.com/versity/versitygw/cmd/versitygw
	gw="$bin/versitygw"
fi

echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) memory, $(go version | cut -d' ' -f3), $(uname -sr)"
echo "Load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
"$bin/storagebench" -storage-bin "$bin/storage" -versitygw "$gw" "$@"
echo "Load after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
