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
mkdir -p "$(dirname "$DUMP")"
cargo bench ${PROFILE:+--profile $PROFILE} -p medic --bench recorder --no-run

. bench/lib/busy_node.sh
trap busy_stop EXIT
busy_start "$PROCS" "$SPINNERS" "$CONNS"
sleep 10
echo "load: ${#busy_pids[@]} processes started; $(ls /proc | grep -c '^[0-9]') processes on the node; $(ss -tn state established | wc -l) established TCP sockets"

MEDIC_BENCH_LIVE_SECS=$SECS MEDIC_BENCH_DUMP=$DUMP cargo bench ${PROFILE:+--profile $PROFILE} -p medic --bench recorder -- live
busy_stop
trap - EXIT
MEDIC_BENCH_DUMP=$DUMP cargo bench ${PROFILE:+--profile $PROFILE} -p medic --bench recorder -- dump
