#!/usr/bin/env bash
# Idle CPU of `medic run` on its defaults, per thread, and its per-tick cost as the node grows
# (docs/BENCHMARKS.md, "Idle CPU"). Root.
# Starts each binary of BINS (default: target/release/medic, built) live on its defaults
# (bundled playbooks, 1 s ticks, all four eBPF families; state dir, control socket and metrics
# port of its own), side by side so that they share the machine's noise, waits SETTLE seconds
# (default 60), then reads utime + stime of each thread from /proc/PID/task/*/stat over WINDOW
# seconds (default 120): each thread's share of a core and the total. Also the tick rate (woken
# ticks raise it above 1 a second: on a busy machine the eBPF sched family sees other processes
# run hot) and the mean sample time, from each one's /metrics.
# Then (SCALE=0 skips it) the per-tick cost with 0, 1,000 and 2,000 processes added, each with
# 10,000 loopback TCP connections (bench/lib/busy_node.sh), over SCALE_SECS (default 40) after
# 20 s: CPU per tick (utime + stime over the window / ticks) and the mean sample time.
# PERF=1 records a profile of the first binary over the idle window and prints its top symbols.
# Try it quickly: SETTLE=10 WINDOW=30 SCALE_SECS=20 bash bench/idle_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SETTLE=${SETTLE:-60} WINDOW=${WINDOW:-120} PERF=${PERF:-0} SCALE=${SCALE:-1} SCALE_SECS=${SCALE_SECS:-40}
if [ -z "${BINS:-}" ]; then
  cargo build --release -q -p medic
  BINS=./target/release/medic
fi
. bench/lib/measure.sh
. bench/lib/busy_node.sh
tmp=$(mktemp -d)
pids=() ports=() names=()
cleanup() {
  busy_stop
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
i=0
for bin in $BINS; do
  start_medic "$tmp/m$i" "$bin"
  pids+=("$medic_pid") ports+=("$medic_metrics") names+=("$bin")
  i=$((i + 1))
done
echo "machine: $(. /etc/os-release; echo "$PRETTY_NAME"), $(nproc) cores, kernel $(uname -r); $(ls /proc | grep -c '^[0-9]') processes; load $(cut -d' ' -f1-3 /proc/loadavg)"
hz=$(getconf CLK_TCK)
# "tid<TAB>name<TAB>ticks" per thread of PID (the name may hold spaces: cut at the last ')').
threads() {
  local t
  for t in /proc/"$1"/task/*; do
    sed -E 's/^([0-9]+) \((.*)\) (.*)$/\1\t\2\t\3/' "$t/stat" 2>/dev/null | awk -F'\t' '{ split($3, f, " "); print $1 "\t" $2 "\t" f[12] + f[13] }'
  done
}
m() { medic_metrics=${ports[$1]} metric "$2"; }
sleep "$SETTLE"
for i in "${!pids[@]}"; do
  threads "${pids[$i]}" >"$tmp/t0.$i"
  echo "$(m "$i" medic_tick_duration_seconds_count) $(m "$i" medic_sample_duration_seconds_sum)" >"$tmp/c0.$i"
done
w0=$(date +%s.%N)
if [ "$PERF" = 1 ]; then
  perf record -q -g -F 999 -o "$tmp/perf.data" -p "${pids[0]}" -- sleep "$WINDOW" >/dev/null 2>&1
else
  sleep "$WINDOW"
fi
w1=$(date +%s.%N)
for i in "${!pids[@]}"; do
  threads "${pids[$i]}" >"$tmp/t1.$i"
  echo "$(m "$i" medic_tick_duration_seconds_count) $(m "$i" medic_sample_duration_seconds_sum)" >"$tmp/c1.$i"
  echo
  echo "${names[$i]}: CPU over ${WINDOW} s after ${SETTLE} s, % of one core, per thread:"
  echo "| thread | CPU % |"
  echo "|---|---|"
  awk -F'\t' -v hz="$hz" -v w0="$w0" -v w1="$w1" '
    NR == FNR { t0[$1] = $3; next }
    { d = $3 - ($1 in t0 ? t0[$1] : 0); sum[$2] += d; all += d }
    END { for (n in sum) printf "| %s | %.3f |\n", n, sum[n] / hz / (w1 - w0) * 100; printf "| all | %.3f |\n", all / hz / (w1 - w0) * 100 }' \
    "$tmp/t0.$i" "$tmp/t1.$i"
  read -r tc0 ss0 <"$tmp/c0.$i"
  read -r tc1 ss1 <"$tmp/c1.$i"
  awk -v tc="$((tc1 - tc0))" -v ss0="$ss0" -v ss1="$ss1" -v w0="$w0" -v w1="$w1" 'BEGIN {
    printf "ticks: %.2f a second (more than 1: woken ticks), mean sample %.2f ms\n", tc / (w1 - w0), tc ? (ss1 - ss0) / tc * 1000 : 0 }'
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$PERF" = 1 ]; then
  echo
  echo "Top symbols of ${names[0]} (self):"
  perf report -q -i "$tmp/perf.data" --no-children --sort dso,sym -g none 2>/dev/null | grep -v '^$' | head -40
fi

[ "$SCALE" = 1 ] || exit 0
echo
echo "Per tick (each point over ${SCALE_SECS} s, after 20 s to settle):"
echo "| binary | load added | processes on the node | TCP sockets | ticks/s | CPU ms per tick | mean sample ms | CPU % of a core |"
echo "|---|---|---|---|---|---|---|---|"
for point in "0 10000" "1000 10000" "2000 10000"; do
  set -- $point
  busy_start "$(($1 + 10))" "$(( $1 > 0 ? 50 : 0 ))" "$2"
  sleep 20
  for i in "${!pids[@]}"; do
    echo "$(m "$i" medic_tick_duration_seconds_count) $(m "$i" medic_sample_duration_seconds_sum) $(cpu_ticks "${pids[$i]}")" >"$tmp/s0.$i"
  done
  v0=$(date +%s.%N)
  sleep "$SCALE_SECS"
  v1=$(date +%s.%N)
  np=$(ls /proc | grep -c '^[0-9]') ns=$(ss -tan | tail -n +2 | wc -l)
  for i in "${!pids[@]}"; do
    read -r tc0 ss0 c0 <"$tmp/s0.$i"
    tc1=$(m "$i" medic_tick_duration_seconds_count) ss1=$(m "$i" medic_sample_duration_seconds_sum) c1=$(cpu_ticks "${pids[$i]}")
    awk -v b="${names[$i]}" -v p="$1 processes, $2 connections" -v np="$np" -v ns="$ns" -v tc="$((tc1 - tc0))" -v ss0="$ss0" -v ss1="$ss1" \
      -v c="$((c1 - c0))" -v hz="$hz" -v w0="$v0" -v w1="$v1" 'BEGIN {
      printf "| %s | %s | %d | %d | %.2f | %.2f | %.2f | %.2f |\n", b, p, np, ns, tc / (w1 - w0), tc ? c / hz * 1000 / tc : 0,
        tc ? (ss1 - ss0) / tc * 1000 : 0, c / hz / (w1 - w0) * 100 }'
  done
  busy_stop
done
