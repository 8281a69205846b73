#!/usr/bin/env bash
# How the cost grows toward 100 000 connections, side by side with the Go hub in one run (each
# server pinned to core 0, the load generator to core 1), at each size N:
#   idle      RSS per connection, and the kernel's slab and TCP memory per connection
#   broadcast one message to all N, 2 a second: time until the last receiver has it
#   wave      a steady chat (10 people in a channel, 200 msg/s) while all N are pinged at the
#             rate 100 000 connections make at the default 30 s, against pings off (shequ
#             only: the Go hub has no channels, its chat goes to everyone)
#   storm     SIGTERM with N clients that reconnect as the page does (backoff with jitter,
#             ?since=): time until all are back with every message, failed attempts, losses
#   knobs     idle and broadcast with limits.socket_send_buffer/recv_buffer at 16 KiB, idle with
#             limits.read_buffer_bytes at 1 KiB (the default until 2026-12-01), broadcast and
#             wave with limits.tcp_nodelay off, the storm with limits.listen_backlog 4096
# and once: server CPU per delivery at 1 000 receivers × 1 sender (600 msg/s, nobody cut
# off) beside the bare smol + async-tungstenite floor.
#
# Usage: benches/scale.sh [--build-only | --no-build] [--memory-only] [--shequ-only] [N ...]
#        (default sizes: 10000 50000 100000; --memory-only runs the idle scenarios alone, for a
#        machine whose timings mean nothing, such as an emulated one; --shequ-only leaves out the
#        Go hub, to measure a change of this server's against its figures of a run before)
# One process holds a descriptor per connection: a size above the open files hard limit
# (`ulimit -Hn`, less a margin) is replaced by the largest that fits, and the table says so.
# Raise the limit as root first (`ulimit -Hn 1048576`) to run 100 000 as asked; where it cannot
# be raised (a container without CAP_SYS_RESOURCE), benches/scale-vm.sh runs this script in a
# virtual machine.
# Prints one JSON line per run (saved to benches/scale-results.jsonl) and a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
build=yes measure=yes timed=yes servers="shequ go-hub"
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --build-only) measure=no ;;
    --no-build) build=no ;;
    --memory-only) timed=no ;;
    --shequ-only) servers=shequ ;;
    *) echo "scale.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
sizes=("${@:-10000 50000 100000}")
read -r -a sizes <<< "${sizes[*]}"

if [ "$build" = yes ]; then
  if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/gorilla/websocket ]; then
    apt-get update -qq && apt-get install -y -qq golang-go golang-github-gorilla-websocket-dev >/dev/null
  fi
  mkdir -p target/peers
  (cd benches/peers/go-hub && GO111MODULE=off GOPATH=/usr/share/gocode go build -o ../../../target/peers/go-hub .)
  cargo build --quiet --release --workspace --bins
fi
[ "$measure" = yes ] || exit 0

hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
fits=$(( (hard - 1000) / 1000 * 1000 ))
out=benches/scale-results.jsonl
: > "$out"
# Transparent huge pages ("always" backs a process's memory with 2 MiB pages where it can, which
# can make RSS larger for the same data), as "[madvise]" or the like.
thp=$(grep -o '\[[a-z]*\]' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo none)
echo "{\"scenario\":\"machine\",\"kernel\":\"$(uname -r)\",\"nproc\":$(nproc),\"timed\":\"$timed\",\"emulated\":\"${SCALE_EMULATED:-}\",\"huge_pages\":\"$thp\"}" | tee -a "$out"
# A run that fails (a server that cannot hold N, as the Go hub at 60 000 in an emulated machine)
# is recorded as failed, and the others go on.
run() {
  if ! taskset -c 1 target/release/shequ-loadgen "$@" | tee -a "$out"; then
    echo "{\"scenario\":\"failed\",\"arguments\":\"$*\"}" | tee -a "$out"
  fi
}
# This server's idle runs. In an emulated machine (--memory-only), everything is 20 to 50 times
# slower: an `online` flush to 100 000 then takes longer than the 10 s between two, and the
# Pings of 100 000 connections every 30 s take more than the core, so frames would always be on
# their way out when memory is read, and connecting 100 000 did not finish in 50 minutes. There
# `online` flushes and Pings are (nearly) off, and memory is read settled, as after the 3 s wait
# on a real machine.
idle() {
  if [ "$timed" = yes ]; then run "$@"
  else run "$@" --set presence_interval_ms=3600000 --ping-secs 3600; fi
}
# The runs that measure time: skipped with --memory-only.
timed() { if [ "$timed" = yes ]; then run "$@"; fi; }
done_sizes=" "
for asked in "${sizes[@]}"; do
  n=$asked
  if (( n > fits )); then
    n=$fits
    echo "{\"scenario\":\"limited\",\"asked\":$asked,\"connections\":$n,\"hard_limit\":$hard}" | tee -a "$out"
  fi
  [[ "$done_sizes" == *" $n "* ]] && continue
  done_sizes+="$n "
  ping_secs=$(( n * 30 / 100000 > 2 ? n * 30 / 100000 : 2 ))
  for server in $servers; do
    if [ "$server" = shequ ]; then idle --server shequ --scenario idle --connections "$n"
    else run --server "$server" --scenario idle --connections "$n"; fi
    timed --server "$server" --scenario fanout --receivers "$n" --senders 1 --messages 10 --rate 2
    timed --server "$server" --scenario storm --connections "$n" --messages 20 --secs 120
  done
  for ping in 0 "$ping_secs"; do
    timed --server shequ --scenario wave --connections "$n" --senders 10 --rate 200 --secs 20 --ping-secs "$ping"
  done
  # The knobs, each against the defaults above.
  idle --server shequ --scenario idle --connections "$n" --set limits.read_buffer_bytes=1024
  idle --server shequ --scenario idle --connections "$n" --socket-buffer 16384
  timed --server shequ --scenario fanout --receivers "$n" --senders 1 --messages 10 --rate 2 --socket-buffer 16384
  timed --server shequ --scenario fanout --receivers "$n" --senders 1 --messages 10 --rate 2 --set limits.tcp_nodelay=false
  timed --server shequ --scenario wave --connections "$n" --senders 10 --rate 200 --secs 20 --ping-secs "$ping_secs" --set limits.tcp_nodelay=false
  timed --server shequ --scenario storm --connections "$n" --messages 20 --secs 120 --set limits.listen_backlog=4096
done
for server in shequ rust-floor; do
  timed --server "$server" --scenario fanout --receivers 1000 --senders 1 --messages 3000 --rate 600
done
# (A virtual machine of benches/scale-vm.sh has no Python: its host prints the table.)
if command -v python3 >/dev/null; then python3 benches/scale_report.py "$out"; fi
