#!/usr/bin/env bash
# Runs the property tests of the parsers that face hostile input for longer than the suite does
# (the suite runs each with a fixed, small case count). Usage:
#   bash bench/proptest_long.sh            # 20,000 cases each (release build)
#   CASES=200000 bash bench/proptest_long.sh
# A failure prints the minimal input proptest shrank it to; proptest also saves it under
# agent/proptest-regressions/ so that the suite replays it from then on: commit that file.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${CASES:-20000}"
# Every property test in the crate, by name (cargo test takes several filters).
TESTS=(
  # config loader (config/mod.rs)
  any_text_parses_or_errors_without_panicking
  toml_ish_text_parses_or_errors_and_a_valid_config_starts
  any_number_in_any_field_is_refused_or_works
  # playbook compiler and loader (playbooks/mod.rs)
  compile_never_panics
  load_yields_one_result_per_entry
  # MQTT command parser (control/remote.rs) and the mode's TTL chain (control/mode.rs)
  arbitrary_bytes_never_panic
  json_like_text_never_panics_and_duplicates_never_pass
  valid_commands_round_trip
  duplicate_keys_are_always_refused
  no_sequence_of_changes_keeps_a_node_live_longer_than_allowed
  # audit record bound (audit/bound.rs) and tail repair (audit/)
  any_body_is_bounded
  tail_repair_keeps_every_whole_record_whatever_the_garbage
)
echo "== ${#TESTS[@]} property tests, ${CASES} cases each"
start=$(date +%s)
log=$(mktemp)
status=0
PROPTEST_CASES="$CASES" cargo test --release -p medic --lib -- "${TESTS[@]}" >"$log" 2>&1 || status=$?
grep -E '^test |test result|panicked|minimal failing input|Test failed' "$log" || tail -20 "$log"
rm -f "$log"
echo "== done in $(( $(date +%s) - start )) s, exit ${status}"
exit "$status"
