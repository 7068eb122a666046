#!/usr/bin/env bash
# eBPF overhead, in one run (as root, on an otherwise quiet machine):
#  1. a context-switch-heavy workload (bench/pingpong.c pinned to one core) without medic,
#     then with medic running (all four eBPF families), then without again;
#  2. run_time_ns / run_cnt of every medic program from the kernel's bpf_stats, under that
#     scheduler-heavy load and under a loopback retransmit load (an nftables drop rule);
#  3. the agent's CPU with eBPF and without (signals.ebpf.enabled = false).
# Usage: bash bench/ebpf_overhead.sh [SECONDS per pingpong run, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -q
gcc -O2 -o /tmp/medic-pingpong bench/pingpong.c
work=$(mktemp -d)
agent=""
cleanup() {
  [ -n "$agent" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null || true
  nft delete table inet medic_bench 2>/dev/null || true
  sysctl -qw kernel.bpf_stats_enabled=0
  rm -rf "$work"
}
trap cleanup EXIT

pingpong() { taskset -c 0 /tmp/medic-pingpong "$secs"; }
median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

start_agent() { # $1: config file
  ./target/release/medic run --config "$1" --state-dir "$work/state-$RANDOM" 2>/dev/null &
  agent=$!
  sleep 3
}
stop_agent() { kill "$agent"; wait "$agent" || true; agent=""; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$agent/stat"; }

printf '[control]\nsocket = "%s/c1.sock"\n' "$work" > "$work/on.toml"
printf '[control]\nsocket = "%s/c2.sock"\n[signals.ebpf]\nenabled = false\n' "$work" > "$work/off.toml"

sysctl -qw kernel.bpf_stats_enabled=1
prog_stats() { # name run_time_ns run_cnt for medic's programs
  bpftool prog show -j | python3 -c '
import json,sys
for p in json.load(sys.stdin):
    n=p.get("name","")
    if n.startswith(("runq_","tcp_","sock_","blk_")):
        print(n, p.get("run_time_ns",0), p.get("run_cnt",0))'
}
delta() { # before after
  python3 - "$1" "$2" <<'PY'
import sys
def load(s):
    d={}
    for l in s.strip().splitlines():
        n,t,c=l.split(); d[n]=(int(t),int(c))
    return d
a,b=load(sys.argv[1]),load(sys.argv[2])
for n in sorted(b):
    t=b[n][0]-a.get(n,(0,0))[0]; c=b[n][1]-a.get(n,(0,0))[1]
    if c>0: print(f"  {n:<22} {t/c:8.0f} ns/event  ({c} events)")
PY
}

echo "== pingpong (round trips/s, median of 3, pinned to CPU 0, ${secs}s each)"
base1=$(median3 "$(pingpong)" "$(pingpong)" "$(pingpong)")
start_agent "$work/on.toml"
s0=$(prog_stats)
with=$(median3 "$(pingpong)" "$(pingpong)" "$(pingpong)")
s1=$(prog_stats)
echo "  without medic: $base1"
echo "  with medic:    $with"
echo "== per program under the scheduler-heavy load (bpf_stats)"
delta "$s0" "$s1"

echo "== per program under a retransmit load (loopback, nftables drop, 10 s)"
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
python3 - "$port" <<'PY' &
import socket,sys,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(("127.0.0.1",int(sys.argv[1]))); s.listen(64)
conns=[]
end=time.time()+14
s.settimeout(1)
while time.time()<end:
    try: conns.append(s.accept()[0])
    except socket.timeout: pass
PY
srv=$!
sleep 0.5
python3 - "$port" <<'PY' &
import socket,sys,time
cs=[socket.create_connection(("127.0.0.1",int(sys.argv[1]))) for _ in range(200)]
time.sleep(1)
for c in cs: c.setblocking(False)
end=time.time()+11
while time.time()<end:
    for c in cs:
        try: c.send(b"x"*100)
        except BlockingIOError: pass
    time.sleep(0.05)
PY
cli=$!
sleep 1
nft -f - <<NFT
table inet medic_bench {
  chain input {
    type filter hook input priority 0;
    tcp dport $port drop
  }
}
NFT
r0=$(prog_stats)
sleep 10
r1=$(prog_stats)
nft delete table inet medic_bench
wait "$cli" "$srv" 2>/dev/null || true
delta "$r0" "$r1"

echo "== agent CPU over 30 s (1 s ticks, bundled playbooks, dry-run)"
t0=$(cpu_ticks); sleep 30; t1=$(cpu_ticks)
stop_agent
hz=$(getconf CLK_TCK)
echo "  with eBPF:    $(awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN{printf "%.2f%% of one core", (b-a)/hz/30*100}')"
start_agent "$work/off.toml"
t0=$(cpu_ticks); sleep 30; t1=$(cpu_ticks)
stop_agent
echo "  without eBPF: $(awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN{printf "%.2f%% of one core", (b-a)/hz/30*100}')"

base2=$(median3 "$(pingpong)" "$(pingpong)" "$(pingpong)")
echo "== pingpong again without medic: $base2"
awk -v a="$base1" -v b="$base2" -v w="$with" 'BEGIN{m=(a+b)/2; printf "with medic: %.1f%% of the throughput without it\n", w/m*100}'
