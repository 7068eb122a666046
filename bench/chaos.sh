#!/usr/bin/env bash
# The chaos run (issue 9, section 5; docs/RELIABILITY.md): CYCLES (default 1000) cycles of a real
# `medic run` with playbooks that act every tick, each ended by `kill -9` at a random moment
# (0.2-3 s after start, short runs more often), while the MQTT broker is stopped and started at random and the state
# dir (its own small tmpfs) is filled up and freed again at random. A tenth of the cycles switch
# the agent to dry-run over the control socket and check on the host that nothing was done.
# At the end: a clean start, replication catches up, SIGTERM, then the broker's copy must equal
# the log, the chain verify, no seq carry two contents, nothing have acted in dry-run.
# Prints the figures as a markdown table; exits 1 on any violation, 2 if it cannot run.
#
# Usage (root): bash bench/chaos.sh
#   CYCLES=50          number of cycles (default 1000)
#   MEDIC=/path/medic  binary to test (default target/release/medic, built if missing)
#   SEED=1234          $RANDOM seed, to replay a run's schedule (default: the script's pid)
#   STATE_MB=64        size of the state tmpfs
#   KEEP=1             keep the work dir (it is always kept when a violation is found)
#   BIG_KB=900         also: a playbook whose notification carries BIG_KB KiB of details on
#                      every other tick (large records: torn tails, the broker's packet limit)
#   REWIND_PCT=10      also: after that % of kills, cut 1-3 records off the log's end (an
#                      attack, not a crash: shows that the checks catch a rewind and seq reuse)
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
CYCLES=${CYCLES:-1000}
STATE_MB=${STATE_MB:-64}
BIG_KB=${BIG_KB:-0}
REWIND_PCT=${REWIND_PCT:-0}
SEED=${SEED:-$$}
RANDOM=$SEED
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

