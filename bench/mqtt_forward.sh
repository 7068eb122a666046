#!/usr/bin/env bash
# Records per second logged (fsync'd) and forwarded to a local mosquitto (QoS 1, acked).
# A playbook asks for N notifications per tick (each one an fsync'd record); the forwarder's
# cursor (advanced on PUBACK) is read once per second. Also the drain rate of a backlog
# written while the broker was down (bounded by mqtt.max_rate, default 1000/s).
# Usage: bash bench/mqtt_forward.sh [N per tick, default 500] [seconds, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500}
secs=${2:-10}
cargo build --release -q
work=$(mktemp -d)
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
broker=""; agent=""
cleanup() {
  [ -n "$agent" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null || true
  [ -n "$broker" ] && kill "$broker" 2>/dev/null && wait "$broker" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$work/mosquitto.conf"
mkdir -p "$work/pb"
cat > "$work/pb/chatter.rhai" <<RHAI
const META = #{ name: "chatter", description: "bench", interval: "1s", actions: [#{ kind: "notify", target: "*" }],
  rate_limit: #{ max: 100000000, per: "1h" }, cooldown: "0s" };
fn evaluate(node, state) { for i in 0..$n { notify(\`n\${i}\`); } }
RHAI
printf '[control]\nsocket = "%s/c.sock"\n[mqtt]\nenabled = true\nport = %s\nmax_rate = 100000\nmax_inflight = 1000\n[playbooks.limits]\nmax_requests = 100000\nmax_operations = 100000000\n' "$work" "$port" > "$work/medic.toml"
# The last durable record's seq, from the anchor the agent fsyncs after each commit.
seqof() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["anchor"]["seq"])' "$work/state/audit.anchor"; }
cur() { cat "$work/state/forward.cursor" 2>/dev/null || echo 0; }

/usr/sbin/mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 & broker=$!
sleep 0.5
./target/release/medic run --config "$work/medic.toml" --playbooks "$work/pb" --state-dir "$work/state" 2>/dev/null & agent=$!
sleep 3
s0=$(seqof); c0=$(cur)
sleep "$secs"
s1=$(seqof); c1=$(cur)
echo "logged:    $(( (s1 - s0) / secs )) records/s (fsync'd, $n requested per tick)"
echo "forwarded: $(( (c1 - c0) / secs )) records/s (acknowledged by the broker)"
echo "lag:       $(( s1 - c1 )) records behind at the end"
