"""Checks a small bench/compare.sh run (CI): every target answered every
test (SET, GET, INCR, HSET, HGET) at both pipeline depths, both memory loads completed, the chart exists.

Usage: check_smoke.py <results dir>
"""

import csv
import sys

out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/results.csv")))
answered = {(r["target"], r["test"], r["pipeline"]) for r in rows if float(r["rps"]) > 0}
# 4 targets × SET, GET, INCR, HSET, HGET × pipeline 1 and 16.
assert len(answered) == 40, f"not every target, test and depth answered: {sorted(answered)}"
# CPU per request: the load generator always spends some; the targets'
# clock ticks (10 ms) may round a short run to 0, but not every run.
assert all(float(r["client_us"]) > 0 for r in rows), "load generator CPU not measured"
assert any(float(r["server_us"]) > 0 for r in rows), "target CPU never measured"
assert any(
    float(r["backend_us"]) > 0 for r in rows if r["target"] in ("twemproxy", "rcache-orchestrator")
), "the CPU of the processes behind a proxy never measured"
memory = list(csv.DictReader(open(f"{out}/memory.csv")))
assert [m["target"] for m in memory] == ["redis", "rcache-worker"], memory
assert len({m["entries"] for m in memory}) == 1 and int(memory[0]["entries"]) > 0, memory
assert open(f"{out}/chart.svg").read().startswith("<svg"), "no chart"
print(f"bench smoke run: 40 of 40 runs answered, {memory[0]['entries']} entries loaded in each")
