#!/usr/bin/env bash
# Fan-out with several instances over Redis against one instance alone, side by side in one run:
# one instance alone (no Redis), one instance over Redis (the broker's cost), two instances over
# Redis (clients spread over both). Every server process and Redis are pinned to core 0, the load
# generator to core 1: on this 2-core machine the instances share one core, so this measures what
# the cluster path costs, not how far it scales with more cores.
#
# Usage: benches/cluster.sh [REPEATS]    (default 3; the table shows medians)
# Needs: Debian's redis-server (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}

command -v redis-server >/dev/null || {
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
}
# The same binary for every row: built with the redis feature, in a target dir of its own.
cargo build --quiet --release --features redis --target-dir target/redis --bin shequ-chat
cargo build --quiet --release -p shequ-loadgen

out=benches/cluster-results.jsonl
: > "$out"
run() {
  taskset -c 1 target/release/shequ-loadgen --server-bin target/redis/release/shequ-chat "$@" |
    tee -a "$out"
}
for ((r = 1; r <= repeats; r++)); do
  for instances in 0 1 2; do
    run --instances "$instances" --scenario fanout --receivers 1000 --senders 1 --messages 500
    run --instances "$instances" --scenario fanout --receivers 100 --senders 10 --messages 500 --rate 5000
    run --instances "$instances" --scenario fanout --receivers 100 --senders 10 --messages 500 --rate 1000
    run --instances "$instances" --scenario burst --receivers 100 --senders 10 --messages 200
  done
done
python3 benches/report.py --cluster "$out"
