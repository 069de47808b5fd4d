#!/usr/bin/env python3
"""Helpers for bench/scaling.sh (standard library only).

  deploy API TOKEN WASM N PREFIX [KEEP_ALIVE [distinct]]
                          deploys N functions PREFIX0..PREFIX{N-1} through
                          the control API, 4 at a time (keep-alive 1s unless
                          given; `distinct`: each a different component, the
                          same code with its own custom section); prints
                          seconds taken
  invoke BASE PREFIX N K SEED
                          K GETs, one after another, on functions picked at
                          random among PREFIX0..PREFIX{N-1}: p50/p99 (ms)
"""

import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def leb128(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_custom_section(wasm, tag):
    """The component with a custom section `gust-bench` holding `tag` appended."""
    name = b"gust-bench"
    payload = leb128(len(name)) + name + tag.encode()
    return wasm + b"\x00" + leb128(len(payload)) + payload


def deploy(api, token, wasm, n, prefix, keep_alive="1s", distinct=False):
    original = open(wasm, "rb").read()
    u = urllib.parse.urlsplit(api)
    names = iter(range(n))
    lock = threading.Lock()
    failures = []

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        while True:
            with lock:
                i = next(names, None)
            if i is None:
                return
            body = with_custom_section(original, f"{prefix}{i}") if distinct else original
            conn.request(
                "POST",
                f"/v1/functions/{prefix}{i}/versions?public=true&keep_alive={keep_alive}",
                body=body,
                headers={"content-type": "application/wasm", "authorization": f"Bearer {token}"},
            )
            response = conn.getresponse()
            body = response.read()
            if response.status != 201:
                failures.append((i, response.status, body[:300].decode(errors="replace")))
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)

    # Room for that many functions (the default tenant's quotas are lower).
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    quotas = {
        "functions": n + 1000,
        "storage_bytes": (n + 1000) * (len(original) + 1024),
        "invocations_per_second": 1_000_000,
        "burst": 1_000_000,
    }
    conn.request(
        "PUT",
        "/v1/tenants/default/quotas",
        body=json.dumps(quotas),
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
    )
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"cannot raise the quotas: {response.status}")
    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print(f"deploy failures: {failures[:5]} ({len(failures)} in all)", file=sys.stderr)
        sys.exit(1)
    print(f"{time.perf_counter() - started:.1f}")


def invoke(base, prefix, n, k, seed):
    u = urllib.parse.urlsplit(base)
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    latencies, errors = [], 0
    for _ in range(k):
        name = f"{prefix}{rng.randrange(n)}"
        started = time.perf_counter()
        conn.request("GET", f"/{name}/")
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        errors += response.status != 200
    print(f"{pct(latencies, 50):.2f} {pct(latencies, 99):.2f} {statistics.mean(latencies):.2f} {errors}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "deploy":
        deploy(
            args[0],
            args[1],
            args[2],
            int(args[3]),
            args[4],
            *(args[5:6] or ["1s"]),
            distinct=args[6:7] == ["distinct"],
        )
    elif command == "invoke":
        invoke(args[0], args[1], int(args[2]), int(args[3]), int(args[4]))
    else:
        sys.exit(__doc__)
