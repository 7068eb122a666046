# Sourced by bench scripts: a synthetic busy node made of real processes and sockets.
# Every process started is recorded in the array `busy_pids`; `busy_stop` ends them by pid.
#   busy_start PROCS SPINNERS CONNS   PROCS processes in all: SPINNERS busy at duty cycles from
#                                     0.2 % to 2 % of a core, 10 holding CONNS loopback TCP
#                                     connections between them (both ends), the rest sleeping.
busy_pids=()

busy_stop() {
  local p
  for p in "${busy_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${busy_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  busy_pids=()
}

busy_start() {
  local procs=$1 spinners=$2 conns=$3 holders=10 i per
  [ "$conns" -gt 0 ] || holders=0
  ulimit -n "$(ulimit -Hn)"
  for i in $(seq 0 $((spinners - 1))); do
    /usr/bin/python3 -c '
import sys, time
d = float(sys.argv[1]) / 1000
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < d: pass
    time.sleep(0.1 - d)' "$(awk -v i="$i" -v n="$spinners" 'BEGIN { printf "%.2f", 0.2 + 1.8 * i / (n > 1 ? n - 1 : 1) }')" &
    busy_pids+=($!)
  done
  if [ "$holders" -gt 0 ]; then
    per=$((conns / holders))
    for i in $(seq 1 $holders); do
      /usr/bin/python3 -c '
import resource, signal, socket, sys
n = int(sys.argv[1])
limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1024)
keep = []
for _ in range(n):
    keep.append(socket.create_connection(l.getsockname())); keep.append(l.accept()[0])
signal.pause()' "$per" &
      busy_pids+=($!)
    done
  fi
  for i in $(seq 1 $((procs - spinners - holders))); do
    sleep infinity &
    busy_pids+=($!)
  done
}
