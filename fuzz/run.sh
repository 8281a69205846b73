#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) and prints the executions each
# ran. Needs cargo-fuzz (`cargo install cargo-fuzz`); the stable toolchain works with
# RUSTC_BOOTSTRAP=1. Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(client_message request hub api)
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  log=$(mktemp)
  cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$secs" -max_len=4096 -print_final_stats=1 \
    2>"$log" || { tail -40 "$log"; echo "$target: FOUND A CRASH (see fuzz/artifacts/$target)"; exit 1; }
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  echo "$target: ${runs:-?} executions in ${secs}s, no crash"
  rm -f "$log"
done
