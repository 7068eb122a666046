#!/usr/bin/env bash
# Audit throughput with group commit (issue 13): durably logged records/s for batches of 1, 10,
# 100 and 1,000 records (one write + one fdatasync + one anchor fsync per batch), and the
# latency of one record alone (p50/p99). The log is written under MEDIC_BENCH_DIR (default
# /var/lib, the state dir's real filesystem, not a tmpfs). Results: docs/BENCHMARKS.md,
# "Audit throughput (group commit)".
# Usage: bash bench/audit_throughput.sh   (MEDIC_BENCH_SINGLE=N single appends, default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
findmnt -no SOURCE,FSTYPE,OPTIONS --target "${MEDIC_BENCH_DIR:-/var/lib}" || true
cargo bench -q -p medic --bench audit 2>&1 |
  grep -E "audit_group_commit/|time:|thrpt:|one record alone|panicked"
