#!/usr/bin/env python3
"""bench/scale_model.py: the capacity model of docs/scale.md, recomputed from measured figures.

Every input figure below names the command that measured it and where it is written
(docs/benchmarks.md). The model turns a population (pupils, pupils at once, how fast
they arrive) and a policy (poll interval, the day's file size) into cores, nodes, Redis
shards, rooms and bandwidth, and says which component saturates first.

    python3 bench/scale_model.py                      # print the tables (markdown)
    python3 bench/scale_model.py --poll-interval 20 --file-mb 5
    python3 bench/scale_model.py --check docs/scale.md   # the doc's tables are current
    python3 bench/scale_model.py --write docs/scale.md   # regenerate them

Only the standard library: runs wherever python3 does.
"""

import argparse
import math
import os
import re
import sys

# --- Measured figures -------------------------------------------------------------------
# (value, unit, command that measured it, where the figure is written)
FIGURES = {
    "polls_per_core": (
        58_535, "queue-status polls/s on one core",
        "bench/queue_status.sh", "docs/benchmarks.md, Queue-status polls (median of 3 runs, 2026-12-01)"),
    "local_per_core": (
        108_312, "responses ecluse makes itself (404, refusals, queue pages)/s on one core",
        "bench/queue_status.sh", "docs/benchmarks.md, Queue-status polls (the 404 reference, 2026-11-30)"),
    "cache_hits_per_core": (
        74_614, "cache hits/s on one core (1 KB objects)",
        "bench/cache.sh", "docs/benchmarks.md, Cache against nginx proxy_cache"),
    "cache_us_per_mb": (
        254, "µs of proxy CPU per 1 MB cache hit",
        "bench/cache.sh", "docs/benchmarks.md, Cache against nginx proxy_cache"),
    "proxied_per_core": (
        32_799, "proxied requests/s on one core (1 KB, kept-alive origin)",
        "bench/proxy.sh", "docs/benchmarks.md, Proxy throughput (2026-11-30)"),
    "redis_cpu_us_per_arrival": (
        18.6, "µs of Redis CPU per arrival (ARRIVE script, net of the nodes' syncs)",
        "bench/fleet.sh", "docs/benchmarks.md, Fleet ceilings (2026-12-08)"),
    "redis_sync_cpu_ms_per_node_s": (
        1.83, "ms of Redis CPU per second per idle node (its syncs)",
        "bench/fleet.sh", "docs/benchmarks.md, Fleet ceilings (2026-12-08)"),
}

# --- Assumptions (not measured: say so where they are used) -----------------------------
ASSUMED = {
    "cores_per_node": (16, "cores per ecluse node"),
    "node_target_load": (0.5, "share of a node's CPU used at the peak (headroom for bursts, a node lost)"),
    "redis_target_load": (0.5, "share of a Redis core used at the peak (a failover, a burst)"),
    "nic_gbit": (10, "network per node, Gbit/s"),
    "nic_target_load": (0.7, "share of a NIC used at the peak"),
    "ramp_s": (600, "the pupils at once arrive within this (the 08:00 ramp), linearly rising: peak = 2 × average"),
    "inside_share": (0.5, "share of the pupils at once inside the ENT at the peak (the rest wait and poll)"),
    "clicks_per_min": (3, "requests per minute per pupil inside (pages, API)"),
    "cached_share": (0.3, "share of those requests answered from ecluse's cache"),
    "page_kb": (50, "size of a proxied page, KB"),
    "poll_bytes": (700, "bytes of one poll on the wire (request + JSON answer, headers)"),
    "queue_page_kb": (20, "size of the queue page an arrival gets, KB"),
}

SCENARIOS = [
    ("a region", 1_000_000, 583_000),  # 7/12 at once, as the country
    ("the country", 12_000_000, 7_000_000),
]


def v(name):
    return FIGURES[name][0]


def a(name, args):
    return getattr(args, name)


