#!/usr/bin/env bash
# Events on the embedded store: how many events/s Gust accepts (durably:
# each 202 comes after an fsync'd commit, shared by a group commit), how
# many it delivers end to end to a trivial function, and the time from
# acceptance to the end of the delivering invocation.
#
#   bench/events.sh                     # wrk -t2 -c64 -d10s of events
#   DURATION=5s CONNECTIONS=32 bench/events.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
PORT=${PORT:-18480}
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
cargo build --release -q -p gust
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p hello
GUST=target/release/gust
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
export GUST_API=http://127.0.0.1:$((PORT + 1))
GUST_LOG=warn "$GUST" up --dev --data-dir "$WORK/data" --listen 127.0.0.1:$PORT --api-listen 127.0.0.1:$((PORT + 1)) >/dev/null 2>&1 &
PID=$!
for _ in $(seq 200); do curl -fs -o /dev/null "$GUST_API/healthz" && break; sleep 0.05; done
"$GUST" deploy sink examples/target/wasm32-wasip2/release/hello.wasm --concurrency 64 >/dev/null

# Watch the delivered counter while wrk sends events; stop when all are in.
python3 - "$GUST_API" >"$WORK/e2e" <<'PY' &
import re, sys, time, urllib.request
api = sys.argv[1]
def counters():
    text = urllib.request.urlopen(api + "/metrics").read().decode()
    get = lambda o: int(re.search(r'gust_events_total\{outcome="%s"\} (\d+)' % o, text).group(1))
    return get("accepted"), get("delivered")
start = None
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
read -r RPS P50 P99 < <(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/post-event.lua \
  "http://127.0.0.1:$PORT/sink/" | python3 bench/wrk_summary.py)
wait $WATCHER
read -r TOTAL ELAPSED <"$WORK/e2e"
latency() {
  curl -fs "$GUST_API/v1/functions/$1/invocations?limit=1000" | python3 -c '
import json, sys
records = json.load(sys.stdin)
d = sorted(r["updated_ms"] - r["accepted_ms"] for r in records if r["state"] == "succeeded")
pct = lambda p: d[min(len(d) - 1, int(round(p / 100 * (len(d) - 1))))]
print(pct(50), pct(99), len(d))'
}
read -r L50 L99 LN < <(latency sink)

# Light load: two connections, so events do not queue behind each other.
"$GUST" deploy light examples/target/wasm32-wasip2/release/hello.wasm >/dev/null
read -r LRPS LP50 LP99 < <(wrk -t1 -c2 -d5s --latency -s bench/post-event.lua \
  "http://127.0.0.1:$PORT/light/" | python3 bench/wrk_summary.py)
sleep 1
read -r LL50 LL99 LLN < <(latency light)
kill -TERM $PID; wait $PID 2>/dev/null || true

cat <<REPORT
### $(date -u +%Y-%m-%d), $(nproc) cores, embedded store

Load: \`wrk -t2 -c$CONNECTIONS -d$DURATION\` of \`POST /sink/\` with \`Gust-Invocation-Type: Event\` (hello component, delivery concurrency 64).

| measure | value |
|---|---:|
| accepted events/s (each 202 after a durable commit) | $RPS |
| acceptance latency p50 / p99 (ms) | $P50 / $P99 |
| end to end: $TOTAL events accepted and delivered in ${ELAPSED}s | $(python3 -c "print(f'{$TOTAL/$ELAPSED:.0f}')") events/s |
| acceptance → delivered, last $LN events (backlog at saturation), p50 / p99 (ms) | $L50 / $L99 |

Light load (\`wrk -t1 -c2 -d5s\`, $LRPS events/s accepted, acceptance p50 / p99 $LP50 / $LP99 ms):
acceptance → delivered, last $LLN events, p50 / p99: $LL50 / $LL99 ms.
REPORT
