#!/usr/bin/env bash
# Gust vs `wasmtime serve` vs native hyper, side by side, same component,
# same machine, same load; then Gust's cold start after a restart and its
# deploy-to-first-response time. Prints a Markdown report on stdout.
#
#   bench/run.sh                      # wrk -t2 -c64 -d10s per target
#   DURATION=5s CONNECTIONS=32 bench/run.sh
#   BASELINE=/path/to/an/older/gust bench/run.sh   # adds that build, loaded in turn
#
# Needs: wrk, curl, python3, and `wasmtime` (cargo install --locked
# wasmtime-cli@<the version in Cargo.lock>). Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
COLD_FUNCTIONS=${COLD_FUNCTIONS:-40}
DEPLOYS=${DEPLOYS:-20}
BASE_PORT=${BASE_PORT:-18280}

for tool in wrk curl python3 wasmtime; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (see the header of $0)" >&2; exit 1; }
done

# Two commands: with `--example`, cargo builds only examples, even of `-p gust`.
cargo build --release -q -p gust
cargo build --release -q -p gust-gateway --example native_hello
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p hello
GUST=target/release/gust
NATIVE=target/release/examples/native_hello
HELLO=examples/target/wasm32-wasip2/release/hello.wasm

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

GUST_PORT=$BASE_PORT; API_PORT=$((BASE_PORT + 1)); WT_PORT=$((BASE_PORT + 2)); NATIVE_PORT=$((BASE_PORT + 3))
export GUST_API=http://127.0.0.1:$API_PORT

