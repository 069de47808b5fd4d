"""Host CPU per request of a trapping guest against an answering one, and
metering accuracy for a mixed workload with traps.

usage: trap_cost.py PID BASE_URL REQUESTS ROUNDS MIXED_CALLS BUSY_MS GUST

Sequential requests on one keep-alive connection; the server's CPU time
(user + system, all threads, /proc/PID/stat) over each batch, minus an
idle baseline of the same length, divided by the requests. Batches of
`/`, `/trap` and `/print` (an answer that leaves a log record, as a trap
does) alternate, ROUNDS of each, and the median per path is
reported. Then MIXED_CALLS requests, every other one a trap and the
others `/busy?ms=BUSY_MS`, from 2 clients: Σ metered guest CPU (the
ledger) against the server's CPU over the run, minus the idle baseline.
"""
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

pid, base, requests, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mixed_calls, busy_ms, gust = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
TICK = os.sysconf("SC_CLK_TCK")
url = urllib.parse.urlsplit(base)


def process_cpu_s():
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def now_ms():
    return int(time.time() * 1000)


def batch(path, n):
    """n sequential requests on one connection; returns the statuses seen."""
    conn = http.client.HTTPConnection(url.hostname, url.port)
    seen = {}
    for _ in range(n):
        conn.request("GET", url.path.rstrip("/") + path)
        r = conn.getresponse()
        r.read()
        seen[r.status] = seen.get(r.status, 0) + 1
    conn.close()
    return seen


cpu0 = process_cpu_s()
time.sleep(3.0)
idle_rate = (process_cpu_s() - cpu0) / 3.0

# Warm both paths.
batch("/", 200)
batch("/trap", 200)
batch("/print", 200)
PATHS = ("/", "/trap", "/print")
per_request = {p: [] for p in PATHS}
statuses = {}
for _ in range(rounds):
    for path in PATHS:
        t = time.perf_counter()
        c = process_cpu_s()
        statuses[path] = batch(path, requests)
        time.sleep(0.3)  # what the request left for later (logs, ledger)
        spent = process_cpu_s() - c - idle_rate * (time.perf_counter() - t)
        per_request[path].append(spent / requests * 1e6)

answer = statistics.median(per_request["/"])
trap = statistics.median(per_request["/trap"])
print("| path | server CPU µs/request (median of rounds) | rounds (µs) | statuses |")
print("|---|---:|---|---|")
for path in PATHS:
    med = statistics.median(per_request[path])
    rounds_text = ", ".join(f"{v:.0f}" for v in per_request[path])
    print(f"| `{path}` | {med:.0f} | {rounds_text} | {statuses[path]} |")
print()
print(f"A trap costs **{trap / answer:.2f}×** an answer ({requests} sequential requests per round, {rounds} rounds).")
print()

# Mixed workload: metering accuracy with traps in it.
latch = threading.Lock()


def client(n, offset):
    conn = http.client.HTTPConnection(url.hostname, url.port)
    for i in range(n):
        path = "/trap" if (i + offset) % 2 else f"/busy?ms={busy_ms}"
        conn.request("GET", url.path.rstrip("/") + path)
        conn.getresponse().read()
    conn.close()


run_from = now_ms()
cpu1 = process_cpu_s()
t1 = time.perf_counter()
threads = [threading.Thread(target=client, args=(mixed_calls // 2, k)) for k in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
time.sleep(0.5)
elapsed = time.perf_counter() - t1
process_cpu = process_cpu_s() - cpu1 - idle_rate * elapsed
run_to = now_ms() + 1
time.sleep(1.0)  # the ledger indexes every 500 ms
function = url.path.strip("/").split("/")[-1]
report = json.loads(
    subprocess.run(
        [gust, "usage", "--function", function, "--from", str(run_from), "--to", str(run_to), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
)
total = report["total"]
metered = total["cpu_ms"] / 1000
print(f"Mixed workload: {mixed_calls} calls from 2 clients, every other one `/trap`, the others `/busy?ms={busy_ms}`.")
print()
print("| measure | value |")
print("|---|---:|")
print(f"| invocations metered | {total['invocations']} of {mixed_calls} |")
print(f"| Σ metered guest CPU (s) | {metered:.3f} |")
print(f"| server process CPU − idle baseline (s) | {process_cpu:.3f} |")
print(f"| metered CPU ÷ process CPU | **{metered / process_cpu:.3f}** |")
