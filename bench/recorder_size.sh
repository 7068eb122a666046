#!/usr/bin/env bash
# The flight recorder's size per hour on a REAL busy node (docs/BENCHMARKS.md, "Flight
# recorder"): loads this machine with PROCS processes (SPINNERS of them busy at duty cycles from
# 0.2 % to 2 % of a core each, 10 of them holding CONNS loopback TCP connections between them,
# the rest sleeping), then samples it with the agent's sampler (eBPF if it loads; run as root)
# at 1 s for SECS seconds, records it, and saves the snapshots to DUMP; then records the saved
# run again with this build's format and prints where the bytes go. Every process it starts is
# ended by its pid on exit. PROFILE=dev builds the bench unoptimised (quick to build; the sizes
# are the same, the CPU figures are not). Rerun the breakdown alone on a saved run:
#   MEDIC_BENCH_DUMP=target/recsize/busy.snaps cargo bench -p medic --bench recorder -- dump
set -euo pipefail
cd "$(dirname "$0")/.."
PROCS=${PROCS:-2000} SPINNERS=${SPINNERS:-100} CONNS=${CONNS:-10000} SECS=${SECS:-600}
DUMP=$(realpath -m "${DUMP:-target/recsize/busy.snaps}")
HOLDERS=10
mkdir -p "$(dirname "$DUMP")"
cargo bench ${PROFILE:+--profile $PROFILE} -p medic --bench recorder --no-run

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

# Spinners: busy for d ms of every 100 ms, d from 0.2 to 2.
for i in $(seq 0 $((SPINNERS - 1))); do
  python3 -c '
import sys, time
d = float(sys.argv[1]) / 1000
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < d: pass
    time.sleep(0.1 - d)' "$(awk -v i="$i" -v n="$SPINNERS" 'BEGIN { printf "%.2f", 0.2 + 1.8 * i / (n > 1 ? n - 1 : 1) }')" &
  pids+=($!)
done
# Connection holders: CONNS / HOLDERS connections each (both ends in the same process).
per=$((CONNS / HOLDERS))
for i in $(seq 1 $HOLDERS); do
  python3 -c '
import resource, signal, socket, sys
n = int(sys.argv[1])
limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1024)
keep = []
for _ in range(n):
    keep.append(socket.create_connection(l.getsockname())); keep.append(l.accept()[0])
signal.pause()' "$per" &
  pids+=($!)
done
# Sleepers for the rest.
for i in $(seq 1 $((PROCS - SPINNERS - HOLDERS))); do
  sleep infinity &
  pids+=($!)
done
sleep 10
echo "load: ${#pids[@]} processes started; $(ls /proc | grep -c '^[0-9]') processes on the node; $(ss -tn state established | wc -l) established TCP sockets"

MEDIC_BENCH_LIVE_SECS=$SECS MEDIC_BENCH_DUMP=$DUMP cargo bench ${PROFILE:+--profile $PROFILE} -p medic --bench recorder -- live
cleanup
trap - EXIT
MEDIC_BENCH_DUMP=$DUMP cargo bench ${PROFILE:+--profile $PROFILE} -p medic --bench recorder -- dump
