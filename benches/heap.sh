#!/usr/bin/env bash
# Where an idle connection's memory goes: the server runs under heaptrack while the load
# generator holds N idle connections (its `idle` scenario), and the heap at its peak is summed by
# what allocated it, per connection. Every connection stays until the end, so each part's peak is
# what it holds while idle; a part that only peaks for a moment (frames on their way out) is
# marked as such.
#
# Usage: benches/heap.sh [N] [shequ-loadgen options, e.g. --set limits.read_buffer_bytes=1024]
#        (default N: 10000)
# Installs Debian's heaptrack if missing; builds a release with symbols in target/heap/.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
shift $(( $# > 0 ? 1 : 0 ))
command -v heaptrack >/dev/null ||
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends heaptrack >/dev/null; }
CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1 \
  cargo build --quiet --release --bin shequ-chat --target-dir target/heap
cargo build --quiet --release -p shequ-loadgen
dir=$PWD/target/heap/run
rm -rf "$dir" && mkdir -p "$dir"
server=$PWD/target/heap/release/shequ-chat
cat > "$dir/server.sh" <<WRAP
#!/bin/sh
exec heaptrack -o $dir/heap $server "\$@"
WRAP
chmod +x "$dir/server.sh"
taskset -c 1 target/release/shequ-loadgen --server shequ --scenario idle --connections "$n" \
  --server-bin "$dir/server.sh" "$@" > /dev/null
# The load generator ends heaptrack's script, not the server under it: stopped now, the server
# closes cleanly and heaptrack writes its file.
pkill -TERM -f "^$server " || true
for _ in $(seq 100); do pgrep -f "^$server " >/dev/null || break; sleep 0.1; done
for _ in $(seq 100); do pgrep -f "heaptrack.*$dir" >/dev/null || break; sleep 0.1; done
heaptrack_print -f "$dir"/heap.*zst -F "$dir/stacks.txt" --flamegraph-cost-type peak > /dev/null
python3 benches/heap_report.py "$dir/stacks.txt" "$n"
