"""One results.csv row of bench/compare.sh: redis-benchmark's CSV output of
one test, with the CPU time per request of the load generator (from bash's
`time`), of the process it talks to and of the processes behind it (clock
ticks from /proc).

Usage: row.py <redis-benchmark csv> <time output: user system> <repeat>
       <target> <pipeline> <requests> <front ticks> <backend ticks>
       <ticks per second> [<test name>]

The test name replaces redis-benchmark's (a custom command's is the whole
command line).
"""

import csv
import sys

run_csv, run_time, repeat, name, pipeline, n, ticks, backend_ticks, hz = sys.argv[1:10]
test_name = sys.argv[10] if len(sys.argv) > 10 else None
n = int(n)
user, system = (float(x) for x in open(run_time).read().split())
client_us = (user + system) * 1e6 / n
server_us = int(ticks) / int(hz) * 1e6 / n
backend_us = int(backend_ticks) / int(hz) * 1e6 / n
rows = list(csv.reader(open(run_csv)))
header = rows[0]
for row in rows[1:]:
    r = dict(zip(header, row))
    print(
        ",".join(
            [
                repeat,
                name,
                test_name or r["test"],
                pipeline,
                r["rps"],
                r["p50_latency_ms"],
                r["p99_latency_ms"],
                f"{client_us:.2f}",
                f"{server_us:.2f}",
                f"{backend_us:.2f}",
            ]
        )
    )
