# Sourced by bench scripts: start `medic run` in a state dir of its own, and read a process's
# memory, CPU time and (for medic) BPF map memory from /proc.

pss_kib() { awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup"; }
rss_kib() { awk '/^Rss:/ { print $2 }' "/proc/$1/smaps_rollup"; }
anon_kib() { awk '/^Pss_Anon:/ { print $2 }' "/proc/$1/smaps_rollup"; }
# utime + stime in clock ticks (fields 14 and 15; the command name in field 2 has no spaces here).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_medic DIR [BIN]: medic live on its defaults (bundled playbooks, 1 s ticks, eBPF on, the
# history 600 s), with its state, control socket and metrics port its own. Sets medic_pid and
# medic_metrics (host:port). The log goes to DIR/medic.log.
start_medic() {
  local dir=$1 bin=${2:-./target/release/medic}
  mkdir -p "$dir/state"
  medic_metrics="127.0.0.1:$(free_port)"
  cat >"$dir/medic.toml" <<CONF
state_dir = "$dir/state"
[control]
socket = "$dir/control.sock"
[metrics]
listen = "$medic_metrics"
CONF
  "$bin" run --config "$dir/medic.toml" >"$dir/medic.log" 2>&1 &
  medic_pid=$!
  local i
  for i in $(seq 1 100); do
    grep -q 'Started\.' "$dir/medic.log" 2>/dev/null && return 0
    kill -0 "$medic_pid" 2>/dev/null || { cat "$dir/medic.log" >&2; return 1; }
    sleep 0.1
  done
  echo "medic did not start in 10 s" >&2
  return 1
}

# metric NAME: the value of an unlabelled sample of medic's /metrics (e.g. a histogram's _sum).
metric() {
  curl -sf "http://$medic_metrics/metrics" | awk -v n="$1" '$1 == n { print $2 }'
}

# bpf_maps PID: one line per BPF map PID holds (id, name, type, max_entries, value bytes,
# flags, bytes_memlock) and a total line. Read from /proc/PID/fdinfo of its map fds, because
# Debian's bpftool 7.1 is built without the pid iterator and prints no `pids` field.
bpf_maps() {
  local pid=$1 fd id
  for fd in /proc/"$pid"/fd/*; do
    [ "$(readlink "$fd" 2>/dev/null)" = "anon_inode:bpf-map" ] || continue
    awk '/^map_id:/ { print $2 }' "/proc/$pid/fdinfo/${fd##*/}"
  done | sort -un | while read -r id; do
    bpftool -j map show id "$id"
  done | /usr/bin/python3 -c '
import json, sys
total = 0
row = "%-14s %-14s %8s %8s %6s %10s"
print(row % ("map", "type", "entries", "value_B", "flags", "memlock_B"))
for line in sys.stdin:
    m = json.loads(line)
    total += m["bytes_memlock"]
    print(row % (m["name"], m["type"], m["max_entries"], m["bytes_value"], m["flags"], m["bytes_memlock"]))
print("total bytes_memlock: %d (%.2f MiB)" % (total, total / 1048576))'
}
