#!/usr/bin/env bash
# Anti-entropy at scale: what a round costs two partner workers.
#
#   bench/antientropy.sh [--entries N] [--max-memory SIZE] [--value-size B]
#
# Starts two partner workers (release build), writes N keys to each one
# directly while the other is frozen (SIGSTOP), so every key differs by
# version (or, when --max-memory is below what N entries take, each side
# also keeps a different set of keys), and then reports:
#   - the repair: seconds, rounds, entries and bytes sent, CPU of each
#     worker until both complete rounds that send nothing;
#   - an idle round: CPU per round of each worker once they agree;
#   - each worker's RSS and entries.
# Numbers are printed as one Markdown table row per phase.
set -euo pipefail

entries=1000000
max_memory=16GiB
value_size=20
while [ $# -gt 0 ]; do
  case "$1" in
    --entries) entries="$2"; shift 2 ;;
    --max-memory) max_memory="$2"; shift 2 ;;
    --value-size) value_size="$2"; shift 2 ;;
    *) echo "usage: $0 [--entries N] [--max-memory SIZE] [--value-size B]" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
bin=target/release
work=$(mktemp -d /tmp/rcache-ae-bench.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pa=$(port); pb=$(port); ma=$(port); mb=$(port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start() { # port metrics partner log
  "$bin/rcache-worker" --listen "127.0.0.1:$1" --metrics-listen "127.0.0.1:$2" \
    --partner "127.0.0.1:$3" --max-memory "$max_memory" --anti-entropy-interval 2s \
    --refill-wait 0s >"$4" 2>&1 &
  pids+=($!)
}
start "$pa" "$ma" "$pb" "$work/a.log"; a=${pids[-1]}
start "$pb" "$mb" "$pa" "$work/b.log"; b=${pids[-1]}
for f in a b; do
  for _ in $(seq 100); do grep -q ' ready ' "$work/$f.log" && break; sleep 0.1; done
  grep -q ' ready ' "$work/$f.log" || { cat "$work/$f.log" >&2; exit 1; }
done

metric() { # metrics-port series
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s { print $2 }'
}
cpu() { # pid -> seconds of CPU (user + system)
  awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$1/stat"
}
rss_mib() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
load() { # port
  "$bin/rcache" bench --addr "127.0.0.1:$1" --protocol resp --connections 4 --pipeline 64 \
    --keys "$entries" --value-size "$value_size" --ratio 0:1 --prefill --duration 1s \
    --seed 1 >/dev/null
}

echo "loading $entries keys into each worker (the other frozen)..." >&2
kill -STOP "$b"; load "$pa"; kill -CONT "$b"
kill -STOP "$a"; load "$pb"; kill -CONT "$a"

snapshot() { # -> rounds_a rounds_b sent_a sent_b bytes_a bytes_b cpu_a cpu_b
  echo "$(metric "$ma" rcache_anti_entropy_rounds_total) $(metric "$mb" rcache_anti_entropy_rounds_total)" \
    "$(metric "$ma" rcache_anti_entropy_sent_entries_total) $(metric "$mb" rcache_anti_entropy_sent_entries_total)" \
    "$(metric "$ma" rcache_anti_entropy_sent_bytes_total) $(metric "$mb" rcache_anti_entropy_sent_bytes_total)" \
    "$(cpu "$a") $(cpu "$b")"
}
# Quiet: three rounds on each side in which neither sends an entry.
quiet() {
  local s0 s1
  read -r -a s0 <<<"$(snapshot)"
  while :; do
    sleep 0.5
    read -r -a s1 <<<"$(snapshot)"
    if [ "${s1[2]}" != "${s0[2]}" ] || [ "${s1[3]}" != "${s0[3]}" ]; then return 1; fi
    if [ "$((${s1[0]} - ${s0[0]}))" -ge 3 ] && [ "$((${s1[1]} - ${s0[1]}))" -ge 3 ]; then return 0; fi
  done
}

begin=$(date +%s.%N)
read -r -a s0 <<<"$(snapshot)"
until quiet; do :; done
read -r -a s1 <<<"$(snapshot)"
end=$(date +%s.%N)
idle_rounds=10
read -r -a i0 <<<"$(snapshot)"
while [ "$((${i0[0]} + idle_rounds))" -gt "$(metric "$ma" rcache_anti_entropy_rounds_total)" ]; do sleep 0.5; done
read -r -a i1 <<<"$(snapshot)"

python3 - "$entries" "$max_memory" "$begin" "$end" "${s0[*]}" "${s1[*]}" "${i0[*]}" "${i1[*]}" \
  "$(metric "$ma" rcache_entries)" "$(metric "$mb" rcache_entries)" "$(rss_mib "$a")" "$(rss_mib "$b")" <<'EOF'
import sys
n, mem, begin, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
s0, s1, i0, i1 = (list(map(float, a.split())) for a in sys.argv[5:9])
ea, eb, ra, rb = sys.argv[9:13]
d = [y - x for x, y in zip(s0, s1)]
i = [y - x for x, y in zip(i0, i1)]
rounds = max(i[0], 1)
print("| entries | max_memory | repair: s | rounds (a, b) | entries sent | MiB sent | CPU s (a, b) "
      "| idle round: CPU ms (a, b) | entries held (a, b) | RSS MiB (a, b) |")
print("|---|---|---|---|---|---|---|---|---|---|")
print(f"| {int(n):,} | {mem} | {end - begin:.1f} (includes 3 quiet rounds) | {d[0]:.0f}, {d[1]:.0f} "
      f"| {d[2] + d[3]:,.0f} | {(d[4] + d[5]) / 2**20:.1f} | {d[6]:.2f}, {d[7]:.2f} "
      f"| {i[6] / rounds * 1000:.1f}, {i[7] / max(i[1], 1) * 1000:.1f} "
      f"| {int(float(ea)):,}, {int(float(eb)):,} | {ra}, {rb} |")
EOF
