"""Summarises a bench/compare.sh run: the median of the repeats for every
target, test and pipeline depth, the ratios rcache/peer, whether each
target of docs/benchmarks.md is met, and an SVG chart drawn from the same
numbers.

Usage: report.py <results dir>   (reads results.csv and memory.csv there,
writes chart.svg there, prints the tables as Markdown)
"""

import csv
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
rows = list(csv.DictReader(open(out / "results.csv")))
memory = {r["target"]: r for r in csv.DictReader(open(out / "memory.csv"))}

TARGETS = ["redis", "rcache-worker", "twemproxy", "rcache-orchestrator"]
# Another build run beside this one (compare.sh --baseline).
BASELINES = ["rcache-worker@base", "rcache-orchestrator@base"]
PEER = {"rcache-worker": "redis", "rcache-orchestrator": "twemproxy"}
TESTS = [
    ("SET", "1"), ("GET", "1"), ("SET", "16"), ("GET", "16"),
    ("INCR", "1"), ("INCR", "16"),
    ("HSET", "1"), ("HGET", "1"), ("HSET", "16"), ("HGET", "16"),
]
# The targets of docs/benchmarks.md and the chart are about SET and GET;
# INCR (a read-modify-write rcache decides on one worker and replicates)
# and HSET/HGET of two-field hashes (merged field by field on both
# workers) are reported beside them.
TARGETED = TESTS[:4]
REPEATS = len({r["repeat"] for r in rows})

median = {}
cpu = {}
for target in TARGETS + BASELINES:
    for test, pipeline in TESTS:
        picked = [
            r
            for r in rows
            if r["target"] == target and r["test"] == test and r["pipeline"] == pipeline
        ]
        if picked:
            median[target, test, pipeline] = (
                statistics.median(float(r["rps"]) for r in picked),
                statistics.median(float(r["p99_ms"]) for r in picked),
            )
            cpu[target, test, pipeline] = (
                statistics.median(float(r["server_us"]) for r in picked),
                statistics.median(float(r["backend_us"]) for r in picked),
                statistics.median(float(r["client_us"]) for r in picked),
            )

print(f"Median of {REPEATS} runs; requests/s (p99 ms).\n")
print("| test | redis | rcache worker | worker/redis | twemproxy | rcache orchestrator | orchestrator/twemproxy |")
print("|---|---|---|---|---|---|---|")
verdicts = []
for test, pipeline in TESTS:
    cells = [f"{test} P{pipeline}"]
    for target in TARGETS:
        rps, p99 = median.get((target, test, pipeline), (0.0, 0.0))
        cells.append(f"{rps:,.0f} ({p99:.3f})")
        if target in PEER:
            peer_rps, peer_p99 = median.get((PEER[target], test, pipeline), (0.0, 0.0))
            ratio = rps / peer_rps if peer_rps else 0.0
            cells.append(f"**{ratio:.2f}×**")
            if (test, pipeline) not in TARGETED:
                continue
            met = ratio >= 1.2
            what = f"{target} {test} P{pipeline}: {ratio:.2f}× {PEER[target]} (target ≥ 1.2×)"
            if target == "rcache-orchestrator":
                met = met and p99 <= peer_p99
                what += f", p99 {p99:.3f} vs {peer_p99:.3f} ms (target: not higher)"
            verdicts.append((met, what))
    print("| " + " | ".join(cells) + " |")

print(
    "\nCPU time per request, µs (median): the process the load generator talks to "
    "(+ the redis-servers or workers behind it), and in brackets the load generator "
    "(redis-benchmark, one thread). Requests/s times all of it is the share of "
    "the two cores in use; requests/s times the load generator's is its share "
    "of its one core.\n"
)
print("| test | redis | rcache worker | twemproxy | rcache orchestrator |")
print("|---|---|---|---|---|")
for test, pipeline in TESTS:
    cells = [f"{test} P{pipeline}"]
    for target in TARGETS:
        server, backend, client = cpu.get((target, test, pipeline), (0.0, 0.0, 0.0))
        behind = f" + {backend:.2f}" if target in ("twemproxy", "rcache-orchestrator") else ""
        cells.append(f"{server:.2f}{behind} (client {client:.2f})")
    print("| " + " | ".join(cells) + " |")

