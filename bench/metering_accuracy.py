"""Metering accuracy: compares the ledger's guest CPU and wall time with the
server's own CPU time (/proc/PID/stat, minus an idle baseline of the same
length) and with the latency clients observed.

usage: metering_accuracy.py PID URL CALLS GUST
"""
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

pid, url, calls, gust = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s():
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime (fields 14 and 15 of stat; 12 and 13 after the name)
    return (int(fields[11]) + int(fields[12])) / TICK


def now_ms():
    return int(time.time() * 1000)


# Idle baseline: the server's own CPU while nothing is asked of it.
start = now_ms()
cpu0 = process_cpu_s()
idle_window = 3.0
time.sleep(idle_window)
idle_rate = (process_cpu_s() - cpu0) / idle_window

latencies = []
lock = threading.Lock()


def client(n):
    for _ in range(n):
        t = time.perf_counter()
        with urllib.request.urlopen(url) as r:
            r.read()
        with lock:
            latencies.append(time.perf_counter() - t)


run_from = now_ms()
cpu1 = process_cpu_s()
t1 = time.perf_counter()
threads = [threading.Thread(target=client, args=(calls // 2,)) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.perf_counter() - t1
time.sleep(0.5)  # the ledger writes off the request path
process_cpu = process_cpu_s() - cpu1 - idle_rate * (elapsed + 0.5)
run_to = now_ms() + 1

report = json.loads(
    subprocess.run(
        [gust, "usage", "--function", "busy", "--from", str(run_from), "--to", str(run_to), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
total = report["total"]
metered_cpu = total["cpu_ms"] / 1000
records = [
    json.loads(line)
    for line in subprocess.run(
        [gust, "usage", "--export", "jsonl", "--function", "busy", "--from", str(run_from), "--to", str(run_to)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
]
metered_wall = sum(r["wall_ns"] for r in records) / 1e9
client_wall = sum(latencies)
print(f"| measure | value |\n|---|---:|")
print(f"| invocations metered | {total['invocations']} of {len(latencies)} |")
print(f"| Σ metered guest CPU (s) | {metered_cpu:.3f} |")
print(f"| server process CPU − idle baseline (s) | {process_cpu:.3f} (idle {idle_rate*100:.2f}% of a core) |")
print(f"| metered CPU ÷ process CPU | {metered_cpu / process_cpu:.3f} |")
print(f"| Σ metered wall (s) | {metered_wall:.3f} |")
print(f"| Σ client-observed latency (s) | {client_wall:.3f} |")
print(f"| metered wall ÷ client latency | {metered_wall / client_wall:.3f} |")
