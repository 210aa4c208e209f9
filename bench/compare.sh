#!/usr/bin/env bash
# Side-by-side benchmark of rcache and its peers, in one run, on loopback:
#
#   redis        one redis-server
#   twemproxy    nutcracker in front of two redis-servers (each key stored once)
#   rcache-worker        one rcache worker
#   rcache-orchestrator  an orchestrator in front of two worker pairs (each
#                        write stored twice)
#
# Every target gets the same redis-benchmark load: SET, GET and INCR
# (100-byte values, 50 clients, 100,000 keys), then HSET of two fields
# (a 100-byte value and a count) and HGET of one, of 100,000 hashes,
# pipeline 1 and 16; each run is repeated
# (3 times by default, the targets interleaved) and the table shows the
# median requests/s and p99 with the ratios rcache/peer. Then memory per
# entry: 1,000,000 entries (16-byte keys, 100-byte incompressible values)
# loaded into one rcache worker and one redis-server, compared as RSS.
#
# Every run also records the CPU time per request of the load generator and
# of the target's processes (/proc), so the table shows where the cycles go.
#
# With --baseline DIR (a directory holding another build's rcache-worker and
# rcache-orchestrator, e.g. the previous commit's target/release), that
# build runs beside this one as rcache-worker@base and
# rcache-orchestrator@base, interleaved with the rest, and the table adds
# this build's CPU per request against it.
#
# Results: bench/results/<time>/{results.csv,memory.csv,table.md,chart.svg}.
# Usage: bench/compare.sh [--repeats N] [--requests N] [--entries N] [--out DIR]
#                         [--baseline DIR]
# (CI runs it small, as a smoke test: --repeats 1 --requests 5000 --entries 20000.)
set -euo pipefail
# Decimal points in every tool's output (bash's `time` follows the locale).
export LC_ALL=C
cd "$(dirname "$0")/.."

repeats=3
requests_p1=200000     # requests per test at pipeline 1
entries=1000000        # entries loaded for the memory comparison
out=""
baseline=""
while [ $# -gt 0 ]; do
  case "$1" in
    --repeats) repeats=$2; shift 2 ;;
    --requests) requests_p1=$2; shift 2 ;;
    --entries) entries=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    *) echo "usage: $0 [--repeats N] [--requests N] [--entries N] [--out DIR] [--baseline DIR]" >&2; exit 2 ;;
  esac
done
requests_p16=$((requests_p1 * 8))
if [ -n "$baseline" ]; then
  for b in rcache-worker rcache-orchestrator; do
    [ -x "$baseline/$b" ] || { echo "error: $baseline/$b is missing" >&2; exit 2; }
  done
