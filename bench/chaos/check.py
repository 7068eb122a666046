#!/usr/bin/env python3
"""Checks for bench/chaos.sh.

  check.py final WORK
      Compares the local log (WORK/local.jsonl, from `medic audit show --json`) with the
      broker's copy (WORK/broker.jsonl, from mqtt_sub.py) and the witnesses (WORK/witness:
      "cycle seq hash" of the last record on disk after each kill), walks the modes
      for actions executed in dry-run, reads the script's counters (WORK/counters) and host
      checks (WORK/violations), prints the figures as a markdown table and the violations, and
      exits 1 on any violation.
"""
import json
import os
import sys
from collections import defaultdict


def read_jsonl(path):
    recs, bad = [], 0
    try:
        with open(path, "rb") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                if isinstance(r, dict) and isinstance(r.get("seq"), int):
                    recs.append(r)
                else:
                    bad += 1
    except OSError:
        pass
    return recs, bad


def ranges(seqs, limit=20):
    """1,2,3,7,9,10 -> '1-3, 7, 9-10' (the first `limit` runs)."""
    seqs = sorted(seqs)
    out, i = [], 0
    while i < len(seqs) and len(out) < limit:
        j = i
        while j + 1 < len(seqs) and seqs[j + 1] == seqs[j] + 1:
            j += 1
        out.append(str(seqs[i]) if i == j else f"{seqs[i]}-{seqs[j]}")
        i = j + 1
    return ", ".join(out) + (" …" if i < len(seqs) else "")


