#!/usr/bin/env bash
# Start-up memory against the audit log's size: writes a valid hash-chained log of each SIZE
# (MiB; action records of ~1.5 KB, one a second up to now, as one legacy file without segments
# or anchor: the worst case, since start then streams all of it), runs `medic run --once` on
# it and reports peak RSS (and time). Start-up memory must not grow with the log.
# Usage: bash bench/audit_startup_rss.sh [SIZE_MiB ...]   (default: 10 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(10 1024)
cargo build --release -q -p medic
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gen() { # $1 dir, $2 MiB
python3 - "$1" "$2" <<'PY'
import hashlib, json, sys, time, uuid, os
d, mib = sys.argv[1], int(sys.argv[2])
os.makedirs(d, mode=0o700, exist_ok=True)
target = mib << 20
reason = "restart: p99 latency 2.3s over 5m, error rate 7% " * 12
prev = "0" * 64
n_est = target // 1500 + 1
now = int(time.time())
seq, size = 0, 0
with open(os.path.join(d, "audit.log"), "w", buffering=1 << 20) as f:
    while size < target:
        seq += 1
        t = now - (n_est - seq)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))
        rec = {"schema": "medic.audit/v1", "seq": seq, "id": str(uuid.UUID(int=seq)), "ts": ts, "node": "bench",
               "kind": "action", "playbook": {"name": "p%d" % (seq % 7), "sha256": "ab" * 32},
               "trigger": {"signals": {"load.1": seq % 17, "mem.used_pct": seq % 91}, "reason": reason},
               "action": {"kind": "notify", "target": "t%d" % (seq % 500), "params": {}},
               "mode": "dry-run", "decision": "suppressed", "rule": "cooldown", "detail": "cooldown 5m", "outcome": None,
               "prev_hash": prev}
        prev = hashlib.sha256(json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
        rec["hash"] = prev
        line = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
        f.write(line)
        size += len(line)
print(seq)
PY
}
printf "%-10s %-10s %-14s %-10s\n" "log" "records" "peak RSS" "start+stop"
for mib in "${sizes[@]}"; do
  d="$work/s$mib"
  n=$(gen "$d" "$mib")
  /usr/bin/time -o "$work/time" -f "%M %e" ./target/release/medic run --once --state-dir "$d" >/dev/null 2>&1
  read -r kb secs <"$work/time"
  ./target/release/medic audit verify --state-dir "$d" >/dev/null || { echo "verify failed for $mib MiB"; exit 1; }
  printf "%-10s %-10s %-14s %-10s\n" "${mib} MiB" "$n" "$(awk -v k="$kb" 'BEGIN{printf "%.1f MiB", k/1024}')" "${secs} s"
  rm -rf "$d"
done
