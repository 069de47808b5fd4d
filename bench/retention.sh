#!/usr/bin/env bash
# Retention under load: does removing many status records slow the
# requests served meanwhile? Asynchronous invocations posted by
# wrk for CREATE seconds leave a status record each; requests to `hello`
# are measured with wrk
# before they expire (baseline) and while retention removes them (the
# pass runs every second, the records expire AGE after they were made).
# Prints both runs' req/s, p50 and p99, how many records went and how
# long the removal took.
#
#   bench/retention.sh                # CREATE=15 AGE=90
#   CREATE=5 AGE=60 bench/retention.sh
#
# Needs: wrk, curl, python3. Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

CREATE=${CREATE:-15}
AGE=${AGE:-90}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18580}

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -q -p gust
  cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml
fi
GUST=target/release/gust
GUESTS=examples/target/wasm32-wasip2/release

WORK=$(mktemp -d)
cleanup() { kill "$PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_http() { for _ in $(seq 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; echo "bench: $1 never answered" >&2; exit 1; }

GUST_LOG=warn "$GUST" up --data-dir "$WORK/gust" --listen 127.0.0.1:$PORT --api-listen 127.0.0.1:$((PORT + 1)) \
  --retain-statuses "${AGE}s" --retention-every 1s >"$WORK/gust.out" 2>&1 &
PID=$!
export GUST_API=http://127.0.0.1:$((PORT + 1))
wait_http "$GUST_API/healthz"
export GUST_TOKEN
GUST_TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/gust.out")
"$GUST" deploy hello "$GUESTS/hello.wasm" --public >/dev/null
"$GUST" deploy sink "$GUESTS/testbed.wasm" --public >/dev/null
wait_http "http://127.0.0.1:$PORT/hello/"

python3 - "$PORT" "$CREATE" "$AGE" "$CONNECTIONS" <<'PY'
import http.client, os, subprocess, sys, threading, time
port, create, age, connections = (int(a) for a in sys.argv[1:5])
api = port + 1
token = os.environ["GUST_TOKEN"]

def metric(name):
    c = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
    c.request("GET", "/metrics", headers={"authorization": f"Bearer {token}"})
    text = c.getresponse().read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0

def wrk(seconds):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{port}/hello/"], capture_output=True, text=True).stdout
    summary = subprocess.run([sys.executable, "bench/wrk_summary.py"], input=out,
                             capture_output=True, text=True, check=True).stdout.split()
    return float(summary[0]), float(summary[1]), float(summary[2])

# The events: as fast as wrk posts them, then wait until every one is done.
made = time.time()
subprocess.run(["wrk", "-t2", "-c64", f"-d{create}s", "-s", "bench/post-event.lua",
                f"http://127.0.0.1:{port}/sink/"], capture_output=True, check=True)
made_by = time.time()
events = int(metric('gust_events_total{outcome="accepted"}'))
delivered = 'gust_events_total{outcome="delivered"}'
while metric(delivered) < events:
    time.sleep(0.5)
# A status's age counts from its last change: the delivery.
done = time.time()
print(f"{events} events accepted in {made_by - made:.1f} s, all delivered after {done - made:.1f} s", flush=True)
left = made + age - time.time()
if left < 15:
    sys.exit(f"bench: the records expire in {left:.0f} s, too soon for a baseline; raise AGE")

baseline = wrk(10)
# Wait until the first records are about to expire, then measure across the removal.
time.sleep(max(0.0, made + age - 2 - time.time()))
pruned_name = 'gust_retention_pruned_total{kind="statuses"}'
samples = []
def watch(stop):
    while not stop.is_set():
        samples.append((time.time(), metric(pruned_name)))
        time.sleep(0.2)
stop = threading.Event()
watcher = threading.Thread(target=watch, args=(stop,))
watcher.start()
# From the first expiry to well after the last (delivered by `done`).
during_seconds = int(done - made) + 20
during = wrk(during_seconds)
stop.set(); watcher.join()
total = samples[-1][1]
start = next((t for t, n in samples if n > 0), None)
end = next((t for t, n in samples if n >= total), None)
took = (end - start) if start and end else float("nan")
print(f"statuses removed: {total:.0f} of {events}, over {took:.1f} s of passes")
print(f"{'':10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
print(f"{'baseline':10} {baseline[0]:8.0f} {baseline[1]:8.3f} {baseline[2]:8.3f}")
print(f"{'pruning':10} {during[0]:8.0f} {during[1]:8.3f} {during[2]:8.3f}")
print(f"ratio (pruning / baseline): req/s {during[0] / baseline[0]:.2f}, p99 {during[2] / baseline[2]:.2f}")
PY