wait_http() { for _ in $(seq 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; echo "bench: $1 never answered" >&2; exit 1; }

start_gust() {
  GUST_LOG=warn "$GUST" up --data-dir "$WORK/gust" --listen 127.0.0.1:$GUST_PORT --api-listen 127.0.0.1:$API_PORT >"$WORK/gust.out" 2>&1 &
  GUST_PID=$!; PIDS+=("$GUST_PID")
  wait_http "$GUST_API/healthz"
  # Authentication stays on, as in production: the first start prints the
  # admin token; the functions are deployed public (anyone may call them).
  local token
  token=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/gust.out")
  if [ -n "$token" ]; then export GUST_TOKEN=$token; fi
}
stop_gust() { kill -TERM "$GUST_PID"; wait "$GUST_PID" 2>/dev/null || true; }

# wrk → "rps p50_ms p99_ms"
load() {
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$1" >/dev/null   # warm-up
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$1" | python3 bench/wrk_summary.py
}

start_gust
"$GUST" deploy hello "$HELLO" --public >/dev/null
wait_http "http://127.0.0.1:$GUST_PORT/hello"
wasmtime serve -S cli --addr 127.0.0.1:$WT_PORT "$HELLO" >"$WORK/wasmtime.out" 2>&1 &
PIDS+=("$!")
"$NATIVE" 127.0.0.1:$NATIVE_PORT >"$WORK/native.out" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$WT_PORT/"
wait_http "http://127.0.0.1:$NATIVE_PORT/"

# An older build of Gust (BASELINE), on its own ports and data directory,
# loaded right after this one: a change's effect, side by side in one run.
if [ -n "${BASELINE:-}" ]; then
  B_PORT=$((BASE_PORT + 4)); B_API=$((BASE_PORT + 5))
  GUST_LOG=warn "$BASELINE" up --data-dir "$WORK/baseline" --listen 127.0.0.1:$B_PORT --api-listen 127.0.0.1:$B_API >"$WORK/baseline.out" 2>&1 &
  B_PID=$!; PIDS+=("$B_PID")
  wait_http "http://127.0.0.1:$B_API/healthz"
  B_TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/baseline.out")
  GUST_API=http://127.0.0.1:$B_API GUST_TOKEN=$B_TOKEN "$BASELINE" deploy hello "$HELLO" --public >/dev/null
  wait_http "http://127.0.0.1:$B_PORT/hello"
fi

read -r G_RPS G_P50 G_P99 < <(load "http://127.0.0.1:$GUST_PORT/hello")
if [ -n "${BASELINE:-}" ]; then
  read -r B_RPS B_P50 B_P99 < <(load "http://127.0.0.1:$B_PORT/hello")
  kill -TERM "$B_PID"; wait "$B_PID" 2>/dev/null || true
fi
read -r W_RPS W_P50 W_P99 < <(load "http://127.0.0.1:$WT_PORT/")
read -r N_RPS N_P50 N_P99 < <(load "http://127.0.0.1:$NATIVE_PORT/")

# Cold start: deploy COLD_FUNCTIONS functions, restart, call each once.
for i in $(seq "$COLD_FUNCTIONS"); do "$GUST" deploy "cold$i" "$HELLO" --public >/dev/null; done
stop_gust
start_gust
COLD=$(python3 - "$GUST_PORT" "$COLD_FUNCTIONS" <<'PY'
import http.client, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
def once(path):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.connect()  # connection set-up is not the function's cold start
    t = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse(); r.read()
    dt = (time.perf_counter() - t) * 1000
    assert r.status == 200, r.status
    conn.close()
    return dt
cold = sorted(once(f"/cold{i}/") for i in range(1, n + 1))
warm = sorted(once(f"/cold{i}/") for i in range(1, n + 1))
pct = lambda xs, p: xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
print(f"{pct(cold,50):.3f} {pct(cold,99):.3f} {pct(warm,50):.3f} {pct(warm,99):.3f}")
PY
)
read -r C_P50 C_P99 CW_P50 CW_P99 <<<"$COLD"

# Deploy → first response, each deploy a distinct component (a custom
# section makes a new digest, so nothing is cached and each one compiles).
DEPLOY=$(python3 - "$GUST_PORT" "$API_PORT" "$HELLO" "$DEPLOYS" <<'PY'
import http.client, os, sys, time
port, api, path, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
base = open(path, "rb").read()
def leb(v):
    out = bytearray()
    while True:
        b = v & 0x7f; v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v: return bytes(out)
def unique(i):
    name = b"bench-nonce"; payload = leb(len(name)) + name + str(time.time_ns() + i).encode()
    return base + b"\x00" + leb(len(payload)) + payload
times = []
for i in range(n):
    body = unique(i)
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", api)
    headers = {"content-type": "application/wasm", "authorization": "Bearer " + os.environ.get("GUST_TOKEN", "")}
    c.request("POST", f"/v1/functions/fresh{i}/versions?public=true", body, headers)
    r = c.getresponse(); r.read(); assert r.status == 201, r.status
    c = http.client.HTTPConnection("127.0.0.1", port)
    while True:
        c.request("GET", f"/fresh{i}/"); r = c.getresponse(); r.read()
        if r.status == 200: break
    times.append((time.perf_counter() - t) * 1000)
times.sort()
pct = lambda xs, p: xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
print(f"{pct(times,50):.1f} {pct(times,99):.1f}")
PY
)
read -r D_P50 D_P99 <<<"$DEPLOY"
stop_gust

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
BASELINE_ROW=
if [ -n "${BASELINE:-}" ]; then
  BASELINE_ROW="| baseline \`$BASELINE\` (gust ÷ baseline: $(ratio "$G_RPS" "$B_RPS")×) | $B_RPS | $B_P50 | $B_P99 | $(ratio "$B_RPS" "$W_RPS")× |"$'\n'
fi
cat <<REPORT
### $(date -u +%Y-%m-%d) on $(nproc) cores, $(uname -r), wasmtime $(wasmtime --version | awk '{print $2}')

Load: \`wrk -t$THREADS -c$CONNECTIONS -d$DURATION\`, GET of the \`hello\` example component.

| target | req/s | p50 ms | p99 ms | req/s vs wasmtime serve |
|---|---:|---:|---:|---:|
| gust (fresh instance per request, all limits on) | $G_RPS | $G_P50 | $G_P99 | $(ratio "$G_RPS" "$W_RPS")× |
${BASELINE_ROW}| wasmtime serve -S cli | $W_RPS | $W_P50 | $W_P99 | 1.00× |
| native hyper hello | $N_RPS | $N_P50 | $N_P99 | $(ratio "$N_RPS" "$W_RPS")× |

Gust reaches $(ratio "$G_RPS" "$N_RPS") of native hyper's throughput; its p99 is $(ratio "$G_P99" "$W_P99")× wasmtime serve's.

| Gust after a restart ($COLD_FUNCTIONS functions, artifacts on disk) | p50 ms | p99 ms |
|---|---:|---:|
| first invocation of each function (cold) | $C_P50 | $C_P99 |
| second invocation (warm) | $CW_P50 | $CW_P99 |
| deploy → first 200, new component each time ($DEPLOYS deploys) | $D_P50 | $D_P99 |
REPORT
