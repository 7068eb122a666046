#!/usr/bin/env bash
# Fault -> action started, medic and Monit side by side, in one run on this machine.
#
#   bash bench/reaction.sh            # N=30 trials of each class
#   N=10 CLASSES=disk,cpu bash bench/reaction.sh
#
# Root. Needs monit, nftables, python3 (Debian's /usr/bin/python3); installs monit and nftables
# with apt-get when missing. Runs in a private mount namespace of its own, where /var/log is a
# 64 MiB tmpfs (the host's /var/log is untouched). medic: the release build, live, eBPF on, its
# defaults but for the bench's state dir, control socket and limits; four bundled playbooks with
# their logic unchanged but the sustain windows (zero) and limits (none: every trial may act).
# Monit 5.33 at `set daemon 1`, watching the same /var/log and the same busy loop. See
# bench/reaction.py for what is injected and how "action started" is timed. Prints a markdown
# table for docs/BENCHMARKS.md and leaves the raw numbers in $WORK/reaction.json.
#
# WARNING: medic runs LIVE here with runaway-process's sustain window at zero: it sends SIGTERM to
# ANY process on this host that uses 95 % of a core (a compiler, a test). Run the `cpu` class on
# a quiet machine, with nothing else busy; without it (CLASSES=disk,close_wait,retrans) that
# playbook is not loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if [[ -z "${MEDIC_REACTION_INNER:-}" ]]; then
  command -v monit >/dev/null || apt-get install -y -q monit >/dev/null
  command -v nft >/dev/null || apt-get install -y -q nftables >/dev/null
  cargo build --release -q -p medic
  export MEDIC_REACTION_INNER=1
  exec unshare -m --propagation private bash "$0" "$@"
fi

export MEDIC="$repo/target/release/medic"
export WORK=$(mktemp -d /tmp/medic-reaction.XXXXXX)
rm -rf /tmp/medic-reaction.last && ln -s "$WORK" /tmp/medic-reaction.last
mount -t tmpfs -o size=64m tmpfs /var/log
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rmdir /sys/fs/cgroup/systemd/system.slice/medic-bench-leak.service 2>/dev/null || true
  umount /var/log || true
}
trap cleanup EXIT

# The bundled playbooks, their logic unchanged: sustain windows to zero, no cooldown, a rate
# limit no trial reaches.
# Only the classes run (CLASSES): without `cpu`, runaway-process is not loaded, and the bench is
# safe beside a build.
mkdir -p "$WORK/pb"
classes=",${CLASSES:-disk,cpu,close_wait,retrans},"
for f in disk_old_logs runaway_process close_wait_leak tcp_retransmit_storm; do
  case "$f" in
    disk_old_logs) c=disk ;; runaway_process) c=cpu ;; close_wait_leak) c=close_wait ;; *) c=retrans ;;
  esac
  [[ "$classes" == *",$c,"* ]] || continue
  sed -E -e 's/"(5m|10m)"\)/"0s")/g' -e 's/, 4, 6\)/, 1, 1)/g' \
    -e 's/cooldown: "[^"]*"/cooldown: "0s"/' -e 's/rate_limit: #\{ max: [0-9]+/rate_limit: #{ max: 1000000/' \
    "playbooks/$f.rhai" >"$WORK/pb/$f.rhai"
done
cat >"$WORK/medic.toml" <<EOF
node = "bench"
[control]
socket = "$WORK/c.sock"
[policy]
budget_per_hour = 1000000
breaker_after = 1000000
allowed_paths = ["/var/log"]
[metrics]
listen = ""
EOF
for f in "$WORK"/pb/*.rhai; do "$MEDIC" playbook check --config "$WORK/medic.toml" "$f" >/dev/null; done

"$MEDIC" run --config "$WORK/medic.toml" --playbooks "$WORK/pb" --state-dir "$WORK/state" 2>"$WORK/medic.log" &
pids+=($!)
for _ in $(seq 100); do [[ -S "$WORK/c.sock" ]] && break; sleep 0.1; done
"$MEDIC" mode live --reason "reaction bench" --socket "$WORK/c.sock" >/dev/null

# Monit at its fastest cycle, on the same faults; its action writes the time it ran.
cat >"$WORK/stamp" <<EOF
#!/bin/sh
date +%s.%N >>"$WORK/stamps.\$1"
EOF
chmod +x "$WORK/stamp"
ln -s /bin/sh "$WORK/medic-burner"
cat >"$WORK/monitrc" <<EOF
set daemon 1
set logfile $WORK/monit.log
set pidfile $WORK/monit.pid
set idfile $WORK/monit.id
set statefile $WORK/monit.state
check filesystem varlog with path /var/log
  if space usage > 90% then exec "$WORK/stamp disk"
check process burner matching "medic-burner"
  if cpu > 95% then exec "$WORK/stamp cpu"
EOF
chmod 600 "$WORK/monitrc"
monit -I -c "$WORK/monitrc" >/dev/null 2>&1 &
pids+=($!)
sleep 5 # both past start-up; medic's history holds a few samples

/usr/bin/python3 bench/reaction.py
echo "raw numbers: $WORK/reaction.json; medic's log: $WORK/medic.log; monit's: $WORK/monit.log" >&2
