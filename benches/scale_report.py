"""Turns benches/scale-results.jsonl (benches/scale.sh) into the Markdown tables of
BENCHMARKS.md's "Toward 100 000" section: one run per row, as measured."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]


def fmt(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


SETTLED = "presence_interval_ms=3600000"  # scale.sh's idle runs in an emulated machine


def knob(r):
    """The setting a run tries, if any (beyond SETTLED)."""
    return next((s for s in r.get("set", []) if s != SETTLED), None)


def find(scenario, server, n, buffer=0, setting=None, **extra):
    for r in rows:
        if (r["scenario"] == scenario and r["server"] == server and r.get("socket_buffer", 0) == buffer
                and knob(r) == setting
                and n in (r.get("connections"), r.get("receivers"))
                and all(r.get(k) == v for k, v in extra.items())):
            return r
    return None


def table(header, lines):
    """A Markdown table, left out when the run has no row for it (`scale.sh --memory-only`)."""
    if lines:
        print("\n| " + " | ".join(header) + " |")
        print("|---" * len(header) + "|")
        print("\n".join(lines))


for r in rows:
    if r["scenario"] == "machine":
        how = {"tcg": ", emulated by qemu (TCG): memory only", "kvm": ", a KVM virtual machine"}
        thp = f", transparent huge pages {r['huge_pages']}" if "huge_pages" in r else ""
        print(f"- Linux {r['kernel']}, {r['nproc']} cores{how.get(r['emulated'], '')}{thp}.")
    if r["scenario"] == "failed":
        print(f"- Failed (the load generator stopped): `shequ-loadgen {r['arguments']}`.")
    if r["scenario"] == "limited":
        print(f"- {r['asked']:,} asked, {r['connections']:,} run: the open files hard limit here is "
              f"{r['hard_limit']:,}, and one process holds a descriptor per connection.")
sizes = sorted({r["connections"] for r in rows if r["scenario"] == "idle"})

def side_by_side(header, scenario, cells):
    """One scenario at each size, this server and the Go hub: `cells(r)` gives the cells of a row
    after N and the server."""
    lines = []
    for n in sizes:
        for server in ["shequ", "go-hub"]:
            r = find(scenario, server, n)
            if r:
                lines.append(f"| {n:,} | {server} | " + " | ".join(cells(r)) + " |")
    table(["N", "server"] + header, lines)


def idle_cells(r):
    slab, tcp = r["kernel_slab_kib_per_connection"], r["kernel_tcp_kib_per_connection"]
    return [fmt(r["kib_per_connection"], 2), fmt(slab, 2), fmt(tcp, 2),
            fmt(r["kib_per_connection"] + slab + tcp, 2)]


def broadcast_cells(r):
    t = r["to_last_receiver_ms"]
    return [f"{fmt(t['p50'])} / {fmt(t['p99'])} / {fmt(t['max'])}",
            fmt(r["server_cpu_us_per_delivery"], 2), str(r["lost"])]


def storm_cells(r):
    causes = ", ".join(f"{v} {k}" for k, v in r["failures"].items())
    failed = f"{r['failed_attempts']}{f' ({causes})' if causes else ''}"
    return [fmt(r["listening_secs"], 2), fmt(r["all_back_secs"], 2), fmt(r["all_recovered_secs"], 2),
            failed, str(r["never_back"]), str(r["lost"]), str(r["duplicates"])]


side_by_side(["RSS KiB/conn", "kernel slab KiB/conn", "kernel TCP KiB/conn", "user + kernel KiB/conn"],
             "idle", idle_cells)
if any(SETTLED in r.get("set", []) for r in rows):
    print("- This server's idle runs with `online` flushes and Pings every hour instead of every "
          "second and 30 s: emulated, a flush to everyone outlasts the time between two.")
for r in rows:
    if r["scenario"] == "idle" and r.get("huge_pages_kib"):
        print(f"- {r['server']} at {r['connections']:,}: {r['huge_pages_kib'] / 1024:.1f} MiB of its RSS in "
              "transparent huge pages.")
side_by_side(["broadcast: to last receiver p50 / p99 / max ms", "server CPU µs/delivery", "lost"],
             "fanout", broadcast_cells)

lines = []
for n in sizes:
    for r in [x for x in rows if x["scenario"] == "wave" and x["connections"] == n and "set" not in x]:
        lat, slices = r["latency_ms"], r["pings_per_10ms"]
        pings = "off" if r["pings_per_sec"] == 0 else f"every {r['ping_secs']} s"
        lines.append(f"| {n:,} | {pings} | {fmt(r['pings_per_sec'], 0)} | {slices['max']} ({slices['p50']}) | "
                     f"{fmt(lat['p50'], 2)} / {fmt(lat['p99'], 2)} / {fmt(lat['max'], 2)} | "
                     f"{fmt(100 * r['server_cpu_share'], 0)}% |")
table(["N", "pings", "pings/s", "busiest 10 ms (median)", "chat p50 / p99 / max ms", "server CPU"], lines)

side_by_side(["listening again s", "all back s", "all recovered s", "failed attempts", "never back",
              "messages lost", "duplicates"], "storm", storm_cells)

lines = []
knobs = [("defaults", 0, None), ("socket buffers 16 KiB", 16384, None),
         ("tcp_nodelay off", 0, "limits.tcp_nodelay=false"),
         ("listen_backlog 4096", 0, "limits.listen_backlog=4096"),
         ("read buffer 1 KiB", 0, "limits.read_buffer_bytes=1024")]
for n in sizes:
    ping_rows = [x for x in rows if x["scenario"] == "wave" and x["connections"] == n and x["pings_per_sec"] > 0]
    for label, buffer, setting in knobs:
        idle, fan = find("idle", "shequ", n, buffer, setting), find("fanout", "shequ", n, buffer, setting)
        wave = next((x for x in ping_rows if knob(x) == setting and buffer == 0), None)
        storm = find("storm", "shequ", n, buffer, setting)
        cells = ["–"] * 4
        if idle:
            kernel = idle["kernel_slab_kib_per_connection"] + idle["kernel_tcp_kib_per_connection"]
            cells[0] = f"{fmt(idle['kib_per_connection'], 2)} + {fmt(kernel, 2)}"
        if fan:
            t = fan["to_last_receiver_ms"]
            cells[1] = f"{fmt(t['p50'])} / {fmt(t['max'])}, {fmt(fan['server_cpu_us_per_delivery'], 2)}"
        if wave:
            cells[2] = f"{fmt(wave['latency_ms']['p99'], 2)}, {fmt(100 * wave['server_cpu_share'], 0)}%"
        if storm:
            cells[3] = f"{fmt(storm['all_back_secs'], 2)}, {storm['failed_attempts']}"
        if cells != ["–"] * 4:
            lines.append(f"| {n:,} | {label} | " + " | ".join(cells) + " |")
table(["N", "knob", "idle: RSS + kernel KiB/conn", "broadcast to last p50 / max ms, µs/delivery",
       "wave: chat p99 ms, server CPU", "storm: all back s, failed"], lines)

lines = []
floor = {}
for server in ["shequ", "rust-floor"]:
    r = find("fanout", server, 1000, offered_rate=600)
    if r:
        floor[server] = r["server_cpu_us_per_delivery"]
        lines.append(f"| {server} | {fmt(r['deliveries_per_sec'], 0)} | {fmt(r['server_cpu_us_per_delivery'], 2)} | "
                     f"{fmt(r['latency_ms']['p99'], 2)} | {r['disconnected']} |")
table(["1 000 rx × 1 tx, 600 msg/s", "deliveries/s", "server CPU µs/delivery", "p99 ms", "cut off"], lines)
if len(floor) == 2:
    print(f"\nshequ / floor, CPU per delivery: {floor['shequ'] / floor['rust-floor']:.2f}")
