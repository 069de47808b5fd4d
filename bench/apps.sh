#!/usr/bin/env bash
# Applications, side by side in one run: a request through three functions
# (a calls b calls c, in process) deployed as an application, next to the
# same three deployed as plain functions, and `hello` beside them; with
# BASELINE, the same on an older build of Gust. Prints Markdown.
#
#   bench/apps.sh
#   BASELINE=/path/to/an/older/gust DURATION=10s bench/apps.sh
#
# Needs: wrk, curl, python3. Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
BASE_PORT=${BASE_PORT:-18380}
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
cargo build --release -q -p gust
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p hello -p testbed
GUST=target/release/gust
HELLO=examples/target/wasm32-wasip2/release/hello.wasm
TESTBED=examples/target/wasm32-wasip2/release/testbed.wasm

WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_http() { for _ in $(seq 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; echo "bench: $1 never answered" >&2; exit 1; }

# start NAME BINARY PORT → its admin token (authentication on, as in production)
start() {
  GUST_LOG=warn "$2" up --data-dir "$WORK/$1" --listen 127.0.0.1:"$3" --api-listen 127.0.0.1:$(($3 + 1)) >"$WORK/$1.out" 2>&1 &
  PIDS+=("$!")
  wait_http "http://127.0.0.1:$(($3 + 1))/healthz"
  sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/$1.out"
}
# as BINARY PORT TOKEN ARGS… : a client command against that server
as() { local bin=$1 port=$2 token=$3; shift 3; GUST_API=http://127.0.0.1:$((port + 1)) GUST_TOKEN=$token "$bin" "$@" >/dev/null; }

PORT=$BASE_PORT
TOKEN=$(start this "$GUST" "$PORT")
as "$GUST" "$PORT" "$TOKEN" deploy hello "$HELLO" --public
for f in a b c; do as "$GUST" "$PORT" "$TOKEN" deploy "$f" "$TESTBED" --public --app shop; done
as "$GUST" "$PORT" "$TOKEN" app release shop a=1 b=1 c=1
for f in pa pb pc; do as "$GUST" "$PORT" "$TOKEN" deploy "$f" "$TESTBED" --public; done
if [ -n "${BASELINE:-}" ]; then
  B_PORT=$((BASE_PORT + 2))
  B_TOKEN=$(start baseline "$BASELINE" "$B_PORT")
  as "$BASELINE" "$B_PORT" "$B_TOKEN" deploy hello "$HELLO" --public
  for f in pa pb pc; do as "$BASELINE" "$B_PORT" "$B_TOKEN" deploy "$f" "$TESTBED" --public; done
fi

# wrk → "rps p50_ms p99_ms"
load() {
  wrk -t2 -c64 -d2s "$1" >/dev/null
  wrk -t2 -c64 -d"$DURATION" --latency "$1" | python3 bench/wrk_summary.py
}
row() { read -r rps p50 p99 < <(load "$2"); echo "| $1 | $rps | $p50 | $p99 |"; }

echo "Load: \`wrk -t2 -c64 -d$DURATION\` per row, rows in turn, $ROUNDS rounds. Chain: \`/chain?next=…\` of the testbed, three invocations and two in-process calls per request."
echo
echo "| target | req/s | p50 ms | p99 ms |"
echo "|---|---:|---:|---:|"
for round in $(seq "$ROUNDS"); do
  row "round $round: hello" "http://127.0.0.1:$PORT/hello"
  if [ -n "${BASELINE:-}" ]; then row "round $round: hello, baseline build" "http://127.0.0.1:$B_PORT/hello"; fi
  row "round $round: chain through an application" "http://127.0.0.1:$PORT/a/chain?name=X&next=b,c"
  row "round $round: chain through plain functions" "http://127.0.0.1:$PORT/pa/chain?name=X&next=pb,pc"
  if [ -n "${BASELINE:-}" ]; then row "round $round: chain through plain functions, baseline build" "http://127.0.0.1:$B_PORT/pa/chain?name=X&next=pb,pc"; fi
done
