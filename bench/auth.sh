#!/usr/bin/env bash
# What authentication costs on the data plane: the hello component deployed
# twice on one server with tokens on, once public and once private (every
# request carries a bearer token that is verified and stripped).
#
#   bench/auth.sh                        # wrk -t2 -c64 -d10s each
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
PORT=${PORT:-18680}
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
URL=http://127.0.0.1:$PORT
GUST_LOG=warn "$GUST" up --data-dir "$WORK/data" --listen 127.0.0.1:$PORT --api-listen 127.0.0.1:$((PORT + 1)) >"$WORK/out" 2>&1 &
PID=$!
for _ in $(seq 200); do curl -fs -o /dev/null "$GUST_API/healthz" && break; sleep 0.05; done
export GUST_TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/out")
"$GUST" deploy open "$HELLO" --public >/dev/null
"$GUST" deploy closed "$HELLO" >/dev/null
INVOKER=$("$GUST" token create --role invoker --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

run_wrk() { wrk -t2 -c"$CONNECTIONS" -d2s "$@" >/dev/null; wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$@" | python3 bench/wrk_summary.py; }
read -r O_RPS O_P50 O_P99 < <(run_wrk "$URL/open")
read -r C_RPS C_P50 C_P99 < <(run_wrk -H "Authorization: Bearer $INVOKER" "$URL/closed")
kill -TERM $PID; wait $PID 2>/dev/null || true

cat <<REPORT
### $(date -u +%Y-%m-%d), $(nproc) cores

\`wrk -t2 -c$CONNECTIONS -d$DURATION\`, hello component, tokens on.

| function | req/s | p50 / p99 (ms) |
|---|---:|---:|
| public (no token) | $O_RPS | $O_P50 / $O_P99 |
| private (invoker token verified and stripped on every request) | $C_RPS | $C_P50 / $C_P99 |

Private ÷ public: $(python3 -c "print(f'{$C_RPS/$O_RPS:.3f}')").
REPORT
