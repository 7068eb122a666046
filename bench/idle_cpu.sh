#!/usr/bin/env bash
# Idle CPU of `medic run` on its defaults, per thread (docs/BENCHMARKS.md, "Idle CPU").
# Root. Starts medic live on its defaults (bundled playbooks, 1 s ticks, all four eBPF
# families; state dir, control socket and metrics port of its own), waits SETTLE seconds
# (default 60), then reads utime + stime of each thread from /proc/PID/task/*/stat over WINDOW
# seconds (default 120) and prints each thread's share of a core and the total.
# Also the tick rate (woken ticks raise it above 1 a second: on a busy machine the eBPF sched
# family sees other processes run hot) and the mean sample time, from medic's /metrics.
# PERF=1 also records a profile over the window (perf record -g) and prints the top symbols.
# BIN= a medic binary to use instead of building target/release/medic.
set -euo pipefail
cd "$(dirname "$0")/.."
SETTLE=${SETTLE:-60} WINDOW=${WINDOW:-120} PERF=${PERF:-0}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p medic
  BIN=./target/release/medic
fi
. bench/lib/measure.sh
tmp=$(mktemp -d)
cleanup() {
  [ -n "${medic_pid:-}" ] && kill "$medic_pid" 2>/dev/null && wait "$medic_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
start_medic "$tmp/medic" "$BIN"
echo "medic $("$BIN" --version | head -1), pid $medic_pid"
echo "machine: $(. /etc/os-release; echo "$PRETTY_NAME"), $(nproc) cores, kernel $(uname -r); $(ls /proc | grep -c '^[0-9]') processes; load $(cut -d' ' -f1-3 /proc/loadavg)"
sleep "$SETTLE"
# tid name ticks, one line per thread (the name in field 2 may hold spaces: cut at the last ')').
threads() {
  local t
  for t in /proc/"$medic_pid"/task/*; do
    sed -E 's/^([0-9]+) \((.*)\) (.*)$/\1 \2\t\3/' "$t/stat" 2>/dev/null | awk -F'\t' '{ split($2, f, " "); sub(/ /, "\t", $1); print $1 "\t" f[12] + f[13] }'
  done
}
threads >"$tmp/t0"; w0=$(date +%s.%N)
tc0=$(metric medic_tick_duration_seconds_count) ss0=$(metric medic_sample_duration_seconds_sum)
if [ "$PERF" = 1 ]; then
  perf record -q -g -F 999 -o "$tmp/perf.data" -p "$medic_pid" -- sleep "$WINDOW" >/dev/null 2>&1
else
  sleep "$WINDOW"
fi
threads >"$tmp/t1"; w1=$(date +%s.%N)
tc1=$(metric medic_tick_duration_seconds_count) ss1=$(metric medic_sample_duration_seconds_sum)
hz=$(getconf CLK_TCK)
echo "CPU over ${WINDOW} s after ${SETTLE} s, % of one core, per thread:"
echo "| thread | CPU % |"
echo "|---|---|"
awk -F'\t' -v hz="$hz" -v w0="$w0" -v w1="$w1" '
  NR == FNR { t0[$1] = $3; next }
  { d = $3 - ($1 in t0 ? t0[$1] : 0); sum[$2] += d; all += d }
  END { for (n in sum) printf "| %s | %.3f |\n", n, sum[n] / hz / (w1 - w0) * 100; printf "| all | %.3f |\n", all / hz / (w1 - w0) * 100 }' \
  "$tmp/t0" "$tmp/t1"
awk -v tc="$((tc1 - tc0))" -v ss0="$ss0" -v ss1="$ss1" -v w0="$w0" -v w1="$w1" 'BEGIN {
  printf "ticks: %.2f a second (more than 1: woken ticks), mean sample %.2f ms\n", tc / (w1 - w0), tc ? (ss1 - ss0) / tc * 1000 : 0 }'
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$PERF" = 1 ]; then
  echo
  echo "Top symbols (self, children excluded):"
  perf report -q -i "$tmp/perf.data" --no-children --sort sym 2>/dev/null | grep -v '^$' | head -40
fi
