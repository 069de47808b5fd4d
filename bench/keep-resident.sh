#!/usr/bin/env bash
# Measures Gust's throughput for several `--memory-keep-resident-bytes`
# settings of the pooling allocator (how much of a pool slot's memory is
# reset with memset instead of madvise), hello component, same load each.
#
#   bench/keep-resident.sh                    # wrk -t2 -c64 -d5s per setting
#   SETTINGS="0 1048576" DURATION=10s bench/keep-resident.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
SETTINGS=${SETTINGS:-"0 65536 1048576 2097152 8388608"}
PORT=${PORT:-18380}

for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
cargo build --release -q -p gust
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p hello
GUST=target/release/gust
HELLO=examples/target/wasm32-wasip2/release/hello.wasm
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
export GUST_API=http://127.0.0.1:$((PORT + 1))

echo "| keep resident (bytes) | req/s | p50 ms | p99 ms |"
echo "|---:|---:|---:|---:|"
for setting in $SETTINGS; do
  rm -rf "$WORK/data"
  GUST_LOG=warn "$GUST" up --dev --data-dir "$WORK/data" --listen 127.0.0.1:$PORT --api-listen 127.0.0.1:$((PORT + 1)) \
    --memory-keep-resident-bytes "$setting" >/dev/null 2>&1 &
  PID=$!
  for _ in $(seq 200); do curl -fs -o /dev/null "$GUST_API/healthz" && break; sleep 0.05; done
  "$GUST" deploy hello "$HELLO" >/dev/null
  wrk -t2 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PORT/hello" >/dev/null
  read -r rps p50 p99 < <(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$PORT/hello" | python3 bench/wrk_summary.py)
  echo "| $setting | $rps | $p50 | $p99 |"
  kill -TERM $PID; wait $PID 2>/dev/null || true
done
