#!/usr/bin/env bash
# The key-value store on the embedded store:
#  1. guests reading a key through `wasi:keyvalue` (one invocation = one get);
#  2. guests incrementing a counter (one invocation = one durable write);
#  3. change triggers: values written through the control API (each answer
#     after a durable commit), and the change events they produce delivered
#     end to end to a trivial function (in order per key).
#
#   bench/kv.sh                          # wrk -t2 -c64 -d10s each
#   DURATION=5s CONNECTIONS=32 bench/kv.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
PORT=${PORT:-18580}
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
cargo build --release -q -p gust
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p hello -p testbed
GUST=target/release/gust
WASM=examples/target/wasm32-wasip2/release
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
export GUST_API=http://127.0.0.1:$((PORT + 1))
URL=http://127.0.0.1:$PORT
GUST_LOG=warn "$GUST" up --dev --data-dir "$WORK/data" --listen 127.0.0.1:$PORT --api-listen 127.0.0.1:$((PORT + 1)) >/dev/null 2>&1 &
PID=$!
for _ in $(seq 200); do curl -fs -o /dev/null "$GUST_API/healthz" && break; sleep 0.05; done
"$GUST" deploy kvt "$WASM/testbed.wasm" >/dev/null
"$GUST" kv put greeting hello --bucket bench >/dev/null

run_wrk() { wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$@" | python3 bench/wrk_summary.py; }
read -r BASE_RPS BASE_P50 BASE_P99 < <(run_wrk "$URL/kvt/")
read -r GET_RPS GET_P50 GET_P99 < <(run_wrk "$URL/kvt/kv/get?bucket=bench&key=greeting")
read -r INC_RPS INC_P50 INC_P99 < <(run_wrk "$URL/kvt/kv/incr?bucket=bench&key=hits&by=1")
HITS=$("$GUST" kv get hits --bucket bench)

# Change triggers: `sink` (hello) subscribed to bucket `data`.
"$GUST" deploy sink "$WASM/hello.wasm" --concurrency 64 >/dev/null
"$GUST" trigger add sink --bucket data >/dev/null
python3 - "$GUST_API" >"$WORK/e2e" <<'PY' &
import re, sys, time, urllib.request
api = sys.argv[1]
def counters():
    text = urllib.request.urlopen(api + "/metrics").read().decode()
    get = lambda o: int(re.search(r'gust_events_total\{outcome="%s"\} (\d+)' % o, text).group(1))
    return get("accepted"), get("delivered")
start, last_change = None, None
while True:
    accepted, delivered = counters()
    now = time.monotonic()
    if accepted and start is None:
        start = now
    if start and delivered == accepted and now - start > 1.0:
        print(f"{accepted} {now - start:.3f}")
        break
    time.sleep(0.02)
PY
WATCHER=$!
read -r PUT_RPS PUT_P50 PUT_P99 < <(run_wrk -s bench/put-keys.lua "$GUST_API")
wait $WATCHER
read -r TOTAL ELAPSED <"$WORK/e2e"
kill -TERM $PID; wait $PID 2>/dev/null || true

cat <<REPORT
### $(date -u +%Y-%m-%d), $(nproc) cores, embedded store

Load: \`wrk -t2 -c$CONNECTIONS -d$DURATION\` per row.

| measure | requests/s | p50 / p99 (ms) |
|---|---:|---:|
| the same guest (testbed) answering without a KV call, for reference | $BASE_RPS | $BASE_P50 / $BASE_P99 |
| invocations reading a key (\`wasi:keyvalue\` open + get) | $GET_RPS | $GET_P50 / $GET_P99 |
| invocations incrementing a counter (durable write each) | $INC_RPS | $INC_P50 / $INC_P99 |
| values written through the control API (durable, 1000 keys) | $PUT_RPS | $PUT_P50 / $PUT_P99 |

The counter ended at $HITS after about $(python3 -c "print(round($INC_RPS * ${DURATION%s}))") answered increments (concurrent increments are atomic: none is lost).
Change events: $TOTAL changes turned into events and delivered to a trigger's
function in ${ELAPSED}s: $(python3 -c "print(f'{$TOTAL/$ELAPSED:.0f}')") changes/s end to end (in order per key).
REPORT
