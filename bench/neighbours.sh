#!/usr/bin/env bash
# Noisy neighbours: one tenant's latency while another floods the node.
#
# Tenant `quiet` calls a fast function (testbed `/`) with a light, steady
# load, first alone, then while tenant `flood` keeps FLOOD connections busy
# with slow requests (`/sleep?ms=SLEEP_MS`), more than the node runs at
# once (`--max-in-flight MAX_IN_FLIGHT`). Prints a Markdown table: the
# quiet tenant's req/s, p50, p99 and errors in both runs, the p99 ratio
# (goal: ≤ 2), and how many of the flooder's requests were served or
# refused.
#
#   bench/neighbours.sh
#   DURATION=20s FLOOD=800 bench/neighbours.sh
#
# Needs: wrk, curl, python3. Everything runs on 127.0.0.1, release build.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
FLOOD=${FLOOD:-400}
SLEEP_MS=${SLEEP_MS:-2000}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-200}
QUIET_CONNECTIONS=${QUIET_CONNECTIONS:-4}
BASE_PORT=${BASE_PORT:-18380}

for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (see the header of $0)" >&2; exit 1; }
done

cargo build --release -q -p gust
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p testbed
GUST=target/release/gust
TESTBED=examples/target/wasm32-wasip2/release/testbed.wasm

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

PORT=$BASE_PORT; API_PORT=$((BASE_PORT + 1))
export GUST_API=http://127.0.0.1:$API_PORT
URL=http://127.0.0.1:$PORT

GUST_LOG=warn "$GUST" up --data-dir "$WORK/gust" --listen 127.0.0.1:$PORT --api-listen 127.0.0.1:$API_PORT \
  --max-in-flight "$MAX_IN_FLIGHT" >"$WORK/gust.out" 2>&1 &
PIDS+=("$!")
for _ in $(seq 200); do curl -fs -o /dev/null "$GUST_API/healthz" && break; sleep 0.05; done
GUST_TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/gust.out")
export GUST_TOKEN

token_for() {
  "$GUST" tenant create "$1" --json >/dev/null
  "$GUST" token create --tenant "$1" --role owner --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}
FLOOD_TOKEN=$(token_for flood)
QUIET_TOKEN=$(token_for quiet)
GUST_TOKEN=$FLOOD_TOKEN "$GUST" deploy slow "$TESTBED" --public >/dev/null
GUST_TOKEN=$QUIET_TOKEN "$GUST" deploy fast "$TESTBED" --public >/dev/null

# wrk --latency → "rps p50_ms p99_ms errors" (non-2xx and socket errors).
quiet_load() {
  wrk -t1 -c"$QUIET_CONNECTIONS" -d"$DURATION" --latency "$URL/@quiet/fast/" | python3 -c '
import re, sys
text = sys.stdin.read()
def ms(v):
    n, u = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"50%\s+(\S+)", text).group(1))
p99 = ms(re.search(r"99%\s+(\S+)", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
print(f"{rps:.0f} {p50:.2f} {p99:.2f} {errors}")'
}

wrk -t1 -c"$QUIET_CONNECTIONS" -d2s "$URL/@quiet/fast/" >/dev/null # warm-up
read -r A_RPS A_P50 A_P99 A_ERR <<<"$(quiet_load)"

# The flood: FLOOD connections of slow requests for the whole measurement.
FLOOD_SECONDS=$(( ${DURATION%s} + 4 ))
wrk -t1 -c"$FLOOD" -d"${FLOOD_SECONDS}s" --timeout 30s "$URL/@flood/slow/sleep?ms=$SLEEP_MS" >"$WORK/flood.txt" 2>&1 &
FLOOD_PID=$!
sleep 2
read -r B_RPS B_P50 B_P99 B_ERR <<<"$(quiet_load)"
wait "$FLOOD_PID" || true
FLOOD_TOTAL=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$WORK/flood.txt")
FLOOD_REFUSED=$(sed -n 's/^ *Non-2xx or 3xx responses: \([0-9]*\)/\1/p' "$WORK/flood.txt")
FLOOD_REFUSED=${FLOOD_REFUSED:-0}

RATIO=$(python3 -c "print(f'{$B_P99 / max($A_P99, 0.001):.2f}')")
cat <<EOF
### Noisy neighbours ($(date -u +%F), $(nproc) cores, --max-in-flight $MAX_IN_FLIGHT)

| quiet tenant, $QUIET_CONNECTIONS connections, $DURATION | req/s | p50 ms | p99 ms | errors |
|---|---|---|---|---|
| alone | $A_RPS | $A_P50 | $A_P99 | $A_ERR |
| while \`flood\` holds $FLOOD connections of ${SLEEP_MS} ms requests | $B_RPS | $B_P50 | $B_P99 | $B_ERR |

p99 ratio (flooded ÷ alone): **$RATIO** (goal ≤ 2, 0 errors). The flooder
sent $FLOOD_TOTAL requests; $FLOOD_REFUSED of them were refused (503).
EOF
