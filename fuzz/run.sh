#!/usr/bin/env bash
# Runs each fuzz target for a bounded time, one after another, and prints how many
# inputs each executed and whether it found anything.
#
#   fuzz/run.sh                      # every target, 60 s each
#   FUZZ_TIME=300 fuzz/run.sh        # 5 minutes each
#   fuzz/run.sh head_scan config     # only these
#   FUZZ_ARGS="-max_len=32768" fuzz/run.sh chunked_body   # extra libFuzzer flags
#
# New inputs go to fuzz/corpus-work/<target> (git-ignored); the seeds in
# fuzz/corpus/<target> are read, never written. A crash leaves its input in
# fuzz/artifacts/<target>/ and makes the script exit non-zero after the other targets.
set -euo pipefail
cd "$(dirname "$0")"

time_each="${FUZZ_TIME:-60}"
read -r -a extra <<< "${FUZZ_ARGS:-}"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build

mkdir -p logs
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus-work/$t" "corpus/$t"
  log="logs/$t.log"
  status=ok
  if ! cargo +nightly fuzz run "$t" "corpus-work/$t" "corpus/$t" -- \
      -max_total_time="$time_each" -timeout=25 -print_final_stats=1 "${extra[@]}" \
      >"$log" 2>&1; then
    status="FAILED (see fuzz/$log and fuzz/artifacts/$t/)"
    failed=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  printf '%-16s %12s executions (budget %ss)  %s\n' "$t" "${runs:-?}" "$time_each" "$status"
done
exit "$failed"
