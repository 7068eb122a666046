#!/usr/bin/env bash
# The cost of one socket-table read at 100, 1,000 and 10,000 sockets (agent/benches/sockets.rs),
# run in a network namespace of its own (as root) so that only the benchmark's sockets are in
# the table. Results go to docs/BENCHMARKS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench sockets --no-run
exec unshare --net sh -c 'ip link set lo up && cargo bench --offline --bench sockets -- --noplot "$@"' sh "$@"