def model(pupils, at_once, args):
    """Load at the peak and what it takes."""
    ramp = a("ramp_s", args)
    arrivals = 2 * at_once / ramp  # peak of a linear ramp
    inside = at_once * a("inside_share", args)
    waiting = at_once - inside
    polls = waiting / args.poll_interval
    clicks = inside * a("clicks_per_min", args) / 60
    cached = clicks * a("cached_share", args)
    proxied = clicks - cached
    # Each pupil who gets in fetches the day's file once; in a steady surge as many get
    # in as arrive.
    downloads = arrivals
    core_s = {
        "polls": polls / v("polls_per_core"),
        "arrivals (queue page)": arrivals / v("local_per_core"),
        "pages proxied": proxied / v("proxied_per_core"),
        "pages from cache": cached / v("cache_hits_per_core"),
        "the day's file from cache": downloads * args.file_mb * v("cache_us_per_mb") / 1e6,
    }
    cores = sum(core_s.values())
    node_cores = a("cores_per_node", args) * a("node_target_load", args)
    gbit = {
        "polls": polls * a("poll_bytes", args) * 8 / 1e9,
        "queue pages": arrivals * a("queue_page_kb", args) * 1e3 * 8 / 1e9,
        "pages": clicks * a("page_kb", args) * 1e3 * 8 / 1e9,
        "the day's file": downloads * args.file_mb * 1e6 * 8 / 1e9,
    }
    gb = sum(gbit.values())
    nodes_cpu = math.ceil(cores / node_cores)
    nodes_net = math.ceil(gb / (a("nic_gbit", args) * a("nic_target_load", args)))
    nodes = max(nodes_cpu, nodes_net, 2)
    # Redis: one ARRIVE per arrival, about one CLAIM per admission (taken at the same
    # cost: not measured apart), the nodes' syncs.
    per_arrival = v("redis_cpu_us_per_arrival") / 1e6
    redis_core_s = arrivals * per_arrival * 2 + nodes * v("redis_sync_cpu_ms_per_node_s") / 1e3
    room_ceiling = a("redis_target_load", args) / (per_arrival * 2)
    rooms = math.ceil(arrivals / room_ceiling)
    shards = max(1, math.ceil(redis_core_s / a("redis_target_load", args)), 1)
    return {
        "arrivals": arrivals, "waiting": waiting, "inside": inside, "polls": polls,
        "proxied": proxied, "cached": cached, "downloads": downloads,
        "core_s": core_s, "cores": cores, "gbit": gbit, "gb": gb,
        "nodes_cpu": nodes_cpu, "nodes_net": nodes_net, "nodes": nodes,
        "conns_per_node": at_once / nodes, "redis_core_s": redis_core_s,
        "room_ceiling": room_ceiling, "rooms": rooms, "shards": shards,
    }


def saturation(args):
    """Pupils at once one unit of each component takes, at the same ratios: the smallest
    saturates first."""
    one = model(1, 1, args)  # per pupil at once
    per_node_cpu = a("cores_per_node", args) * a("node_target_load", args) / one["cores"]
    per_nic = a("nic_gbit", args) * a("nic_target_load", args) / one["gb"]
    per_room = one["room_ceiling"] / one["arrivals"]
    return sorted([
        ("one node's CPU", per_node_cpu),
        ("one node's network", per_nic),
        ("one room (one Redis core)", per_room),
    ], key=lambda x: x[1])


def shown(val):
    """A figure as benchmarks.md writes it: 58,535 or 60.5."""
    return f"{val:,}" if isinstance(val, int) else f"{val:g}"


