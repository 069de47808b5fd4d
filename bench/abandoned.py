"""N requests opened on a guest that loops (testbed /spin, 30 s timeout)
and abandoned after HOLD seconds: what the server does once their clients
are gone. Reports the server's CPU over the seconds after (/proc/PID/stat,
as % of one core), how long until another request is served (200), and
the usage records (outcome, billed ms).

usage: abandoned.py PID HOST PORT PATH N HOLD TOKEN GUST
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

pid, host, port, path, n, hold, token, gust = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), sys.argv[7], sys.argv[8]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s():
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def get(p, timeout=2.0):
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(f"GET {p} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except socket.timeout:
        pass
    s.close()
    return int(data.split()[1]) if data.startswith(b"HTTP/") else 0


start_ms = int(time.time() * 1000)
socks = []
for _ in range(n):
    s = socket.create_connection((host, port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    socks.append(s)
time.sleep(hold)
during = get("/tb/")
for s in socks:
    s.close()
gone = time.perf_counter()
window = {}


def sample():
    # The server's CPU from 1 s to 4 s after the clients left.
    time.sleep(1.0)
    window["from"] = (cpu_s(), time.perf_counter())
    time.sleep(3.0)
    window["to"] = (cpu_s(), time.perf_counter())


sampler = threading.Thread(target=sample)
sampler.start()
served_after = None
while time.perf_counter() - gone < 35:
    if get("/tb/") == 200:
        served_after = time.perf_counter() - gone
        break
    time.sleep(0.05)
sampler.join()
(c0, t0), (c1, t1) = window["from"], window["to"]
after = (c1 - c0) / (t1 - t0) * 100
time.sleep(1.0)
records = [json.loads(l) for l in subprocess.run(
    [gust, "usage", "--export", "jsonl", "--from", str(start_ms)],
    check=True, capture_output=True, text=True).stdout.splitlines()]
every = {}
for r in records:
    every[r["outcome"]] = every.get(r["outcome"], 0) + 1
spin = [r for r in records if r["status"] in (499,) or r["outcome"] in ("cancelled", "timed_out")]
outcomes = {}
for r in spin:
    outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
billed = sorted(r["billed_ms"] for r in spin)
print("| measure | value |")
print("|---|---:|")
print(f"| requests abandoned after {hold:.0f} s | {n} |")
print(f"| another request while they ran | {during} |")
print(f"| another request after they were abandoned: 200 after (s) | {served_after if served_after is None else round(served_after, 2)} |")
print(f"| server CPU from 1 s to 4 s after they were abandoned (% of a core) | {after:.0f} |")
print(f"| records so far, by outcome | {every} |")
if billed:
    print(f"| billed ms of the admitted ones: median / max | {billed[len(billed) // 2]} / {billed[-1]} |")
