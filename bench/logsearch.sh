#!/usr/bin/env bash
# Log search over LINES log lines: one function's invocation logs (each
# invocation prints PER lines, TAGGED of them end in a rare word), then
# filtered queries through the control API, each run RUNS times: p50/p99
# of a whole search (every page until the stream's end).
#
#   bench/logsearch.sh                       # LINES=1000000 PER=1000 RUNS=30
#   LINES=200000 bench/logsearch.sh
#
# Needs: curl, python3. Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

LINES=${LINES:-1000000}
PER=${PER:-1000}
RUNS=${RUNS:-30}
PORT=${PORT:-18480}

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -q -p gust
  cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p testbed
fi
GUST=target/release/gust
TESTBED=examples/target/wasm32-wasip2/release/testbed.wasm

WORK=$(mktemp -d)
cleanup() { kill "$PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_http() { for _ in $(seq 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; echo "bench: $1 never answered" >&2; exit 1; }

# Room for every line: the stream's size cap and the log rate raised.
GUST_LOG=warn "$GUST" up --data-dir "$WORK/gust" --listen 127.0.0.1:$PORT --api-listen 127.0.0.1:$((PORT + 1)) \
  --log-max-bytes $((1 << 30)) --log-rate-bytes $((1 << 30)) --log-burst-bytes $((1 << 30)) >"$WORK/gust.out" 2>&1 &
PID=$!
export GUST_API=http://127.0.0.1:$((PORT + 1))
wait_http "$GUST_API/healthz"
export GUST_TOKEN
GUST_TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/gust.out")
"$GUST" deploy tb "$TESTBED" --public >/dev/null
wait_http "http://127.0.0.1:$PORT/tb/"

python3 - "$PORT" "$LINES" "$PER" "$RUNS" <<'PY'
import http.client, json, os, statistics, sys, time, urllib.parse
port, lines, per, runs = (int(a) for a in sys.argv[1:5])
api = port + 1
token = os.environ["GUST_TOKEN"]
invocations = lines // per
conn = http.client.HTTPConnection("127.0.0.1", port)
ids, middle = [], None
for i in range(invocations):
    tag = f"needle-{i}" if i % 100 == 7 else ""
    conn.request("GET", f"/tb/lines?n={per}&tag={tag}")
    r = conn.getresponse(); r.read(); assert r.status == 200, r.status
    ids.append(r.getheader("x-request-id"))
    if i == invocations * 9 // 10:
        middle = int(time.time() * 1000)
c = http.client.HTTPConnection("127.0.0.1", api)
def search(**params):
    """A whole search: every page to the end. Returns (entries, pages)."""
    after, found, pages = 0, 0, 0
    while True:
        q = urllib.parse.urlencode(dict(params, after=after, limit=1000))
        c.request("GET", f"/v1/functions/tb/logs?{q}", headers={"authorization": "Bearer " + token})
        r = c.getresponse(); body = json.loads(r.read()); assert r.status == 200, body
        pages += 1; found += len(body["entries"])
        if body["end"] and (not body["entries"] or body["next"] == after):
            return found, pages
        after = body["next"]
        if body["end"] and not body["entries"]:
            return found, pages
# Wait until the writer has stored every record.
deadline = time.time() + 120
while search()[0] < invocations:
    assert time.time() < deadline, "the log records were not all stored"
    time.sleep(0.5)
cases = [
    ("rare text (--grep needle-507)", {"grep": "needle-507"}),
    ("common text (--grep 'line 1 of')", {"grep": "line 1 of"}),
    ("status class (--status 5xx)", {"status": "5xx"}),
    ("one invocation (--invocation ID)", {"invocation": ids[len(ids) // 2]}),
    ("last 10% (--since T)", {"since_ms": middle}),
    ("everything (no filter)", {}),
]
print(f"### {time.strftime('%Y-%m-%d', time.gmtime())}: log search over {invocations * per:,} lines")
print()
print(f"{invocations:,} log records of {per:,} lines each, one function; {runs} runs per query; a run reads every page to the stream's end (control API, loopback).")
print()
print("| query | entries | pages | p50 ms | p99 ms |")
print("|---|---:|---:|---:|---:|")
for name, params in cases:
    times = []
    for _ in range(runs):
        t = time.perf_counter(); found, pages = search(**params); times.append((time.perf_counter() - t) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    print(f"| {name} | {found:,} | {pages} | {statistics.median(times):.1f} | {p99:.1f} |")
PY
