#!/usr/bin/env bash
# N requests to a guest that loops (testbed /spin, --timeout-ms 30000),
# abandoned by their clients after HOLD seconds: the server's CPU
# afterwards, how soon another request is served, and what was billed
# (bench/abandoned.py).
#
#   bench/abandoned.sh     # N=1000 HOLD=2
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000}
HOLD=${HOLD:-2}
PORT=${PORT:-18890}
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
ulimit -n 65536 2>/dev/null || true

GUST_LOG=warn "$GUST" up --data-dir "$WORK/data" --listen 127.0.0.1:$PORT \
  --api-listen 127.0.0.1:$((PORT + 1)) >"$WORK/out" 2>&1 &
PID=$!
for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$((PORT + 1))/healthz" && break; sleep 0.05; done
export GUST_API=http://127.0.0.1:$((PORT + 1))
GUST_TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/out")
export GUST_TOKEN
"$GUST" deploy tb "$TESTBED" --timeout-ms 30000 >/dev/null

RESULT=$(python3 bench/abandoned.py "$PID" 127.0.0.1 "$PORT" /tb/spin "$N" "$HOLD" "$GUST_TOKEN" "$GUST")
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
PID=

cat <<REPORT
### $(date -u +%Y-%m-%d), $(nproc) cores: abandoned requests

$RESULT
REPORT
