#!/usr/bin/env bash
# A pair added to a loaded cluster: what the migration costs while it serves.
#
#   bench/migration.sh [--entries N] [--value-size B] [--connections C]
#
# Starts two pairs of workers and an orchestrator (release build), fills N
# keys, then runs back-to-back one-second `rcache bench` runs (GET/SET 9:1
# over the same keys) before, during and after `rcache cluster add-pair`
# of a third pair, and reports:
#   - the migration: seconds from the command to `rcache cluster wait`
#     returning, keys the new pair took, keys/s and MiB/s handed over, CPU
#     seconds of each worker over it;
#   - the client's p50/p99 and requests/s in the runs before it and in the
#     runs wholly inside it (median of the runs' figures, and the worst p99);
#   - entries and RSS of every worker after (the old pairs gave back what
#     moved).
# Numbers are printed as Markdown table rows.
set -euo pipefail

entries=1000000
value_size=100
connections=8
while [ $# -gt 0 ]; do
  case "$1" in
    --entries) entries="$2"; shift 2 ;;
    --value-size) value_size="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    *) echo "usage: $0 [--entries N] [--value-size B] [--connections C]" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
bin=target/release
work=$(mktemp -d /tmp/rcache-migration-bench.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

declare -A wport wmetrics wpid
start_worker() { # name partner-name
  "$bin/rcache-worker" --listen "127.0.0.1:${wport[$1]}" --metrics-listen "127.0.0.1:${wmetrics[$1]}" \
    --partner "127.0.0.1:${wport[$2]}" --max-memory 8GiB >"$work/$1.log" 2>&1 &
  pids+=($!)
  wpid[$1]=$!
}
ready() { # log
  for _ in $(seq 200); do grep -q ' ready ' "$1" && return 0; sleep 0.1; done
  cat "$1" >&2
  exit 1
}
for w in a1 a2 b1 b2 c1 c2; do wport[$w]=$(port); wmetrics[$w]=$(port); done
for p in a b c; do start_worker "${p}1" "${p}2"; start_worker "${p}2" "${p}1"; done
for w in a1 a2 b1 b2 c1 c2; do ready "$work/$w.log"; done
op=$(port)
cat >"$work/orchestrator.toml" <<EOF
listen = "127.0.0.1:$op"
metrics_listen = "127.0.0.1:$(port)"
workers = [["127.0.0.1:${wport[a1]}", "127.0.0.1:${wport[a2]}"], ["127.0.0.1:${wport[b1]}", "127.0.0.1:${wport[b2]}"]]
EOF
"$bin/rcache-orchestrator" --config "$work/orchestrator.toml" >"$work/orchestrator.log" 2>&1 &
pids+=($!)
ready "$work/orchestrator.log"

metric() { # metrics-port series
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s { print $2 }'
}
cpu() { awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }
rss_mib() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
bench() { # extra args...
  "$bin/rcache" bench --addr "127.0.0.1:$op" --protocol resp --connections "$connections" \
    --keys "$entries" --value-size "$value_size" --seed 1 "$@"
}

echo "filling $entries keys..." >&2
bench --ratio 0:1 --pipeline 64 --prefill --duration 1s >/dev/null 2>&1

# One-second runs until told to stop, each a CSV row stamped with its end.
runs="$work/runs.csv"
stop="$work/stop"
(
  while [ ! -e "$stop" ]; do
    bench --ratio 9:1 --duration 1s --csv "$work/run.csv" >/dev/null 2>&1 || true
    if [ -s "$work/run.csv" ]; then
      echo "$(date +%s.%N),$(tail -n 1 "$work/run.csv")" >>"$runs"
      rm -f "$work/run.csv"
    fi
  done
) &
loader=$!
sleep 8

cpus_before=""
for w in a1 a2 b1 b2 c1 c2; do cpus_before+="$(cpu "${wpid[$w]}") "; done
begin=$(date +%s.%N)
"$bin/rcache" --addr "127.0.0.1:$op" cluster add-pair "127.0.0.1:${wport[c1]}" "127.0.0.1:${wport[c2]}" >&2
"$bin/rcache" --addr "127.0.0.1:$op" cluster wait --timeout 30m >&2
end=$(date +%s.%N)
cpus_after=""
for w in a1 a2 b1 b2 c1 c2; do cpus_after+="$(cpu "${wpid[$w]}") "; done
sleep 5
touch "$stop"
wait "$loader"

held=""
for w in a1 a2 b1 b2 c1 c2; do
  held+="$w=$(metric "${wmetrics[$w]}" rcache_entries):$(rss_mib "${wpid[$w]}") "
done
taken=$(metric "${wmetrics[c1]}" rcache_migration_keys_taken_total)
bytes=$(( $(metric "${wmetrics[a1]}" rcache_migration_bytes_moved_total | cut -d. -f1) \
        + $(metric "${wmetrics[b1]}" rcache_migration_bytes_moved_total | cut -d. -f1) ))

python3 - "$entries" "$value_size" "$begin" "$end" "$taken" "$bytes" "$cpus_before" "$cpus_after" \
  "$held" "$runs" <<'EOF'
import csv, statistics, sys
n, size, begin, end, taken, moved_bytes = sys.argv[1:7]
begin, end, taken, moved_bytes = float(begin), float(end), float(taken), float(moved_bytes)
before = list(map(float, sys.argv[7].split()))
after = list(map(float, sys.argv[8].split()))
held = sys.argv[9].split()
secs = end - begin
print("| entries | value B | migration s | keys taken by the new pair | keys/s | MiB/s "
      "| CPU s over it (a1 a2 b1 b2 c1 c2) |")
print("|---|---|---|---|---|---|---|")
cpu = " ".join(f"{y - x:.1f}" for x, y in zip(before, after))
print(f"| {int(n):,} | {size} | {secs:.1f} | {taken:,.0f} | {taken / secs:,.0f} "
      f"| {moved_bytes / 2**20 / secs:.1f} | {cpu} |")
rows = []
with open(sys.argv[10]) as f:
    for r in csv.reader(f):
        stamp = float(r[0])
        rest = r[1:]
        if rest[0] == "addr":
            continue
        # columns after the stamp: ...,requests_per_s(12),...,p50_ms(16),p99_ms(17)
        elapsed = float(rest[10])
        rows.append((stamp - elapsed, stamp, float(rest[12]), float(rest[16]), float(rest[17])))
def summary(name, sel):
    if not sel:
        print(f"| {name} | 0 runs | | | |")
        return
    print(f"| {name} | {len(sel)} | {statistics.median(r[2] for r in sel):,.0f} "
          f"| {statistics.median(r[3] for r in sel):.3f} | {statistics.median(r[4] for r in sel):.3f} "
          f"| {max(r[4] for r in sel):.3f} |")
print()
print("| client runs (1 s each) | runs | requests/s (median) | p50 ms (median) | p99 ms (median) | p99 ms (worst) |")
print("|---|---|---|---|---|---|")
summary("before the migration", [r for r in rows if r[1] <= begin])
summary("during it", [r for r in rows if r[0] >= begin and r[1] <= end])
summary("after it", [r for r in rows if r[0] >= end])
print()
print("entries:RSS MiB after: " + " ".join(held))
EOF
