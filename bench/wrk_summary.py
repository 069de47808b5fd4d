"""Reads `wrk --latency` output on stdin; prints `req/s p50_ms p99_ms`.

Fails, showing wrk's output, if wrk saw errors or printed no summary."""
import re
import sys

text = sys.stdin.read()


def fail(why):
    sys.exit(f"bench: {why}; wrk printed:\n{text}")


def millis(value):
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not match:
        fail(f"cannot read the latency {value!r}")
    number, unit = match.groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def find(pattern):
    match = re.search(pattern, text)
    if not match:
        fail(f"no match for {pattern!r}")
    return match.group(1)


if re.search(r"Non-2xx or 3xx responses: (\d+)", text):
    fail("some responses were not 2xx")
rps = float(find(r"Requests/sec:\s+([\d.]+)"))
p50 = millis(find(r"(?m)^\s*50%\s+(\S+)"))
p99 = millis(find(r"(?m)^\s*99%\s+(\S+)"))
print(f"{rps:.0f} {p50:.3f} {p99:.3f}")
