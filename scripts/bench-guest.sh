#!/usr/bin/env bash
# Guest agent relay benchmark (issue 3; not part of CI): on one guest, in one run, a tool's 2 GiB of
# dump-like stdout (trove-agent datagen) relayed by the agent through the framed transform (zstd level 1,
# AES-256-GCM) into the storage service (fs strategy, in the test process), against the same tool piped
# locally on the guest through `zstd -1 -T0` into a file. Prints the machine, the command and the results
# (MB/s of each, their ratio, the agent's peak RSS) for docs/benchmarks.md ("Guest agent relay").
#
#   scripts/bench-guest.sh                 # 3 alternating rounds (TROVE_BENCH_ROUNDS to change)
#
# Needs the guest image (go tool task image:guest; the task bench:guest builds it first).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT/agent"

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/^Mem:/ { print $2 " GiB" }') RAM, $(uname -r)"
echo "== image: ${TROVE_GUEST_IMAGE:-localhost/trove-guest:dev}, rounds: ${TROVE_BENCH_ROUNDS:-3}, $(go version | cut -d' ' -f3)"
cmd=(go test -tags integration -run '^$' -bench '^BenchmarkGuestRelay$' -benchtime 1x -count 1 -timeout 40m -v .)
echo "== cd agent && GOWORK=off ${cmd[*]}"
GOWORK=off "${cmd[@]}" 2>&1 | grep -v '^goos:\|^goarch:\|^pkg:\|^cpu:'
