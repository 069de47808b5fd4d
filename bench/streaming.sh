#!/usr/bin/env bash
# Long-lived connections on one node, side by side in one run:
#  1. SSE: STREAMS server-sent event streams held open at once (each an
#     instance of the testbed's /sse, one event a second), the node's RSS
#     before and with them, per stream, and whether every one still flows.
#  2. WebSockets: WS_CONNECTIONS connections each echoing WS_MESSAGES
#     messages one after another (messages/s, round trip p50/p99, upgrade
#     p50/p99) through Gust (an invocation per message, a fresh instance
#     each) and through a native tokio-tungstenite echo server (the limit).
# Prints a Markdown report on stdout.
#
#   bench/streaming.sh
#   STREAMS=500 WS_CONNECTIONS=32 WS_MESSAGES=200 bench/streaming.sh
#
# Needs: curl, python3. Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

STREAMS=${STREAMS:-500}
WS_CONNECTIONS=${WS_CONNECTIONS:-64}
WS_MESSAGES=${WS_MESSAGES:-500}
BASE_PORT=${BASE_PORT:-18380}

cargo build --release -q -p gust
cargo build --release -q -p gust --example ws_load
cargo build --release -q -p gust-gateway --example native_ws_echo
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p testbed
GUST=target/release/gust
LOAD=target/release/examples/ws_load
NATIVE=target/release/examples/native_ws_echo
TESTBED=examples/target/wasm32-wasip2/release/testbed.wasm

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

GUST_PORT=$BASE_PORT; API_PORT=$((BASE_PORT + 1)); NATIVE_PORT=$((BASE_PORT + 2))
export GUST_API=http://127.0.0.1:$API_PORT
wait_http() { for _ in $(seq 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; echo "bench: $1 never answered" >&2; exit 1; }

ulimit -n 65536 2>/dev/null || true
# Each open stream holds an instance (the guest writes it): room for them
# all in the node's instance slots and memory budget.
GUST_LOG=warn "$GUST" up --data-dir "$WORK/gust" --listen 127.0.0.1:$GUST_PORT --api-listen 127.0.0.1:$API_PORT \
  --max-in-flight $((STREAMS * 2)) --memory-budget-mb $((STREAMS * 2 * 16)) >"$WORK/gust.out" 2>&1 &
GUST_PID=$!; PIDS+=("$GUST_PID")
wait_http "$GUST_API/healthz"
GUST_TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/gust.out")
export GUST_TOKEN
# 16 MiB per instance, so the node's memory budget is not what limits the
# streams; the rate limit well above what one client sends.
"$GUST" deploy tb "$TESTBED" --public --memory-mb 16 --websocket \
  --ws-max-connections 10000 --ws-messages-per-second 10000 >/dev/null
wait_http "http://127.0.0.1:$GUST_PORT/tb/"
"$NATIVE" 127.0.0.1:$NATIVE_PORT >"$WORK/native.out" 2>&1 &
PIDS+=("$!")
sleep 0.3

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$GUST_PID/status"; }

# SSE: open the streams, wait for each one's first event, measure, then
# check every stream delivered more events 3 s later.
RSS_BEFORE=$(rss_kib)
SSE=$(python3 - "$GUST_PORT" "$STREAMS" "$GUST_PID" <<'PY'
import asyncio, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

async def open_stream(i, counts, ready, refused):
    # A burst past the tenant's fair share of a busy node gets 503 with
    # Retry-After: a client retries, as this one does.
    while True:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /tb/sse?n=100000&every_ms=1000 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 503 " in head.split(b"\r\n")[0]:
            refused[0] += 1
            writer.close()
            await asyncio.sleep(0.2)
            continue
        assert b" 200 " in head.split(b"\r\n")[0], head
        break
    first = True
    while True:
        line = await reader.readline()
        if not line:
            return
        if line.startswith(b"data:"):
            counts[i] += 1
            if first:
                ready.release()
                first = False

async def main():
    counts = [0] * n
    refused = [0]
    ready = asyncio.Semaphore(0)
    started = time.perf_counter()
    tasks = [asyncio.create_task(open_stream(i, counts, ready, refused)) for i in range(n)]
    for _ in range(n):
        await asyncio.wait_for(ready.acquire(), 60)
    opened = time.perf_counter() - started
    rss = rss_kib()
    before = list(counts)
    await asyncio.sleep(3.0)
    flowing = sum(1 for a, b in zip(before, counts) if b > a)
    print(f"{n} {opened:.2f} {rss} {flowing} {refused[0]}")
    for t in tasks:
        t.cancel()

asyncio.run(main())
PY
)
read -r S_N S_OPEN S_RSS S_FLOWING S_RETRIED <<<"$SSE"
sleep 2
S_PER=$(( (S_RSS - RSS_BEFORE) / S_N ))

# WebSockets: Gust, then the native echo server, with the same client.
read -r _ G_MSGS G_SECS G_RATE G_P50 G_P99 G_C50 G_C99 < <("$LOAD" "ws://127.0.0.1:$GUST_PORT/tb/ws/echo" "$WS_CONNECTIONS" "$WS_MESSAGES")
read -r _ N_MSGS N_SECS N_RATE N_P50 N_P99 N_C50 N_C99 < <("$LOAD" "ws://127.0.0.1:$NATIVE_PORT/" "$WS_CONNECTIONS" "$WS_MESSAGES")
RATIO=$(python3 -c "print(f'{$G_RATE / $N_RATE:.3f}')")

cat <<EOF
## Streaming and WebSockets ($(date -u +%Y-%m-%d), $(nproc) cores)

### Server-sent events held open

| streams | all open after | 503s retried (fair share) | node RSS before | with them | per stream | still flowing 3 s later |
|---|---|---|---|---|---|---|
| $S_N | ${S_OPEN} s | $S_RETRIED | $((RSS_BEFORE / 1024)) MiB | $((S_RSS / 1024)) MiB | ${S_PER} KiB | $S_FLOWING of $S_N |

### WebSocket echo: $WS_CONNECTIONS connections × $WS_MESSAGES messages, one at a time each

| server | messages/s | round trip p50 | p99 | upgrade p50 | p99 |
|---|---|---|---|---|---|
| Gust (an invocation per message) | $G_RATE | ${G_P50} ms | ${G_P99} ms | ${G_C50} ms | ${G_C99} ms |
| native tokio-tungstenite | $N_RATE | ${N_P50} ms | ${N_P99} ms | ${N_C50} ms | ${N_C99} ms |
| ratio | $RATIO | | | | |
EOF
