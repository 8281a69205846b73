"""Sums the peak heap of benches/heap.sh's run (heaptrack's stacks, one per line with its bytes)
by what allocated it, and prints bytes per connection as a Markdown table."""
import collections
import sys

MOMENT = "frames waiting in send queues (a moment, not held)"
# The first rule whose every word is in a stack names it. Within one address, heaptrack lists
# inlined frames innermost first, so the rules match words anywhere in the stack.
RULES = [
    ("tungstenite's read buffer (`limits.read_buffer_bytes`)", ["from_partially_read", "BytesMut"]),
    ("async-tungstenite's two waker handles", ["without_handshake"]),
    ("the connection's write buffer (`src/socket.rs`, freed once written)", ["encode_text"]),
    ("the connection's write buffer (`src/socket.rs`, freed once written)", ["socket::Socket"]),
    ("tungstenite's write buffer (a control frame at most)", ["FrameCodec::buffer_frame"]),
    ("the async-io reactor's entry for the socket", ["Reactor::insert_io"]),
    ("the async-io reactor's entry for the socket", ["Async$LT$T$GT$::new"]),
    (MOMENT, ["Hub::broadcast"]),
    ("channels' tables of members and users", ["Hub::enter", "hashbrown"]),
    ("the hub's tables of connections and users", ["Hub::connect", "hashbrown"]),
    ("the hub's ordered sets (heartbeats, token expiries)", ["Hub::connect", "BTree"]),
    ("the hub's own per connection (ids, name, lists, send queue)", ["Hub::enter"]),
    ("the hub's own per connection (ids, name, lists, send queue)", ["Hub::connect"]),
    ("the connection's task (its state across awaits)", ["accept_loop", "spawn"]),
]


def part(stack):
    for name, words in RULES:
        if all(w in stack for w in words):
            return name
    return "start-up and the rest"


parts = collections.Counter()
for line in open(sys.argv[1]):
    stack, cost = line.rstrip().rsplit(" ", 1)
    parts[part(stack)] += int(cost)
n = int(sys.argv[2])
print(f"\n| {n:,} idle connections: heap at its peak | bytes per connection |\n|---|---|")
for name, cost in parts.most_common():
    print(f"| {name} | {cost / n:,.0f} |")
held = sum(parts.values()) - parts[MOMENT]
print(f"| **held, in all** (the allocator adds 8–16 bytes per block) | **{held / n:,.0f}** |")
