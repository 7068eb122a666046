#!/usr/bin/env bash
# More `kill -9` cycles of an audit writer of records over 1 MiB than the suite runs (20):
# every reopen must succeed (tail repaired), the chain verify, no seq be reused, and the agent
# start on the result. Prints the cycles and how many torn tails were repaired.
# Usage: bash bench/audit_kill9.sh [CYCLES]   (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
MEDIC_KILL9_CYCLES=${1:-200} cargo test -q -p medic --test e2e audit::kill_9_at_random_moments -- --nocapture 2>&1 |
  grep -E "kill -9 cycles|test result|panicked"