[ "$(id -u)" = 0 ] || { echo "chaos: needs root (mounts a tmpfs)" >&2; exit 2; }
command -v mosquitto >/dev/null || { echo "chaos: needs mosquitto (.ci/setup)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "chaos: needs python3 (.ci/setup)" >&2; exit 2; }
if [ -z "${MEDIC:-}" ]; then
  MEDIC=$repo/target/release/medic
  [ -x "$MEDIC" ] || cargo build -p medic --release -q || exit 2
fi
[ -x "$MEDIC" ] || { echo "chaos: $MEDIC is not executable" >&2; exit 2; }

work=$(mktemp -d /tmp/medic-chaos.XXXXXX)
fs=$work/fs
state=$fs/state
sock=$work/control.sock
junk=$work/junk
node=chaos-node
topic=medic/v1/node/$node/audit
check=$repo/bench/chaos/check.py
mkdir -p "$fs" "$junk" "$work/pb" "$work/bin" "$work/mq"
mount -t tmpfs -o "size=${STATE_MB}m,mode=0700" medic-chaos "$fs" || { echo "chaos: cannot mount a tmpfs" >&2; exit 2; }

# Every process this script starts, by pid; only these are ever signalled.
agent="" broker="" sub="" respawner=""
status=2
cleanup() {
  [ -n "$agent" ] && kill -9 "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
  for p in $respawner $sub $broker; do
    kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  [ -f "$work/target.pid" ] && kill -9 "$(cat "$work/target.pid")" 2>/dev/null
  rm -f "$fs"/filler*
  [ -d "$state" ] && cp -a "$state" "$work/state" 2>/dev/null
  umount "$fs" 2>/dev/null || umount -l "$fs"
  if [ "$status" = 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "chaos: work dir kept: $work" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
# Persistence keeps the subscriber's session and what is queued for it across broker restarts
# (saved when the broker is stopped with SIGTERM); it lives in the work dir, not the state tmpfs.
cat >"$work/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $work/mq/
max_queued_messages 0
# As root mosquitto drops to its own user, which could not write the work dir.
user root
EOF

cp /bin/sleep "$work/bin/chaos-target"
cat >"$work/pb/stop_target.rhai" <<'EOF'
const META = #{ name: "stop-target", description: "chaos: TERM the target process every tick",
  interval: "1s", actions: [#{ kind: "signal_process", target: "chaos-*" }],
  rate_limit: #{ max: 100000, per: "1h" }, cooldown: "0s" };
fn evaluate(node, state) {
  for p in node.processes() { if p.name == "chaos-target" { signal_process(p.pid, "TERM", "chaos"); } }
}
EOF
cat >"$work/pb/clean_junk.rhai" <<EOF
const META = #{ name: "clean-junk", description: "chaos: clean the junk dir every tick",
  interval: "1s", actions: [#{ kind: "clean_files", target: "*" }],
  rate_limit: #{ max: 100000, per: "1h" }, cooldown: "0s" };
fn evaluate(node, state) {
  clean_files("$junk", #{ glob: "*.junk", older_than: "1h" }, "chaos");
}
EOF
cat >"$work/pb/chatter.rhai" <<'EOF'
const META = #{ name: "chatter", description: "chaos: a notification every tick",
  interval: "1s", actions: [#{ kind: "notify", target: "*" }],
  rate_limit: #{ max: 100000, per: "1h" }, cooldown: "0s" };
fn evaluate(node, state) { notify("chaos tick"); }
EOF
if [ "$BIG_KB" -gt 0 ]; then
  cat >"$work/pb/bulky.rhai" <<EOF
const META = #{ name: "bulky", description: "chaos: a large notification every other tick",
  interval: "2s", actions: [#{ kind: "notify", target: "*" }],
  rate_limit: #{ max: 100000, per: "1h" }, cooldown: "0s" };
fn evaluate(node, state) {
  let chunk = "x"; while chunk.len() < 32768 { chunk += chunk; }
  let d = #{}; for i in 0..$(( (BIG_KB + 31) / 32 )) { d[\`k\${i}\`] = chunk; }
  notify("bulky", d);
}
EOF
fi
cat >"$work/medic.toml" <<EOF
node = "$node"
[signals]
interval_secs = 1
[signals.ebpf]
enabled = false
[control]
socket = "$sock"
[policy]
allowed_paths = ["$junk"]
budget_per_hour = 1000000
breaker_after = 1000000
max_concurrent = 4
[mqtt]
enabled = true
port = $port
keep_alive_secs = 5
EOF

rand() { echo $((RANDOM % $1)); }
msleep() { [ "$1" -gt 0 ] && sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; return 0; }
log() { echo "== $(date +%T.%3N) cycle $cycle: $*" >>"$work/agent.log"; }

start_broker() {
  mosquitto -c "$work/mosquitto.conf" >>"$work/broker.log" 2>&1 &
  broker=$!
  broker_up=1
}
stop_broker() {
  kill -TERM "$broker" 2>/dev/null
  wait "$broker" 2>/dev/null
  broker="" broker_up=0
}
start_agent() {
  "$MEDIC" run --config "$work/medic.toml" --playbooks "$work/pb" --state-dir "$state" >>"$work/agent.log" 2>&1 &
  agent=$!
}
# The control socket answers (false if the agent is gone or 5 s pass).
wait_socket() {
  local i
  for i in $(seq 50); do
    "$MEDIC" status --json --socket "$sock" >/dev/null 2>&1 && return 0
    kill -0 "$agent" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# A top-level number in `medic status --json` (pretty-printed: one key per line).
status_num() { "$MEDIC" status --json --socket "$sock" 2>/dev/null | sed -n "s/^  \"$1\": \([0-9]*\),\{0,1\}\$/\1/p"; }
status_field() { "$MEDIC" status --json --socket "$sock" 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }
fill_disk() {
  dd if=/dev/zero of="$fs/filler" bs=1M 2>/dev/null
  dd if=/dev/zero of="$fs/filler2" bs=512 2>/dev/null
  full=1 cycle_full=1
  disk_full=$((disk_full + 1))
  log "disk full"
}
free_disk() { rm -f "$fs"/filler*; full=0; log "disk freed"; }
refill_junk() { touch -d '2 hours ago' "$junk/$1-1.junk" "$junk/$1-2.junk" "$junk/$1-3.junk"; }
# What the node had on disk after a kill: "cycle seq hash" of the last complete record (the
# line before a torn one), checked against the final log and the broker's copy at the end.
witness() {
  local f=$state/audit.log line
  [ -s "$f" ] || return 0
  if [ "$(tail -c 1 "$f" | wc -l)" = 1 ]; then line=$(tail -n 1 "$f"); else line=$(tail -n 2 "$f" | head -n 1); fi
  [[ $line =~ ,\"hash\":\"([0-9a-f]{64})\" ]] || return 0
  local hash=${BASH_REMATCH[1]}
  [[ $line =~ ,\"seq\":([0-9]+) ]] && echo "$cycle ${BASH_REMATCH[1]} $hash" >>"$work/witness"
}
start_ticks() { awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null; }
violation() { echo "$*" >>"$work/violations"; echo "chaos: VIOLATION: $*" >&2; }

# The target the stop-target playbook signals: respawned whenever it dies.
(
  trap 'kill -9 $p 2>/dev/null; exit 0' TERM
  while :; do
    "$work/bin/chaos-target" 100000 &
    p=$!
    echo "$p" >"$work/target.pid"
    wait "$p"
    sleep 0.05
  done
) &
respawner=$!

start_broker
python3 "$repo/bench/chaos/mqtt_sub.py" 127.0.0.1 "$port" chaos-sub "$topic" "$work/broker.jsonl" "$work/sub.ready" 2>>"$work/sub.log" &
sub=$!
for _ in $(seq 50); do [ -f "$work/sub.ready" ] && break; sleep 0.1; done
[ -f "$work/sub.ready" ] || { echo "chaos: the subscriber did not subscribe" >&2; exit 2; }

t0=$(date +%s)
rewinds=0 kills=0 broker_stops=0 broker_starts=0 disk_full=0 dry_cycles=0 dry_switch_failed=0
died_full_disk=0 died_unexpectedly=0 full=0 need_live=1 broker_up=1
echo "chaos: $CYCLES cycles, seed $SEED, binary $MEDIC, work dir $work" >&2
for cycle in $(seq "$CYCLES"); do
  # A disk left full by the last cycle is mostly freed before the start; else the agent
  # starts on a full disk.
  [ "$full" = 1 ] && [ "$(rand 100)" -lt 60 ] && free_disk
  cycle_full=$full
  refill_junk "c$cycle"
  # A tenth of the cycles (never on a full disk: the switch must be recorded) are dry-run checks.
  dry=0
  [ "$full" = 0 ] && [ "$(rand 10)" = 0 ] && [ "$cycle" -gt 1 ] && dry=1
  log "start (dry=$dry full=$full broker_up=$broker_up)"
  start_agent
  if [ "$dry" = 1 ]; then
    if wait_socket && "$MEDIC" mode dry-run --reason "chaos: dry-run cycle $cycle" --socket "$sock" >>"$work/agent.log" 2>&1; then
      need_live=1
      # Actions decided before the switch may still be running: let them end first.
      for _ in $(seq 30); do [ "$(status_num running_actions)" = 0 ] && break; sleep 0.1; done
      refill_junk "dry$cycle"
      tpid=$(cat "$work/target.pid" 2>/dev/null)
      tticks=$(start_ticks "$tpid")
      [ -n "$tticks" ] || { sleep 0.2; tpid=$(cat "$work/target.pid"); tticks=$(start_ticks "$tpid"); }
      before_seq=$(status_num last_seq)
      msleep $((1100 + $(rand 900)))
      after_seq=$(status_num last_seq)
      if [ "$(start_ticks "$tpid")" != "$tticks" ]; then
        violation "cycle $cycle (dry-run): target pid $tpid (start $tticks) was signalled; log seq $before_seq..$after_seq"
      fi
      for i in 1 2 3; do
        [ -e "$junk/dry$cycle-$i.junk" ] || violation "cycle $cycle (dry-run): $junk/dry$cycle-$i.junk was removed; log seq $before_seq..$after_seq"
      done
      dry_cycles=$((dry_cycles + 1))
    else
      dry_switch_failed=$((dry_switch_failed + 1))
      log "dry-run switch failed"
    fi
  else
    if [ "$need_live" = 1 ] && wait_socket && "$MEDIC" mode live --reason "chaos: live cycles" --socket "$sock" >>"$work/agent.log" 2>&1; then
      need_live=0
    fi
    # The moments of this cycle, in ms after the start: the kill, and maybe a disk fill or
    # free and a broker stop or start before it.
    # 0.2-3 s, short runs more often (mean 1.1 s): more kills land in start-up and replay.
    r=$(rand 1001)
    run_ms=$((200 + 2800 * r * r / 1000000))
    events="$run_ms kill"
    # A fill is freed again in the same run half of the time (the agent recovers), else the
    # disk stays full into the next cycle.
    if [ "$full" = 0 ] && [ "$(rand 100)" -lt 15 ]; then
      t1=$(rand "$run_ms")
      events+=$'\n'"$t1 fill"
      [ "$(rand 2)" = 0 ] && events+=$'\n'"$((t1 + $(rand $((run_ms - t1)))  )) free"
    fi
    if [ "$broker_up" = 1 ] && [ "$(rand 100)" -lt 20 ]; then events+=$'\n'"$(rand "$run_ms") bstop"; fi
    if [ "$broker_up" = 0 ] && [ "$(rand 100)" -lt 50 ]; then events+=$'\n'"$(rand "$run_ms") bstart"; fi
    t=0
    while read -r at what; do
      msleep $((at - t))
      t=$at
      case $what in
        fill) fill_disk ;;
        free) free_disk ;;
        bstop) stop_broker; broker_stops=$((broker_stops + 1)); log "broker stopped" ;;
        bstart) start_broker; broker_starts=$((broker_starts + 1)); log "broker started" ;;
      esac
    done < <(sort -n <<<"$events")
  fi
  if kill -0 "$agent" 2>/dev/null; then
    kill -9 "$agent"
    wait "$agent" 2>/dev/null
    kills=$((kills + 1))
    log "killed"
  else
    wait "$agent" 2>/dev/null
    rc=$?
    if [ "$cycle_full" = 1 ]; then
      died_full_disk=$((died_full_disk + 1))
      log "agent had exited ($rc) with the disk full"
    else
      died_unexpectedly=$((died_unexpectedly + 1))
      violation "cycle $cycle: the agent exited by itself (status $rc) with the disk not full; agent.log: $(grep -v '^==' "$work/agent.log" | tail -n 3 | tr '\n' ' ' | cut -c1-600)"
    fi
  fi
  agent=""
  witness
  if [ "$(rand 100)" -lt "$REWIND_PCT" ] && [ -s "$state/audit.log" ]; then
    k=$((1 + $(rand 3)))
    truncate -s "$(head -n "-$k" "$state/audit.log" | wc -c)" "$state/audit.log"
    rewinds=$((rewinds + 1))
    log "rewound: the last $k records cut off"
  fi
  if [ $((cycle % 50)) = 0 ]; then
    echo "chaos: cycle $cycle/$CYCLES, $(( $(date +%s) - t0 )) s, log $(du -k "$state" 2>/dev/null | tail -n1 | cut -f1) KiB" >&2
  fi
done

# The end: a clean start with a free disk and a broker, replication catches up, SIGTERM.
cycle=final
[ "$full" = 1 ] && free_disk
[ "$broker_up" = 0 ] && { start_broker; broker_starts=$((broker_starts + 1)); }
log "final start"
start_agent
final_not_caught_up=1 final_stop_failed=0
if wait_socket; then
  for _ in $(seq 1200); do
    caught=$(status_field '1 if (d.get("replication") or {}).get("connected") and d["replication"]["cursor"] >= d["last_seq"] else 0')
    [ "$caught" = 1 ] && { final_not_caught_up=0; break; }
    sleep 0.1
  done
fi
kill -TERM "$agent" 2>/dev/null
for _ in $(seq 150); do kill -0 "$agent" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$agent" 2>/dev/null; then
  final_stop_failed=1
  kill -9 "$agent"
fi
wait "$agent" 2>/dev/null
[ $? = 0 ] || final_stop_failed=1
agent=""
# The subscriber has everything once its file stops growing.
last=-1
for _ in $(seq 100); do
  n=$(wc -l <"$work/broker.jsonl")
  [ "$n" = "$last" ] && break
  last=$n
  sleep 0.5
done
if verify_out=$("$MEDIC" audit verify --state-dir "$state" 2>&1); then verify=ok; else verify=FAILED; fi
"$MEDIC" audit show --json --state-dir "$state" >"$work/local.jsonl" 2>>"$work/agent.log"
cat >"$work/counters" <<EOF
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$(git -C "$repo" diff --quiet HEAD -- agent 2>/dev/null || echo "+dirty")
binary=$("$MEDIC" --version 2>/dev/null)
cycles=$CYCLES
kills=$kills
died_full_disk=$died_full_disk
died_unexpectedly=$died_unexpectedly
broker_stops=$broker_stops
broker_starts=$broker_starts
disk_full=$disk_full
dry_cycles=$dry_cycles
dry_switch_failed=$dry_switch_failed
rewinds=$rewinds
big_kb=$BIG_KB
final_not_caught_up=$final_not_caught_up
final_stop_failed=$final_stop_failed
verify=$verify
verify_out=$(echo "$verify_out" | tr '\n' ' ' | cut -c1-400)
wall_secs=$(( $(date +%s) - t0 ))
EOF
python3 "$check" final "$work"
status=$?
exit "$status"