fi
out=${out:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

need() { # need <command> <debian package>
  if ! command -v "$1" >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      echo "==> installing $2"
      # Without starting the package's own service (this script starts
      # its own instances on free ports).
      (
        if [ ! -e /usr/sbin/policy-rc.d ]; then
          printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
          trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        fi
        apt-get update -qq && apt-get install -y -qq "$2" >/dev/null
      ) || true
    fi
    command -v "$1" >/dev/null || { echo "error: $1 is missing (apt install $2)" >&2; exit 1; }
  fi
}
need redis-server redis-server
need redis-benchmark redis-tools
need redis-cli redis-tools
need nutcracker nutcracker
need python3 python3

echo "==> cargo build --release"
cargo build --release --quiet
bin=target/release

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { # free_port [count]: distinct ports nobody listens on now
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "${1:-1}"
}

wait_port() { # wait_port <port>
  for _ in $(seq 100); do
    if redis-cli -p "$1" ping >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "error: nothing answers on port $1 (logs in $out)" >&2
  exit 1
}

start_redis() { # start_redis <port>
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --logfile "$out/redis-$1.log" &
  pids+=($!)
  wait_port "$1"
}

start_worker() { # start_worker <port> [<partner port>]  (bins=DIR: another build's)
  local args=(--listen "127.0.0.1:$1" --metrics-listen 127.0.0.1:0 --log-level warn)
  [ $# -gt 1 ] && args+=(--partner "127.0.0.1:$2")
  "${bins:-$bin}/rcache-worker" "${args[@]}" >"$out/worker-$1.log" 2>&1 &
  pids+=($!)
  wait_port "$1"
}

start_cluster() { # start_cluster <orchestrator port> <4 worker ports>  (bins=DIR as above)
  # Sets cluster_front (the orchestrator's pid) and cluster_backends.
  local orch=$1 a=$2 b=$3 c=$4 d=$5
  cluster_backends=""
  start_worker "$a" "$b"; cluster_backends="$cluster_backends ${pids[-1]}"
  start_worker "$b" "$a"; cluster_backends="$cluster_backends ${pids[-1]}"
  start_worker "$c" "$d"; cluster_backends="$cluster_backends ${pids[-1]}"
  start_worker "$d" "$c"; cluster_backends="$cluster_backends ${pids[-1]}"
  "${bins:-$bin}/rcache-orchestrator" --listen "127.0.0.1:$orch" --metrics-listen 127.0.0.1:0 \
    --log-level warn 127.0.0.1 "$a" 127.0.0.1 "$b" 127.0.0.1 "$c" 127.0.0.1 "$d" \
    >"$out/orchestrator-$orch.log" 2>&1 &
  pids+=($!); cluster_front=$!
  wait_port "$orch"
}

# --- start every target --------------------------------------------------
read -r redis_port tw_a tw_b tw_port tw_stats worker_port w1 w2 w3 w4 orch_port mem_redis mem_worker \
  <<<"$(free_port 13)"
start_redis "$redis_port"; redis_pids=${pids[-1]}
start_redis "$tw_a"; tw_backends=${pids[-1]}
start_redis "$tw_b"; tw_backends="$tw_backends ${pids[-1]}"
cat >"$out/nutcracker.yml" <<EOF
pool:
  listen: 127.0.0.1:$tw_port
  hash: fnv1a_64
  distribution: ketama
  redis: true
  timeout: 1000
  servers:
   - 127.0.0.1:$tw_a:1
   - 127.0.0.1:$tw_b:1
EOF
nutcracker -c "$out/nutcracker.yml" -s "$tw_stats" -o "$out/nutcracker.log" &
pids+=($!); tw_pids=$!
wait_port "$tw_port"

start_worker "$worker_port"; worker_pids=${pids[-1]}
start_cluster "$orch_port" "$w1" "$w2" "$w3" "$w4"
orch_pids=$cluster_front; orch_backends=$cluster_backends

# name:port:the process clients talk to:the processes behind it (the CPU
# time of both is measured)
targets=("redis:$redis_port:$redis_pids:" "rcache-worker:$worker_port:$worker_pids:"
  "twemproxy:$tw_port:$tw_pids:$tw_backends"
  "rcache-orchestrator:$orch_port:$orch_pids:$orch_backends")

if [ -n "$baseline" ]; then
  read -r base_worker b1 b2 b3 b4 base_orch <<<"$(free_port 6)"
  bins=$baseline start_worker "$base_worker"; base_worker_pids=${pids[-1]}
  bins=$baseline start_cluster "$base_orch" "$b1" "$b2" "$b3" "$b4"
  base_orch_pids=$cluster_front; base_backends=$cluster_backends
  # Each next to its counterpart, so both meet the same moment of the machine.
  targets=("redis:$redis_port:$redis_pids:" "rcache-worker:$worker_port:$worker_pids:"
    "rcache-worker@base:$base_worker:$base_worker_pids:"
    "twemproxy:$tw_port:$tw_pids:$tw_backends"
    "rcache-orchestrator:$orch_port:$orch_pids:$orch_backends"
    "rcache-orchestrator@base:$base_orch:$base_orch_pids:$base_backends")
fi

# CPU time (user + system) of processes, in clock ticks.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

# --- throughput and latency ---------------------------------------------
csv="$out/results.csv"
# client_us, server_us, backend_us: CPU time per request of redis-benchmark,
# of the process it talks to, and of the redis-servers or workers behind
# twemproxy and the orchestrator.
echo "repeat,target,test,pipeline,rps,p50_ms,p99_ms,client_us,server_us,backend_us" >"$csv"
TIMEFORMAT='%U %S'
value100=$(printf 'v%.0s' $(seq 100))
for repeat in $(seq "$repeats"); do
  for pipeline in 1 16; do
    n=$requests_p1
    [ "$pipeline" = 16 ] && n=$requests_p16
    for target in "${targets[@]}"; do
      IFS=: read -r name port front backends <<<"$target"
      printf '==> repeat %s/%s  %-20s pipeline %-2s ' "$repeat" "$repeats" "$name" "$pipeline"
      for test in set get incr hset hget; do
        # HSET and HGET are custom commands (redis-benchmark's own `-t hset`
        # grows one hash without bound): 100,000 hashes of two fields.
        case $test in
          hset) load=(HSET "hash:__rand_int__" value "$value100" visits 1) ;;
          hget) load=(HGET "hash:__rand_int__" value) ;;
          *) load=(-t "$test" -d 100) ;;
        esac
        # shellcheck disable=SC2086
        front_before=$(cpu_ticks $front); back_before=$(cpu_ticks $backends)
        { time redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -r 100000 \
            -n "$n" -P "$pipeline" --csv "${load[@]}" >"$out/run.csv" 2>/dev/null; } 2>"$out/run.time"
        # shellcheck disable=SC2086
        front_after=$(cpu_ticks $front); back_after=$(cpu_ticks $backends)
        python3 bench/row.py "$out/run.csv" "$out/run.time" "$repeat" "$name" "$pipeline" \
          "$n" "$((front_after - front_before))" "$((back_after - back_before))" "$hz" \
          "${test^^}"
      done | tee -a "$csv" |
        awk -F, '{printf "%s %.0f/s p99 %sms cpu/req %s+%sus (client %sus)  ", $3, $5, $7, $9, $10, $8} END {print ""}'
    done
  done