if any(key[0] in BASELINES for key in cpu):
    print(
        "\nThis build against the baseline build: CPU time per request, µs "
        "(median; the target and the workers behind it), and the ratio.\n"
    )
    print("| test | worker | baseline | ratio | orchestrator + workers | baseline | ratio |")
    print("|---|---|---|---|---|---|---|")
    for test, pipeline in TESTS:
        cells = [f"{test} P{pipeline}"]
        for target in ["rcache-worker", "rcache-orchestrator"]:
            now = sum(cpu.get((target, test, pipeline), (0.0, 0.0, 0.0))[:2])
            base = sum(cpu.get((target + "@base", test, pipeline), (0.0, 0.0, 0.0))[:2])
            ratio = f"{now / base:.3f}" if base else "-"
            cells += [f"{now:.2f}", f"{base:.2f}", ratio]
        print("| " + " | ".join(cells) + " |")

entries = int(next(iter(memory.values()))["entries"]) if memory else 0
print(f"\nMemory: RSS growth for {entries:,} entries (16-byte keys, 100-byte values).\n")
print("| target | entries | bytes per entry |")
print("|---|---|---|")
for target in ["redis", "rcache-worker"]:
    m = memory.get(target)
    if m:
        print(f"| {target} | {int(m['entries']):,} | {int(m['bytes_per_entry'])} |")
if "redis" in memory and "rcache-worker" in memory:
    ratio = int(memory["rcache-worker"]["bytes_per_entry"]) / int(memory["redis"]["bytes_per_entry"])
    verdicts.append((ratio <= 0.8, f"worker RSS per entry: {ratio:.2f}× redis (target ≤ 0.8×)"))

print("\nTargets:\n")
for met, what in verdicts:
    print(f"- {'met' if met else 'NOT met'}: {what}")

# --- the chart: requests/s per test, one bar per target; memory beside ----
COLORS = {
    "redis": "#d62728",
    "rcache-worker": "#1f77b4",
    "twemproxy": "#ff7f0e",
    "rcache-orchestrator": "#2ca02c",
}
width, height = 860, 420
left, top, plot_h = 70, 50, 300
group_w, bar_w = 135, 28
top_rps = max(v[0] for v in median.values()) * 1.1
svg = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
    f'font-family="sans-serif" font-size="12">',
    f'<rect width="{width}" height="{height}" fill="white"/>',
    f'<text x="{left}" y="24" font-size="15" font-weight="bold">'
    f"Requests/s (median of {REPEATS}), 100-byte values, 50 clients</text>",
]
for i in range(6):
    value = top_rps * i / 5
    y = top + plot_h - plot_h * i / 5
    svg.append(f'<line x1="{left}" x2="{left + 4 * group_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
    svg.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value / 1000:.0f}k</text>')
for g, (test, pipeline) in enumerate(TARGETED):
    x0 = left + g * group_w + 10
    for t, target in enumerate(TARGETS):
        rps = median.get((target, test, pipeline), (0.0, 0.0))[0]
        h = plot_h * rps / top_rps
        x = x0 + t * bar_w
        svg.append(
            f'<rect x="{x}" y="{top + plot_h - h:.1f}" width="{bar_w - 4}" height="{h:.1f}" '
            f'fill="{COLORS[target]}"><title>{target} {test} P{pipeline}: {rps:,.0f}/s</title></rect>'
        )
    svg.append(
        f'<text x="{x0 + 2 * bar_w - 2}" y="{top + plot_h + 18}" text-anchor="middle">'
        f"{test}, pipeline {pipeline}</text>"
    )
# Memory panel.
mx = left + 4 * group_w + 60
svg.append(f'<text x="{mx}" y="{top - 6}" font-weight="bold">bytes per entry (RSS)</text>')
top_mem = max((int(m["bytes_per_entry"]) for m in memory.values()), default=1) * 1.15
for t, target in enumerate(["redis", "rcache-worker"]):
    m = memory.get(target)
    per = int(m["bytes_per_entry"]) if m else 0
    h = plot_h * per / top_mem
    x = mx + 10 + t * 60
    svg.append(
        f'<rect x="{x}" y="{top + plot_h - h:.1f}" width="44" height="{h:.1f}" fill="{COLORS[target]}"/>'
    )
    svg.append(f'<text x="{x + 22}" y="{top + plot_h - h - 4:.1f}" text-anchor="middle">{per}</text>')
# Legend.
for t, target in enumerate(TARGETS):
    x = left + t * 170
    y = top + plot_h + 45
    svg.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{COLORS[target]}"/>')
    svg.append(f'<text x="{x + 18}" y="{y}">{target}</text>')
svg.append("</svg>")
(out / "chart.svg").write_text("\n".join(svg) + "\n")