def fmt(x):
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def render(args):
    out = []
    w = out.append
    w(f"Inputs: poll interval {args.poll_interval:g} s, the day's file {args.file_mb:g} MB, "
      f"{a('cores_per_node', args)} cores per node, ramp {a('ramp_s', args)} s, "
      f"{a('inside_share', args):.0%} inside at the peak "
      f"(`python3 bench/scale_model.py --poll-interval {args.poll_interval:g} --file-mb {args.file_mb:g}`).")
    w("")
    w("| | " + " | ".join(f"{n} ({p / 1e6:g} M pupils, {o / 1e6:g} M at once)" for n, p, o in SCENARIOS) + " |")
    w("|---|" + "---|" * len(SCENARIOS))
    ms = [model(p, o, args) for _, p, o in SCENARIOS]
    rows = [
        ("arrivals/s at the peak", lambda m: fmt(m["arrivals"])),
        ("pupils waiting / inside", lambda m: f"{fmt(m['waiting'])} / {fmt(m['inside'])}"),
        ("queue-status polls/s", lambda m: fmt(m["polls"])),
        ("requests inside/s (proxied + cache)", lambda m: f"{fmt(m['proxied'])} + {fmt(m['cached'])}"),
        ("cores busy at the peak", lambda m: fmt(m["cores"]) + " (" + ", ".join(
            f"{k} {fmt(c)}" for k, c in m["core_s"].items()) + ")"),
        ("nodes (CPU / network / kept)", lambda m: f"{m['nodes_cpu']} / {m['nodes_net']} / **{m['nodes']}**"),
        ("open connections per node", lambda m: fmt(m["conns_per_node"])),
        ("bandwidth at the peak, Gbit/s", lambda m: fmt(m["gb"]) + " (" + ", ".join(
            f"{k} {fmt(g)}" for k, g in m["gbit"].items()) + ")"),
        ("Redis CPU at the peak, cores", lambda m: fmt(m["redis_core_s"])),
        ("arrivals/s one room takes", lambda m: fmt(m["room_ceiling"])),
        ("rooms (at least) / Redis shards", lambda m: f"**{m['rooms']} / {m['shards']}**"),
    ]
    for name, f in rows:
        w(f"| {name} | " + " | ".join(f(m) for m in ms) + " |")
    w("")
    w("Saturates first (pupils at once one unit takes, at these ratios):")
    w("")
    for name, n in saturation(args):
        w(f"- {name}: {fmt(n)} pupils at once")
    return "\n".join(out) + "\n"


BEGIN = "<!-- scale_model: begin (bench/scale_model.py --write docs/scale.md) -->"
END = "<!-- scale_model: end -->"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--poll-interval", type=float, default=10.0, help="seconds (room default 10s)")
    p.add_argument("--file-mb", type=float, default=2.0, help="the day's file, MB")
    for k, (val, what) in ASSUMED.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(val), default=val, help=what)
    p.add_argument("--check", metavar="DOC", help="fail if DOC's generated part is not current")
    p.add_argument("--write", metavar="DOC", help="rewrite DOC's generated part")
    p.add_argument("--figures", action="store_true", help="print the input figures and commands")
    args = p.parse_args()
    if args.poll_interval <= 0 or args.file_mb < 0:
        p.error("--poll-interval must be > 0 and --file-mb >= 0")
    if args.figures:
        for k, (val, unit, cmd, where) in FIGURES.items():
            print(f"{k} = {val} ({unit}; `{cmd}`, {where})")
        return 0
    text = render(args)
    doc = args.check or args.write
    if not doc:
        sys.stdout.write(text)
        return 0
    with open(doc, encoding="utf-8") as f:
        body = f.read()
    if body.count(BEGIN) != 1 or body.count(END) != 1:
        print(f"{doc}: needs exactly one {BEGIN!r} and one {END!r}", file=sys.stderr)
        return 2
    head, rest = body.split(BEGIN)
    old, tail = rest.split(END)
    new = BEGIN + "\n" + text + END
    if args.check:
        # Every input figure is one benchmarks.md shows (the script's copy of it must not
        # drift from the measure it names).
        bench = os.path.join(os.path.dirname(os.path.abspath(doc)), "benchmarks.md")
        with open(bench, encoding="utf-8") as f:
            measured = f.read()
        missing = [f"{k} = {shown(val)}" for k, (val, _, _, _) in FIGURES.items()
                   if not re.search(r"(?<![\d.,])" + re.escape(shown(val)) + r"(?![\d]|[.,]\d)", measured)]
        if missing:
            print(f"{bench} does not show these figures of bench/scale_model.py: {missing}",
                  file=sys.stderr)
            return 1
        if old.strip("\n") != text.strip("\n"):
            print(f"{doc}: the model's tables are stale; run python3 bench/scale_model.py --write {doc}",
                  file=sys.stderr)
            return 1
        print(f"{doc}: the model's tables are current")
        return 0
    with open(doc, "w", encoding="utf-8") as f:
        f.write(head + new + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