def final(work):
    counters = {}
    with open(os.path.join(work, "counters")) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            if k:
                counters[k] = v
    local, local_bad = read_jsonl(os.path.join(work, "local.jsonl"))
    broker, broker_bad = read_jsonl(os.path.join(work, "broker.jsonl"))
    violations = []

    # Every (seq, hash) seen anywhere: the final log, the broker's copy, the witnesses.
    seen = defaultdict(lambda: defaultdict(list))
    local_hash = {}
    for r in local:
        if r["seq"] in local_hash and local_hash[r["seq"]] != r.get("hash"):
            violations.append(f"local log holds seq {r['seq']} twice with different hashes")
        local_hash[r["seq"]] = r.get("hash")
        seen[r["seq"]][r.get("hash")].append("log")
    broker_hashes = defaultdict(set)
    broker_rec = {}
    for r in broker:
        broker_hashes[r["seq"]].add(r.get("hash"))
        broker_rec.setdefault((r["seq"], r.get("hash")), r)
        if "broker" not in seen[r["seq"]][r.get("hash")]:
            seen[r["seq"]][r.get("hash")].append("broker")
    try:
        with open(os.path.join(work, "witness")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    seen[int(parts[1])][parts[2]].append(f"after kill in cycle {parts[0]}")
    except OSError:
        pass

    lost = sorted(s for s in local_hash if s not in broker_hashes)
    broker_only = sorted(s for s in broker_hashes if s not in local_hash)
    reused = sorted(s for s, hs in seen.items() if len(hs) > 1)
    if lost:
        violations.append(f"{len(lost)} records of the log never reached the broker: seq {ranges(lost)}")
    # A record cut from the log is on the broker only; that is allowed when the agent noticed and
    # recorded it (an `audit_rewound` record whose `lost` range holds its seq), never otherwise.
    declared = set()
    for r in local:
        if r.get("kind") == "audit_rewound":
            lost_range = (r.get("rewound") or {}).get("lost") or {}
            lo, hi = lost_range.get("from_seq"), lost_range.get("to_seq")
            if isinstance(lo, int) and isinstance(hi, int):
                declared.update(range(lo, hi + 1))
    # A segment removed after the broker acknowledged it is recorded the same way.
    removed = set()
    for r in local:
        if r.get("kind") == "audit_segment_removed" and isinstance(r.get("first_seq"), int) and isinstance(r.get("last_seq"), int):
            removed.update(range(r["first_seq"], r["last_seq"] + 1))
    broker_only = [s for s in broker_only if s not in removed]
    rewound_recorded = [s for s in broker_only if s in declared]
    broker_only = [s for s in broker_only if s not in declared]
    if broker_only:
        violations.append(
            f"{len(broker_only)} records on the broker are not in the final log and no `audit_rewound` names them: seq {ranges(broker_only)}"
        )
    for s in reused[:10]:
        where = "; ".join(f"{h[:12]}… in {', '.join(sorted(set(w))[:3])}" for h, w in seen[s].items())
        violations.append(f"seq {s} reused with different content: {where}")
        for h in seen[s]:
            r = broker_rec.get((s, h))
            if r is not None:
                violations.append(f"  broker's seq {s}: kind={r.get('kind')} ts={r.get('ts')} prev_hash={str(r.get('prev_hash'))[:12]}…")
        lr = next((r for r in local if r["seq"] == s), None)
        if lr is not None:
            violations.append(f"  log's seq {s}: kind={lr.get('kind')} ts={lr.get('ts')} prev_hash={str(lr.get('prev_hash'))[:12]}…")
    if len(reused) > 10:
        violations.append(f"… {len(reused) - 10} more reused seqs: {ranges(reused)}")
    if local_bad:
        violations.append(f"{local_bad} lines of `medic audit show --json` did not parse")

    # Nothing acts in dry-run: follow the node's mode through the log (agent_started carries the
    # mode it started in; mode_change and mode_expired switch it); an executed action other than
    # notify while the mode is dry-run, or recorded with mode dry-run, is a violation.
    mode, executed, would, outcomes, dry_execs = None, 0, 0, 0, []
    kinds = defaultdict(int)
    for r in local:
        k = r.get("kind")
        kinds[k] += 1
        if k == "agent_started":
            mode = r.get("mode")
        elif k in ("mode_change", "mode_expired"):
            mode = r.get("to")
        elif k == "action":
            act = (r.get("action") or {}).get("kind")
            if r.get("decision") == "executed" and act != "notify":
                executed += 1
                if mode == "dry-run" or r.get("mode") == "dry-run":
                    dry_execs.append(r)
            elif r.get("decision") == "would_execute":
                would += 1
        elif k == "action_outcome":
            outcomes += 1
    for r in dry_execs[:10]:
        violations.append(
            f"seq {r['seq']}: {r.get('action', {}).get('kind')} {r.get('action', {}).get('target')!r} executed with mode {r.get('mode')!r} while the node was in dry-run"
        )
    script = []
    try:
        with open(os.path.join(work, "violations")) as f:
            script = [line.rstrip("\n") for line in f if line.strip()]
    except OSError:
        pass
    violations += script
    host = [v for v in script if "(dry-run)" in v]
    if counters.get("verify") != "ok":
        violations.append(f"medic audit verify failed: {counters.get('verify_out', '')}")
    for k, what in [
        ("died_unexpectedly", "agent exited by itself in a cycle without a full disk"),
        ("final_not_caught_up", "replication did not catch up at the end"),
        ("final_stop_failed", "the final SIGTERM did not stop the agent cleanly"),
    ]:
        if int(counters.get(k, "0") or 0):
            violations.append(f"{what}: {counters[k]}")

    c = lambda k: counters.get(k, "0")
    rows = [
        ("commit", f"`{c('commit')}`"),
        ("binary", f"`{c('binary')}`"),
        ("cycles", c("cycles")),
        ("`kill -9`", c("kills")),
        ("agent already gone at the kill (full disk at start)", c("died_full_disk")),
        ("agent exited by itself, disk not full (must be 0)", c("died_unexpectedly")),
        ("broker stops / starts", f"{c('broker_stops')} / {c('broker_starts')}"),
        ("disk-full episodes", c("disk_full")),
        ("dry-run cycles checked on the host", c("dry_cycles")),
        ("log rewinds by the script (REWIND_PCT; 0 in the standard run)", c("rewinds")),
        ("large notification (BIG_KB; 0 in the standard run)", f"{c('big_kb')} KiB"),
        ("records in the log (last seq)", f"{len(local)} ({max(local_hash) if local_hash else 0})"),
        ("records on the broker (distinct seq / messages)", f"{len(broker_hashes)} / {len(broker)}"),
        ("actions executed (not notify) / would_execute / outcomes", f"{executed} / {would} / {outcomes}"),
        ("`audit_torn_tail` / `audit_recovered` records", f"{kinds['audit_torn_tail']} / {kinds['audit_recovered']}"),
        ("**lost** (in the log, not on the broker; must be 0)", str(len(lost))),
        ("cut from the log, on the broker, named by `audit_rewound`", str(len(rewound_recorded))),
        ("on the broker, not in the log, not named (must be 0)", str(len(broker_only))),
        ("**reused seqs** (must be 0)", str(len(reused))),
        ("dry-run violations, log / host (must be 0)", f"{len(dry_execs)} / {len(host)}"),
        ("`medic audit verify`", c("verify")),
        ("wall time", f"{int(c('wall_secs')) // 60} min {int(c('wall_secs')) % 60} s"),
    ]
    print("| Figure | Value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    if broker_bad:
        print(f"\n({broker_bad} broker messages did not parse as records)")
    if violations:
        print("\nVIOLATIONS:")
        for v in violations:
            print(f"- {v}")
        return 1
    print("\nno violations")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "final":
        sys.exit(final(sys.argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
