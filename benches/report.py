"""Turns benches/results.jsonl into the Markdown tables of BENCHMARKS.md (medians of repeats).

`report.py --cluster benches/cluster-results.jsonl` prints the table of one instance alone
against one and two instances over Redis instead (benches/cluster.sh).
"""
import json
import statistics
import sys
from collections import defaultdict

SERVERS = ["shequ", "go-hub", "rust-floor", "node-ws"]
cluster_only = sys.argv[1] == "--cluster"
rows = [json.loads(line) for line in open(sys.argv[-1]) if line.strip()]
runs = defaultdict(list)
for r in rows:
    key = (r["scenario"], r.get("connections"), r.get("receivers"), r.get("senders"),
           r.get("offered_rate"), r["server"])
    if r.get("instances"):
        key += (r["instances"],)
    runs[key].append(r)


def median(key, field, sub=None):
    values = [r[field][sub] if sub else r[field] for r in runs.get(key, [])]
    return statistics.median(values) if values else None


def fmt(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def ratio(a, b):
    return "–" if a is None or b in (None, 0) else f"{a / b:.2f}"


FANOUT_SCENARIOS = [
    ("fanout", 1000, 1, 0, "1000 rx × 1 tx, full speed"),
    ("fanout", 100, 10, 5000, "100 rx × 10 tx, 5000 msg/s offered"),
    ("fanout", 100, 10, 1000, "100 rx × 10 tx, 1000 msg/s (100 000 deliveries/s)"),
    ("burst", 100, 10, 0, "burst: 10 tx × 200 back to back, 100 rx"),
]


def fanout_row(label, name, k):
    print(f"| {label} | {name} | {fmt(median(k, 'deliveries_per_sec'), 0)} | "
          f"{fmt(median(k, 'server_cpu_us_per_delivery'), 2)} | "
          f"{fmt(median(k, 'latency_ms', 'p50'), 2)} | {fmt(median(k, 'latency_ms', 'p99'), 2)} | "
          f"{fmt(median(k, 'latency_ms', 'max'), 2)} | {fmt(median(k, 'lost'), 0)} | "
          f"{fmt(median(k, 'disconnected'), 0)} | {fmt(median(k, 'rss_kib') / 1024)} MiB |")


FANOUT_HEADER = ("| scenario | server | deliveries/s | server CPU µs/delivery | p50 ms | p99 ms |"
                 " max ms | lost | cut off | RSS after |\n|---|---|---|---|---|---|---|---|---|---|")

if cluster_only:
    print("### One instance alone, and one or two instances over Redis\n")
    print(FANOUT_HEADER)
    for scenario, rx, tx, rate, label in FANOUT_SCENARIOS:
        for instances, name in [(None, "alone"), (1, "1 instance + Redis"),
                                (2, "2 instances + Redis")]:
            k = (scenario, None, rx, tx, rate, "shequ") + ((instances,) if instances else ())
            if k in runs:
                fanout_row(label, name, k)
    sys.exit(0)

print("### Memory per idle connection\n")
print("| connections | shequ KiB/conn | go-hub KiB/conn | rust-floor KiB/conn | node-ws KiB/conn |"
      " shequ / go-hub | shequ RSS | go-hub RSS | rust-floor RSS | node-ws RSS |")
print("|---|---|---|---|---|---|---|---|---|---|")
for n in [100, 1000, 5000, 10000]:
    k = {s: ("idle", n, None, None, None, s) for s in SERVERS}
    per = {s: median(k[s], "kib_per_connection") for s in SERVERS}
    rss = {s: median(k[s], "rss_kib") for s in SERVERS}
    mib = {s: fmt(rss[s] and rss[s] / 1024) for s in SERVERS}
    print(f"| {n} | {fmt(per['shequ'])} | {fmt(per['go-hub'])} | {fmt(per['rust-floor'])} | "
          f"{fmt(per['node-ws'])} | {ratio(per['shequ'], per['go-hub'])} | {mib['shequ']} MiB | "
          f"{mib['go-hub']} MiB | {mib['rust-floor']} MiB | {mib['node-ws']} MiB |")
start = {s: median(("idle", 100, None, None, None, s), "rss_start_kib") for s in SERVERS}
print("\nRSS right after start: " + ", ".join(
    f"{s} {fmt(start[s] and start[s] / 1024, 2)} MiB" for s in SERVERS) + ".\n")

print("### Fan-out, latency, burst\n")
print(FANOUT_HEADER)
for scenario, rx, tx, rate, label in FANOUT_SCENARIOS:
    for s in SERVERS:
        k = (scenario, None, rx, tx, rate, s)
        if k in runs:
            fanout_row(label, s, k)

print("\n### Reconnect churn (50 users reconnecting as fast as they can)\n")
print("| server | handshakes/s | server CPU µs/handshake | errors | still serving |")
print("|---|---|---|---|---|")
for s in SERVERS:
    k = ("churn", None, None, None, None, s)
    if k in runs:
        serving = all(r["still_serving"] for r in runs[k])
        print(f"| {s} | {fmt(median(k, 'handshakes_per_sec'), 0)} | "
              f"{fmt(median(k, 'server_cpu_us_per_handshake'), 1)} | {fmt(median(k, 'errors'), 0)} | "
              f"{'yes' if serving else 'NO'} |")

print("\n### Scaling: shequ-chat as the number of connections grows (one sender)\n")
print("| receivers | idle RSS | KiB per connection | deliveries/s | server CPU µs/delivery |"
      " p99 ms | lost |")
print("|---|---|---|---|---|---|---|")
for n in [100, 1000, 5000, 10000]:
    idle_key = ("idle", n, None, None, None, "shequ")
    fan = [k for k in runs if k[0] == "fanout" and k[2] == n and k[3] == 1 and k[5] == "shequ"]
    rss = median(idle_key, "rss_kib")
    row = f"| {n} | {fmt(rss and rss / 1024)} MiB | {fmt(median(idle_key, 'kib_per_connection'))} | "
    if fan:
        k = fan[0]
        row += (f"{fmt(median(k, 'deliveries_per_sec'), 0)} | "
                f"{fmt(median(k, 'server_cpu_us_per_delivery'), 2)} | "
                f"{fmt(median(k, 'latency_ms', 'p99'), 1)} | {fmt(median(k, 'lost'), 0)} |")
    else:
        row += "– | – | – | – |"
    print(row)
