#!/usr/bin/env bash
# Footprint of medic against Monit, side by side in one run (docs/BENCHMARKS.md, "Footprint").
# Root. Starts `medic run` live on its defaults (bundled playbooks, 1 s ticks, all four eBPF
# families, state dir, control socket and metrics port of its own) and Monit (`set daemon 1`,
# its fastest cycle, watching a process, a filesystem and a host port) in the foreground,
# waits DURATION seconds (default 660: medic's signal history holds 600 s and fills for that
# long, so memory is read after it is full), then prints for both PSS and RSS
# (/proc/PID/smaps_rollup) and CPU % of a core over the window (utime + stime), and for medic
# its BPF maps one by one and their total bytes_memlock.
# Then the scaling points (SCALE=0 skips them): medic's mean tick and sample time (its /metrics
# histograms) and CPU over SCALE_SECS (default 60) on this node as it is, with 1,000 processes
# and 5,000 loopback TCP connections added, and with 2,000 and 10,000.
# Try it quickly: DURATION=60 SCALE_SECS=20 bash bench/footprint.sh
# Needs: monit, bpftool, curl (apt-get install -y monit bpftool curl). BIN= a medic binary to
# use instead of building target/release/medic.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-660} SCALE=${SCALE:-1} SCALE_SECS=${SCALE_SECS:-60}
for tool in monit bpftool curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y $tool" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p medic
  BIN=./target/release/medic
fi
. bench/lib/measure.sh
. bench/lib/busy_node.sh

tmp=$(mktemp -d)
monit_pid=
cleanup() {
  busy_stop
  [ -n "${medic_pid:-}" ] && kill "$medic_pid" 2>/dev/null && wait "$medic_pid" 2>/dev/null || true
  [ -n "$monit_pid" ] && kill "$monit_pid" 2>/dev/null && wait "$monit_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

start_medic "$tmp/medic" "$BIN"
echo "$medic_pid" >"$tmp/medic.pid"
cat >"$tmp/monitrc" <<CONF
set daemon 1
set pidfile $tmp/monit.pid
set idfile $tmp/monit.id
set statefile $tmp/monit.state
set logfile $tmp/monit.log
check process medic with pidfile $tmp/medic.pid
  if cpu > 90% for 5 cycles then alert
check filesystem root with path /
  if space usage > 95% then alert
check host metrics with address 127.0.0.1
  if failed port ${medic_metrics##*:} protocol http request "/metrics" then alert
CONF
chmod 600 "$tmp/monitrc"
monit -I -c "$tmp/monitrc" >"$tmp/monit.out" 2>&1 &
monit_pid=$!
sleep 5
kill -0 "$monit_pid" || { cat "$tmp/monit.out" >&2; exit 1; }

hz=$(getconf CLK_TCK)
echo "medic $("$BIN" --version | head -1), pid $medic_pid; $(monit -V | head -1), pid $monit_pid"
echo "machine: $(. /etc/os-release; echo "$PRETTY_NAME"), $(nproc) cores, kernel $(uname -r); $(ls /proc | grep -c '^[0-9]') processes"
m0=$(cpu_ticks "$medic_pid") n0=$(cpu_ticks "$monit_pid") t0=$(date +%s.%N)
echo "PSS over the window (KiB): medic / Monit"
left=$DURATION
while [ "$left" -gt 0 ]; do
  step=$((left < 60 ? left : 60))
  sleep "$step"
  left=$((left - step))
  echo "  +$((DURATION - left)) s: $(pss_kib "$medic_pid") / $(pss_kib "$monit_pid")"
done
m1=$(cpu_ticks "$medic_pid") n1=$(cpu_ticks "$monit_pid") t1=$(date +%s.%N)

row() { # name pid ticks0 ticks1
  awk -v n="$1" -v pss="$(pss_kib "$2")" -v rss="$(rss_kib "$2")" -v anon="$(anon_kib "$2")" \
    -v a="$3" -v b="$4" -v hz="$hz" -v t0="$t0" -v t1="$t1" 'BEGIN {
    printf "| %s | %.1f | %.1f | %.1f | %.2f |\n", n, pss / 1024, anon / 1024, rss / 1024, (b - a) / hz / (t1 - t0) * 100 }'
}
echo
echo "After ${DURATION} s:"
echo "| | PSS MiB | of it anonymous | RSS MiB | CPU % of a core |"
echo "|---|---|---|---|---|"
row medic "$medic_pid" "$m0" "$m1"
row "Monit" "$monit_pid" "$n0" "$n1"
echo
echo "medic's BPF maps:"
bpf_maps "$medic_pid"

[ "$SCALE" = 1 ] || exit 0
echo
echo "Scaling (each point over ${SCALE_SECS} s, after 20 s to settle):"
echo "| load added | processes on the node | TCP sockets | mean tick ms | mean sample ms | CPU % of a core | PSS MiB |"
echo "|---|---|---|---|---|---|---|"
for point in "0 0" "1000 5000" "2000 10000"; do
  set -- $point
  [ "$1" -gt 0 ] && busy_start "$1" 50 "$2"
  sleep 20
  ts0=$(metric medic_tick_duration_seconds_sum) tc0=$(metric medic_tick_duration_seconds_count)
  ss0=$(metric medic_sample_duration_seconds_sum) sc0=$(metric medic_sample_duration_seconds_count)
  c0=$(cpu_ticks "$medic_pid") w0=$(date +%s.%N)
  sleep "$SCALE_SECS"
  ts1=$(metric medic_tick_duration_seconds_sum) tc1=$(metric medic_tick_duration_seconds_count)
  ss1=$(metric medic_sample_duration_seconds_sum) sc1=$(metric medic_sample_duration_seconds_count)
  c1=$(cpu_ticks "$medic_pid") w1=$(date +%s.%N)
  awk -v p="$1 processes, $2 connections" -v np="$(ls /proc | grep -c '^[0-9]')" -v ns="$(ss -tan | tail -n +2 | wc -l)" \
    -v ts0="$ts0" -v ts1="$ts1" -v tc="$((tc1 - tc0))" -v ss0="$ss0" -v ss1="$ss1" -v sc="$((sc1 - sc0))" \
    -v c="$((c1 - c0))" -v hz="$hz" -v w0="$w0" -v w1="$w1" -v pss="$(pss_kib "$medic_pid")" 'BEGIN {
    printf "| %s | %d | %d | %.2f | %.2f | %.2f | %.1f |\n", p, np, ns, tc ? (ts1 - ts0) / tc * 1000 : 0,
      sc ? (ss1 - ss0) / sc * 1000 : 0, c / hz / (w1 - w0) * 100, pss / 1024 }'
  busy_stop
done
