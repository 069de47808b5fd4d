#!/usr/bin/env python3
"""An Azure-Functions-shaped workload, generated and replayed (standard library only).

  generate N HOURS SEED            prints the trace: "minute function" lines, sorted
  replay URL TRACE SPEEDUP METRICS prints: invocations errors cold_starts warm_function_seconds

The generator follows the published shape of "Serverless in the Wild"
(Shahrad et al., USENIX ATC 2020): invocation rates spread over many
orders of magnitude, about 45% of functions invoked at most once an hour
and about 81% at most once a minute on average (here: log10 of the rate
per minute drawn from a normal distribution with mean -1.555 and standard
deviation 1.772, which puts those two shares where the paper has them),
and a mix of triggers: 30% periodic (timers: every 5, 10, 15, 30, 60 or
120 minutes, with small jitter), 50% Poisson, 20% bursty (bursts of 2-10
calls within a minute). So that one client process can replay it, no
function is called more than once every 15 minutes on average (those
busier than that stay warm under any keep-alive). Seeded: the same
arguments give the same trace.

Replay sends each call at its time divided by SPEEDUP over a pool of
keep-alive connections, and samples the server's /metrics (METRICS URL)
every 100 ms (with the token in $GUST_TOKEN) to integrate how many
functions were warm (function-seconds, in replay time).
"""

import asyncio
import os
import random
import sys
import time
import urllib.parse


def generate(n, hours, seed):
    rng = random.Random(seed)
    horizon = hours * 60.0
    calls = []
    for f in range(n):
        kind = rng.random()
        rate = min(10 ** rng.gauss(-1.555, 1.772), 1 / 15)  # per minute
        if kind < 0.30:
            period = rng.choice([5, 10, 15, 30, 60, 120])
            t = rng.uniform(0, period)
            while t < horizon:
                calls.append((t, f))
                t += period * rng.uniform(0.99, 1.01)
        elif kind < 0.80:
            t = rng.expovariate(rate)
            while t < horizon:
                calls.append((t, f))
                t += rng.expovariate(rate)
        else:
            burst_rate = rate / 5
            t = rng.expovariate(burst_rate)
            while t < horizon:
                for _ in range(rng.randint(2, 10)):
                    calls.append((t + rng.uniform(0, 1), f))
                t += rng.expovariate(burst_rate)
    calls.sort()
    for t, f in calls:
        if t < horizon:
            print(f"{t:.4f} {f}")


async def request(reader, writer, host, path):
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = head.decode("latin-1").lower()
    if "content-length:" in headers:
        length = int(headers.split("content-length:", 1)[1].split("\r\n", 1)[0])
        await reader.readexactly(length)
    elif "transfer-encoding: chunked" in headers:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def metric_value(host, port, names):
    reader, writer = await asyncio.open_connection(host, port)
    token = os.environ.get("GUST_TOKEN", "")
    writer.write(
        f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    text = (await reader.read()).decode()
    writer.close()
    values = {}
    for line in text.splitlines():
        for name in names:
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    return values


async def replay(url, trace_path, speedup, metrics_url):
    u = urllib.parse.urlsplit(url)
    m = urllib.parse.urlsplit(metrics_url)
    calls = []
    with open(trace_path) as trace:
        for line in trace:
            minute, f = line.split()
            calls.append((float(minute) * 60 / speedup, int(f)))
    pool = asyncio.Queue()
    for _ in range(48):
        pool.put_nowait(await asyncio.open_connection(u.hostname, u.port))
    names = ["gust_request_cold_starts_total", "gust_functions_warm"]
    before = await metric_value(m.hostname, m.port, names)
    errors = 0
    done = asyncio.Event()
    warm_seconds = 0.0

    async def sample():
        nonlocal warm_seconds
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.1)
            values = await metric_value(m.hostname, m.port, names)
            now = time.perf_counter()
            warm_seconds += values.get("gust_functions_warm", 0) * (now - last)
            last = now

    async def call(f):
        nonlocal errors
        reader, writer = await pool.get()
        try:
            status = await request(reader, writer, u.hostname, f"/f{f}/")
            errors += status != 200
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            reader, writer = await asyncio.open_connection(u.hostname, u.port)
        pool.put_nowait((reader, writer))

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    tasks = []
    for at, f in calls:
        delay = at - (time.perf_counter() - started)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(call(f)))
    await asyncio.gather(*tasks)
    done.set()
    await sampler
    after = await metric_value(m.hostname, m.port, names)
    cold = after["gust_request_cold_starts_total"] - before["gust_request_cold_starts_total"]
    print(f"{len(calls)} {errors} {int(cold)} {warm_seconds:.1f}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "generate":
        generate(int(args[0]), float(args[1]), int(args[2]))
    elif command == "replay":
        asyncio.run(replay(args[0], args[1], float(args[2]), args[3]))
    else:
        sys.exit(__doc__)
