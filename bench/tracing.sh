#!/usr/bin/env bash
# What traces cost on the request path: the `hello` component under the
# same load on Gust with traces off and with traces on (every request's
# spans exported over OTLP/HTTP to a local receiver), side by side in one
# run, ROUNDS times, each round in another order. With BASELINE (a Gust build
# from before tracing existed) it is loaded too: "off" against it is what
# the tracing code costs when nobody asked for traces.
#
#   bench/tracing.sh                                   # wrk -t2 -c64 -d10s, 2 rounds
#   BASELINE=/path/to/older/gust ROUNDS=3 bench/tracing.sh
#   SAMPLE=0.1 bench/tracing.sh     # also "on" keeping 10% of traces
#   GUST=/path/to/gust NO_BUILD=1 bench/tracing.sh   # another build's off and on
#   OTHER=/path/to/gust bench/tracing.sh    # also "other": that build with traces on
#   PROFILE=/tmp/trace bench/tracing.sh   # also profile each target in the last
#                                         # round (perf, cpu-clock: /tmp/trace.on, …)
#
# Goals (issue 27): off ≤ 1% below the baseline, on ≤ 10% below off.
# Needs: wrk, curl, python3. Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-2}
BASE_PORT=${BASE_PORT:-18380}

for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -q -p gust
  cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p hello
fi
GUST=${GUST:-target/release/gust}
HELLO=examples/target/wasm32-wasip2/release/hello.wasm

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

