#!/usr/bin/env bash
# The whole benchmark table, side by side: shequ-chat, the Go hub it replaces, the bare
# smol + async-tungstenite floor, and a minimal Node `ws` server (the three peers are in
# benches/peers/). Each server runs pinned to core 0, the load generator to core 1.
# Prints one JSON line per run (also saved to benches/results.jsonl) and a Markdown table.
#
# Usage: benches/run.sh [REPEATS]        (default 3; the table shows medians)
# Needs nothing outside this repository: the peers are in benches/peers/ (Debian's golang-go and
# golang-github-gorilla-websocket-dev, npm's ws and Debian's nodejs are installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}

if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/gorilla/websocket ]; then
  apt-get update -qq && apt-get install -y -qq golang-go golang-github-gorilla-websocket-dev >/dev/null
fi
command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
mkdir -p target/peers
(cd benches/peers/go-hub && GO111MODULE=off GOPATH=/usr/share/gocode go build -o ../../../target/peers/go-hub .)
cargo build --quiet --release --workspace --bins
[ -d benches/peers/node-ws/node_modules/ws ] ||
  npm ci --prefix benches/peers/node-ws --no-audit --no-fund --silent

out=benches/results.jsonl
: > "$out"
run() { taskset -c 1 target/release/shequ-loadgen "$@" | tee -a "$out"; }
for ((r = 1; r <= repeats; r++)); do
  for server in shequ go-hub rust-floor node-ws; do
    for n in 100 1000 5000 10000; do
      run --server "$server" --scenario idle --connections "$n"
    done
    run --server "$server" --scenario fanout --receivers 1000 --senders 1 --messages 500
    run --server "$server" --scenario fanout --receivers 100 --senders 10 --messages 500 --rate 5000
    run --server "$server" --scenario fanout --receivers 100 --senders 10 --messages 500 --rate 1000
    run --server "$server" --scenario burst --receivers 100 --senders 10 --messages 200
    run --server "$server" --scenario churn --users 50 --secs 5
  done
  # How shequ-chat's throughput grows with the number of receivers (one sender).
  for n in 100 1000 5000 10000; do
    run --server shequ --scenario fanout --receivers "$n" --senders 1 --messages $((500000 / n))
  done
done
python3 benches/report.py "$out"
