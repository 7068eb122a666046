#!/usr/bin/env bash
# The agent's own footprint on this host: CPU time and memory of `medic run` (release build,
# bundled playbooks, defaults) over a run of DURATION seconds (default 120).
# Usage: bash bench/agent_footprint.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-120}
cargo build --release -q
state=$(mktemp -d)
./target/release/medic run --state-dir "$state" 2>/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$state"' EXIT
sleep 5  # let start-up pass, then measure steady state
read -r t0 < <(awk '{print $14+$15}' "/proc/$pid/stat")
sleep "$duration"
read -r t1 < <(awk '{print $14+$15}' "/proc/$pid/stat")
hz=$(getconf CLK_TCK)
rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
hwm=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")
procs=$(ls /proc | grep -c '^[0-9]')
awk -v a="$t0" -v b="$t1" -v hz="$hz" -v d="$duration" -v rss="$rss" -v hwm="$hwm" -v n="$procs" 'BEGIN {
  printf "processes on host: %d\nCPU: %.2f%% of one core (%.1f ms per 1 s tick)\nRSS: %.1f MiB (peak %.1f MiB)\n",
    n, (b-a)/hz/d*100, (b-a)/hz/d*1000, rss/1024, hwm/1024 }'
kill -TERM "$pid"; wait "$pid" || true
./target/release/medic audit verify --state-dir "$state" >/dev/null && echo "audit chain: ok"