wait_http() { for _ in $(seq 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; echo "bench: $1 never answered" >&2; exit 1; }

# An OTLP/HTTP receiver that accepts every export and keeps it; asked
# `GET /count/PREFIX` once the load is over, it counts the spans of the
# exports posted under PREFIX (decoding the protobuf then, so that the
# receiver takes no CPU from the server under load): spans the server
# dropped (its queue full) would flatter "on".
RECV_PORT=$((BASE_PORT + 9))
python3 - "$RECV_PORT" <<'PY' &
import http.server, socketserver, sys
port = int(sys.argv[1])
bodies = {}
def varint(b, i):
    n = shift = 0
    while True:
        c = b[i]; i += 1; n |= (c & 0x7F) << shift; shift += 7
        if c < 0x80: return n, i
def fields(b):
    i = 0
    while i < len(b):
        key, i = varint(b, i)
        wire = key & 7
        if wire == 0: _, i = varint(b, i); yield key >> 3, None
        elif wire == 1: i += 8
        elif wire == 5: i += 4
        elif wire == 2:
            n, i = varint(b, i); yield key >> 3, b[i:i + n]; i += n
        else: raise ValueError("not protobuf")
def spans(body):
    # ExportTraceServiceRequest.resource_spans(1).scope_spans(2).spans(2)
    return sum(1 for f, rs in fields(body) if f == 1
               for g, ss in fields(rs) if g == 2
               for h, _ in fields(ss) if h == 2)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        kept = bodies.get(self.path.removeprefix("/count"), [])
        out = f"{len(kept)} {sum(map(len, kept))} {sum(map(spans, kept))}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        bodies.setdefault(self.path.removesuffix("/v1/traces"), []).append(self.rfile.read(n))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a): pass
# HTTP/1.1: the exporter keeps its connection, as with a real collector.
H.protocol_version = "HTTP/1.1"
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(("127.0.0.1", port), H).serve_forever()
PY
PIDS+=("$!"); RECV_PID=$!

declare -A PID
# start NAME BINARY PORT [FLAGS…]: a server on PORT (API on PORT+1) with hello deployed.
start() {
  local name=$1 bin=$2 port=$3; shift 3
  GUST_LOG=warn "$bin" up --data-dir "$WORK/$name" --listen 127.0.0.1:$port \
    --api-listen 127.0.0.1:$((port + 1)) "$@" >"$WORK/$name.out" 2>&1 &
  PIDS+=("$!"); PID[$name]=$!
  wait_http "http://127.0.0.1:$((port + 1))/healthz"
  local token
  token=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/$name.out")
  GUST_API=http://127.0.0.1:$((port + 1)) GUST_TOKEN=$token "$bin" deploy hello "$HELLO" --public >/dev/null
  wait_http "http://127.0.0.1:$port/hello"
}

# CPU ticks (user + system) a process has used.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_HZ=$(getconf CLK_TCK)

# load URL PID [PERF_OUT] → "rps p50_ms p99_ms cpu_us_per_request requests"
# (the server's own CPU over the run, divided by the requests wrk saw
# answered; requests: every answered one, the warm-up's too); with
# PERF_OUT, the server is profiled during the run.
load() {
  local before after out warm perf=
  warm=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$1")
  if [ -n "${3:-}" ]; then
    perf record -q -e cpu-clock -F 999 -p "$2" -o "$3" >/dev/null 2>&1 &
    perf=$!
  fi
  before=$(ticks "$2"); rbefore=$(ticks "$RECV_PID")
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$1")
  after=$(ticks "$2"); rafter=$(ticks "$RECV_PID")
  if [ -n "$perf" ]; then kill -INT "$perf"; wait "$perf" || true; fi
  read -r rps p50 p99 < <(python3 bench/wrk_summary.py <<<"$out")
  local total
  total=$(grep -oE '^ +[0-9]+ requests in' <<<"$out" | grep -oE '[0-9]+')
  warm=$(grep -oE '^ +[0-9]+ requests in' <<<"$warm" | grep -oE '[0-9]+')
  echo "$rps $p50 $p99 $(python3 -c "print(f'{($after - $before) * 1e6 / $TICK_HZ / $total:.1f}')") $((total + warm)) $(python3 -c "print(f'{($rafter - $rbefore) * 1e6 / $TICK_HZ / $total:.1f}')")"
}

TARGETS=(off on)
start off "$GUST" $BASE_PORT
start on "$GUST" $((BASE_PORT + 2)) --otlp-endpoint "http://127.0.0.1:$RECV_PORT/on"
PORT_off=$BASE_PORT; PORT_on=$((BASE_PORT + 2))
if [ -n "${SAMPLE:-}" ]; then
  # The standard sampler variables, read by the SDK: a trace is kept or
  # not as a whole, where it starts.
  OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=$SAMPLE \
    start sampled "$GUST" $((BASE_PORT + 6)) --otlp-endpoint "http://127.0.0.1:$RECV_PORT/sampled"
  PORT_sampled=$((BASE_PORT + 6))
  TARGETS+=(sampled)
fi
if [ -n "${OTHER:-}" ]; then
  # Another build with traces on, to the same receiver, loaded in the same
  # rounds: a change to the traces-on path against the build before it.
  start other "$OTHER" $((BASE_PORT + 10)) --otlp-endpoint "http://127.0.0.1:$RECV_PORT/other"
  PORT_other=$((BASE_PORT + 10))
  TARGETS+=(other)
fi
if [ -n "${BASELINE:-}" ]; then
  start baseline "$BASELINE" $((BASE_PORT + 4))
  PORT_baseline=$((BASE_PORT + 4))
  TARGETS=(baseline "${TARGETS[@]}")
fi

declare -A RPS P50 P99 CPU SENT RECV
for round in $(seq "$ROUNDS"); do
  # Each round starts one target further on: over as many rounds as there
  # are targets, each is loaded in every position once (reversing every
  # other round left the middle one of three always in the middle).
  order=(); n=${#TARGETS[@]}
  for ((i = 0; i < n; i++)); do order+=("${TARGETS[$(((round - 1 + i) % n))]}"); done
  for t in "${order[@]}"; do
    port_var=PORT_$t
    profile=
    if [ -n "${PROFILE:-}" ] && [ "$round" = "$ROUNDS" ]; then profile=$PROFILE.$t; fi
    read -r rps p50 p99 cpu sent recv < <(load "http://127.0.0.1:${!port_var}/hello" "${PID[$t]}" "$profile")
    SENT[$t]=$((${SENT[$t]:-0} + sent))
    RPS[$t]="${RPS[$t]:-} $rps"; P50[$t]="${P50[$t]:-} $p50"; P99[$t]="${P99[$t]:-} $p99"
    CPU[$t]="${CPU[$t]:-} $cpu"; RECV[$t]="${RECV[$t]:-} $recv"
  done
done

median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" $1; }
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }
# What "on" exported, once its batch processor's last scheduled export
# (every 5 s) is in. Each `hello` request makes two spans (`invoke hello`
# and `admission`), whatever its deploy and warm-up requests made.
sleep 6
read -r EXPORTS BYTES SPANS < <(curl -fs "http://127.0.0.1:$RECV_PORT/count/on")

cat <<REPORT
### $(date -u +%Y-%m-%d) on $(nproc) cores: traces off vs on

Load: \`wrk -t$THREADS -c$CONNECTIONS -d$DURATION\`, GET of \`hello\`, $ROUNDS rounds in
rotating order (each target first in turn); medians of the rounds (each round's figures in brackets).
"on" exported $EXPORTS OTLP requests ($BYTES bytes) to a local receiver,
holding $SPANS spans for the ${SENT[on]} requests it answered (two spans
each: $(python3 -c "print(f'{$SPANS / (2 * ${SENT[on]}):.3f}')" ) of them arrived).

The server's CPU per request (user + system, from /proc, over the run)
is the steadier figure on a machine whose throughput wanders.

| target | req/s | p50 ms | p99 ms | server CPU µs/request | req/s ÷ off | CPU ÷ off |
|---|---:|---:|---:|---:|---:|---:|
REPORT
for t in "${TARGETS[@]}"; do
  r=$(median "${RPS[$t]}"); c=$(median "${CPU[$t]}")
  echo "| $t | $r [${RPS[$t]# }] | $(median "${P50[$t]}") | $(median "${P99[$t]}") [${P99[$t]# }] | $c [${CPU[$t]# }] | $(ratio "$r" "$(median "${RPS[off]}")") | $(ratio "$c" "$(median "${CPU[off]}")") |"
done

echo
echo "The receiver's own CPU while \"on\" was loaded: $(median "${RECV[on]}") µs per request [${RECV[on]# }]"
echo "(it shares the machine's cores with the server and wrk)."

if [ -n "${PROFILE:-}" ]; then
  # Self time by symbol (no call graphs: the release build keeps no frame
  # pointers), grouped, in µs per request (share of the samples × the
  # target's median CPU per request): the OTLP encoding (Gust's encoder,
  # or the library's conversion and prost), the SDK and API making and
  # processing spans, the allocator and copies, which both feed, and the
  # kernel (the export's bytes on loopback among them).
  args=()
  for t in "${TARGETS[@]}"; do
    perf report -i "$PROFILE.$t" --no-children --sort symbol --stdio >"$PROFILE.$t.txt" 2>/dev/null
    args+=("$t" "$PROFILE.$t.txt" "$(median "${CPU[$t]}")")
  done
  python3 - "${args[@]}" <<'PY'
import re, sys
groups = {"OTLP encoding": r"gust::otlp|opentelemetry_proto|prost::|opentelemetry_otlp",
          "spans (SDK, API)": r"opentelemetry_sdk|opentelemetry::|gust_gateway::trace",
          "malloc, free, realloc": r"malloc|free|realloc|_int_|cfree",
          "memcpy, memmove": r"memcpy|memmove"}
rows = list(groups) + ["kernel", "everything else"]
cols = []
for name, path, cpu in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    share = dict.fromkeys(rows, 0.0)
    for line in open(path):
        m = re.match(r"\s*([0-9.]+)%\s+\[(.)\]\s+(.*)", line)
        if not m: continue
        pct, kind, sym = float(m.group(1)), m.group(2), m.group(3)
        g = next((g for g, pat in groups.items() if re.search(pat, sym)), None)
        g = g or ("kernel" if kind == "k" else "everything else")
        share[g] += pct
    cols.append((name, {g: v * float(cpu) / 100 for g, v in share.items()}))
print("\nProfiles of the last round (perf, self time), µs of server CPU per request:\n")
print("| symbols | " + " | ".join(n for n, _ in cols) + " |")
print("|---|" + "---:|" * len(cols))
for g in rows:
    print(f"| {g} | " + " | ".join(f"{c[g]:.1f}" for _, c in cols) + " |")
PY
fi
