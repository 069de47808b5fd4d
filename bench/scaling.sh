#!/usr/bin/env bash
# Scale to zero under load, and how many functions one node holds.
#
# Burst: hello deployed with a 1 s keep-alive and left idle until it is
# scaled to zero (`gust scale` says so); then 256 connections open at
# once, one request each (bench/wave, 256 threads released by a barrier:
# p50/p99/max, errors), and, once it is cold again, `wrk -c256` for
# DURATION from cold (p50/p99, errors).
# Targets: p99 ≤ 50 ms, 0 errors.
#
# Density: FUNCTIONS copies of hello deployed under different names
# (through the API, 1 s keep-alive); once all are scaled to zero, the
# server's idle RSS (target ≤ 512 MB); then CALLS requests on functions
# picked at random: cold (each found scaled to zero) and warm (all loaded
# by the first pass).
#
#   bench/scaling.sh                  # FUNCTIONS=10000 CALLS=2000 DURATION=5s
#   GUST=/path/to/an/older/gust bench/scaling.sh   # the same run on another build
set -euo pipefail
cd "$(dirname "$0")/.."

FUNCTIONS=${FUNCTIONS:-10000}
CALLS=${CALLS:-2000}
DURATION=${DURATION:-5s}
PORT=${PORT:-18880}
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
cargo build --release -q -p gust
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p hello
cargo build --release -q --manifest-path bench/wave/Cargo.toml
WAVE=bench/wave/target/release/gust-bench-wave
GUST=${GUST:-target/release/gust}
HELLO=examples/target/wasm32-wasip2/release/hello.wasm
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

GUST_LOG=warn "$GUST" up --data-dir "$WORK/data" --listen 127.0.0.1:$PORT \
  --api-listen 127.0.0.1:$((PORT + 1)) --scale-tick-ms 100 >"$WORK/out" 2>&1 &
PID=$!
for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$((PORT + 1))/healthz" && break; sleep 0.05; done
export GUST_API=http://127.0.0.1:$((PORT + 1))
GUST_TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/out")
export GUST_TOKEN

# until_cold NAME: waits until NAME is scaled to zero.
until_cold() {
  for _ in $(seq 100); do
    "$GUST" scale "$1" --json | python3 -c 'import json,sys; sys.exit(0 if not json.load(sys.stdin)["warm"] else 1)' && return
    sleep 0.1
  done
  echo "bench: $1 never scaled to zero" >&2; exit 1
}
metric() { curl -fs -H "authorization: Bearer $GUST_TOKEN" "$GUST_API/metrics" | sed -n "s/^$1 //p"; }

"$GUST" deploy hello "$HELLO" --public --keep-alive 1s >/dev/null
# One request at a time on a function scaled to zero (its component
# loaded from disk on the request path), 20 times.
SINGLES=()
for _ in $(seq 20); do
  until_cold hello
  SINGLES+=("$(curl -fs -o /dev/null -w '%{time_total}' "http://127.0.0.1:$PORT/hello/")")
done
read -r S_P50 S_MAX < <(python3 -c "import statistics,sys; v=[float(x)*1000 for x in sys.argv[1:]]; print(f'{statistics.median(v):.2f} {max(v):.2f}')" "${SINGLES[@]}")
until_cold hello
read -r W_P50 W_P99 W_MAX W_ERR < <("$WAVE" "http://127.0.0.1:$PORT/hello/" 256)
until_cold hello
COLD_BEFORE=$(metric gust_request_cold_starts_total)
read -r B_RPS B_P50 B_P99 < <(wrk -t2 -c256 -d"$DURATION" --latency "http://127.0.0.1:$PORT/hello/" | python3 bench/wrk_summary.py)
COLD_AFTER=$(metric gust_request_cold_starts_total)

RSS_EMPTY=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
DEPLOY_S=$(python3 bench/scaling.py deploy "$GUST_API" "$GUST_TOKEN" "$HELLO" "$FUNCTIONS" f)
for _ in $(seq 600); do [ "$(metric gust_functions_warm)" = 0 ] && break; sleep 0.2; done
sleep 1
RSS_IDLE=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
WARM_IDLE=$(metric gust_functions_warm)
read -r C_P50 C_P99 C_MEAN C_ERR < <(python3 bench/scaling.py invoke "http://127.0.0.1:$PORT" f "$FUNCTIONS" "$CALLS" 1)
# Warm: random calls among 100 of them, each called again well within its
# 1 s keep-alive (a first pass loads them).
python3 bench/scaling.py invoke "http://127.0.0.1:$PORT" f 100 "$CALLS" 2 >/dev/null
read -r H_P50 H_P99 H_MEAN H_ERR < <(python3 bench/scaling.py invoke "http://127.0.0.1:$PORT" f 100 "$CALLS" 3)
RSS_BUSY=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)

cat <<REPORT
### $(date -u +%Y-%m-%d), $(nproc) cores

Burst from zero (hello, scaled to zero first):

| load | p50 (ms) | p99 (ms) | max (ms) | errors |
|---|---:|---:|---:|---:|
| one request on a function scaled to zero (curl, 20 times) | $S_P50 | | $S_MAX | 0 |
| 256 connections at once, one request each | $W_P50 | $W_P99 | $W_MAX | $W_ERR |
| \`wrk -t2 -c256 -d$DURATION\` from cold ($B_RPS req/s; cold starts $((COLD_AFTER - COLD_BEFORE))) | $B_P50 | $B_P99 | | 0 |

Density: $FUNCTIONS functions (copies of hello, one compiled artifact on disk), deployed in $DEPLOY_S s.

| | |
|---|---:|
| RSS, no functions | $((RSS_EMPTY / 1024)) MB |
| RSS, $FUNCTIONS functions, all scaled to zero (warm: $WARM_IDLE) | $((RSS_IDLE / 1024)) MB |
| request on a function scaled to zero, random order: p50 / p99 / mean (ms), errors | $C_P50 / $C_P99 / $C_MEAN, $C_ERR |
| warm request, random order among 100: p50 / p99 / mean (ms), errors | $H_P50 / $H_P99 / $H_MEAN, $H_ERR |
| RSS after | $((RSS_BUSY / 1024)) MB |
REPORT
