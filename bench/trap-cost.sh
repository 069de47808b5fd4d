#!/usr/bin/env bash
# What a trapping request costs the host against one that answers: server
# CPU time (all threads, /proc/PID/stat, minus an idle baseline) per
# request for testbed's `/trap` and `/`, sequential requests on one
# keep-alive connection, in alternating batches; then Σ metered guest CPU
# against the process's CPU for a mixed workload of traps and
# `/busy?ms=N` (bench/trap_cost.py).
#
#   bench/trap-cost.sh     # REQUESTS=2000 ROUNDS=5 MIXED=400 BUSY_MS=5
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-2000}
ROUNDS=${ROUNDS:-5}
MIXED=${MIXED:-400}
BUSY_MS=${BUSY_MS:-5}
PORT=${PORT:-18880}
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
cargo build --release -q -p gust
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target -p testbed
GUST=${CARGO_TARGET_DIR:-target}/release/gust
TESTBED=examples/target/wasm32-wasip2/release/testbed.wasm
WORK=$(mktemp -d)
PID=
trap '[[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT

GUST_LOG=warn "$GUST" up --data-dir "$WORK/data" --listen 127.0.0.1:$PORT \
  --api-listen 127.0.0.1:$((PORT + 1)) >"$WORK/out" 2>&1 &
PID=$!
for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$((PORT + 1))/healthz" && break; sleep 0.05; done
export GUST_API=http://127.0.0.1:$((PORT + 1))
GUST_TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/out")
export GUST_TOKEN
"$GUST" deploy tb "$TESTBED" --public >/dev/null

RESULT=$(python3 bench/trap_cost.py "$PID" "http://127.0.0.1:$PORT/tb/" "$REQUESTS" "$ROUNDS" "$MIXED" "$BUSY_MS" "$GUST")
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
PID=

cat <<REPORT
### $(date -u +%Y-%m-%d), $(nproc) cores: trap cost

$RESULT
REPORT
