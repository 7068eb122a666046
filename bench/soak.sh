#!/usr/bin/env bash
# Memory over a long run on a busy synthetic node (docs/BENCHMARKS.md, "Footprint"). Root.
# Loads the node with PROCS processes (SPINNERS busy, CONNS loopback connections held; see
# bench/lib/busy_node.sh) plus churn: CHURN short-lived processes per second (each opens and
# closes a loopback connection and writes and deletes a file), then runs `medic run` live on
# its defaults (all four eBPF families) for DURATION seconds (default 1800), printing its PSS
# every SAMPLE seconds (default 60), and at the end the least-squares slope of PSS in KiB per
# hour over the samples taken after WARMUP seconds (default 660: the 600 s history is full).
# BIN= a medic binary instead of building target/release/medic.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-1800} SAMPLE=${SAMPLE:-60} WARMUP=${WARMUP:-660}
PROCS=${PROCS:-2000} SPINNERS=${SPINNERS:-20} CONNS=${CONNS:-2000} CHURN=${CHURN:-20}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p medic
  BIN=./target/release/medic
fi
. bench/lib/measure.sh
. bench/lib/busy_node.sh

tmp=$(mktemp -d)
churn_pid=
cleanup() {
  [ -n "$churn_pid" ] && kill "$churn_pid" 2>/dev/null && wait "$churn_pid" 2>/dev/null || true
  [ -n "${medic_pid:-}" ] && kill "$medic_pid" 2>/dev/null && wait "$medic_pid" 2>/dev/null || true
  busy_stop
  rm -rf "$tmp"
}
trap cleanup EXIT

busy_start "$PROCS" "$SPINNERS" "$CONNS"
# Churn: CHURN new processes a second, each a connection opened and closed and a file written
# and deleted (new pids, sockets, files: new keys for the history and the eBPF maps).
mkdir -p "$tmp/files"
/usr/bin/python3 -c '
import os, socket, sys, time
rate, d = int(sys.argv[1]), sys.argv[2]
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1024)
addr = l.getsockname()
n = 0
while True:
    t = time.monotonic()
    for _ in range(rate):
        n += 1
        if os.fork() == 0:
            c = socket.create_connection(addr); c.sendall(b"x"); c.close()
            p = os.path.join(d, str(n))
            with open(p, "wb") as f: f.write(os.urandom(4096))
            os.unlink(p)
            os._exit(0)
        a, _ = l.accept(); a.recv(1); a.close()
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0: break
        except ChildProcessError:
            break
    time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))' "$CHURN" "$tmp/files" &
churn_pid=$!
sleep 5

start_medic "$tmp/medic" "$BIN"
echo "machine: $(. /etc/os-release; echo "$PRETTY_NAME"), $(nproc) cores, kernel $(uname -r); $(ls /proc | grep -c '^[0-9]') processes, $(ss -tan | tail -n +2 | wc -l) TCP sockets, $CHURN new processes/s"
echo "| s since start | PSS KiB | of it anonymous KiB | RSS KiB |"
echo "|---|---|---|---|"
t0=$(date +%s)
: >"$tmp/samples"
while :; do
  sleep "$SAMPLE"
  t=$(($(date +%s) - t0))
  kill -0 "$medic_pid" || { echo "medic exited" >&2; tail "$tmp/medic/medic.log" >&2; exit 1; }
  pss=$(pss_kib "$medic_pid")
  echo "| $t | $pss | $(anon_kib "$medic_pid") | $(rss_kib "$medic_pid") |"
  echo "$t $pss" >>"$tmp/samples"
  [ "$t" -lt "$DURATION" ] || break
done
awk -v w="$WARMUP" '$1 >= w { n++; sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2; if (!lo || $2 < lo) lo = $2; if ($2 > hi) hi = $2 }
  END {
    if (n < 2) { print "too few samples after the warm-up for a slope"; exit }
    b = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    printf "PSS after %d s: %d samples, %d..%d KiB; slope %.1f KiB/hour (%.2f MiB per 24 h)\n", w, n, lo, hi, b * 3600, b * 86400 / 1024 }' "$tmp/samples"
