#!/usr/bin/env bash
# Channels against one room, side by side in one run (the server on core 0, the load generator
# on core 1): idle memory with three memberships per connection, fan-out to a channel of 10
# among 1 000 such channels and 10 000 connections, and fan-out to a channel of all 10 000.
# Prints one JSON line per run (saved to benches/channels-results.jsonl) and a Markdown table of
# medians with the channel/room ratios. The small fan-out is paced (20 000 messages, 200 000
# deliveries a second) so that no receiver falls behind; unpaced, the load generator could not read as
# fast as one sender wrote and receivers were cut off as too slow in both modes.
#
# Usage: benches/channels.sh [REPEATS]        (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
cargo build --quiet --release --workspace --bins
out=benches/channels-results.jsonl
: > "$out"
run() { taskset -c 1 target/release/shequ-loadgen --server shequ "$@" | tee -a "$out"; }
for ((r = 1; r <= repeats; r++)); do
  run --scenario idle --connections 10000
  run --scenario idle --connections 10000 --group 10
  run --scenario fanout --receivers 10 --senders 1 --messages 50000 --rate 20000
  run --scenario fanout --receivers 10000 --group 10 --senders 1 --messages 50000 --rate 20000
  run --scenario fanout --receivers 10000 --senders 1 --messages 50
  run --scenario fanout --receivers 10000 --group 10 --to all --senders 1 --messages 50
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(pred, key):
    vals = [r[key] for r in rows if pred(r)]
    return statistics.median(vals), len(vals)
idle_room, n = med(lambda r: r["scenario"] == "idle" and r["group"] == 0, "kib_per_connection")
idle_ch, _ = med(lambda r: r["scenario"] == "idle" and r["group"] == 10, "kib_per_connection")
small_room, _ = med(lambda r: r["scenario"] == "fanout" and r["receivers"] == 10, "server_cpu_us_per_delivery")
small_ch, _ = med(lambda r: r["scenario"] == "fanout" and r["group"] == 10 and r["to"] == "small", "server_cpu_us_per_delivery")
all_room, _ = med(lambda r: r["scenario"] == "fanout" and r["receivers"] == 10000 and r["group"] == 0, "server_cpu_us_per_delivery")
all_ch, _ = med(lambda r: r["scenario"] == "fanout" and r["group"] == 10 and r["to"] == "all", "server_cpu_us_per_delivery")
lost = sum(r.get("lost", 0) + r.get("disconnected", 0) for r in rows)
print(f"\n{n} runs each, medians; lost or disconnected in all runs: {lost}\n")
print("| measure | one room | channels | channels / room |")
print("|---|---:|---:|---:|")
print(f"| idle, 10 000 connections, KiB per connection (channels: 3 memberships each) | {idle_room:.2f} | {idle_ch:.2f} | {idle_ch / idle_room:.2f} |")
print(f"| fan-out to 10 receivers, server CPU µs per delivery (channels: one channel of 10 among 1 000, 10 000 connections) | {small_room:.2f} | {small_ch:.2f} | {small_ch / small_room:.2f} |")
print(f"| fan-out to all 10 000, server CPU µs per delivery (channels: the default channel) | {all_room:.2f} | {all_ch:.2f} | {all_ch / all_room:.2f} |")
PY