done
rm -f "$out/run.csv" "$out/run.time"

# --- memory per entry -----------------------------------------------------
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
echo "==> memory: $entries entries, 16-byte keys, 100-byte incompressible values"
python3 - "$out/load.resp" "$entries" <<'EOF'
import random, sys
rng = random.Random(7)
alphabet = bytes(range(33, 127))
with open(sys.argv[1], "wb") as f:
    for i in range(int(sys.argv[2])):
        key = b"key:%012d" % i
        value = bytes(rng.choices(alphabet, k=100))
        f.write(b"*3\r\n$3\r\nSET\r\n$16\r\n%s\r\n$100\r\n%s\r\n" % (key, value))
EOF
mem_csv="$out/memory.csv"
echo "target,entries,rss_before_kb,rss_after_kb,bytes_per_entry" >"$mem_csv"
# A fresh redis-server for this (the throughput runs left keys in the first).
start_redis "$mem_redis"; mem_redis_pid=${pids[-1]}
start_worker "$mem_worker"; mem_worker_pid=${pids[-1]}
for target in "redis:$mem_redis:$mem_redis_pid" "rcache-worker:$mem_worker:$mem_worker_pid"; do
  IFS=: read -r name port pid <<<"$target"
  before=$(rss_kb "$pid")
  redis-cli -p "$port" --pipe <"$out/load.resp" >"$out/load-$name.log"
  entries=$(redis-cli -p "$port" dbsize)
  sleep 1
  after=$(rss_kb "$pid")
  per=$(( (after - before) * 1024 / entries ))
  echo "$name,$entries,$before,$after,$per" | tee -a "$mem_csv"
done
rm -f "$out/load.resp"

# --- table and chart -------------------------------------------------------
python3 bench/report.py "$out" | tee "$out/table.md"
echo "==> results in $out (results.csv, memory.csv, table.md, chart.svg)"
