#!/usr/bin/env bash
# Heap allocations per request: glibc's `malloc` and `realloc` calls made
# by the server while wrk loads `hello`, counted with perf's uprobes on
# libc (exact counts, not samples: a figure this machine's noise does not
# move), with traces off and with traces on (spans exported to a local
# receiver that answers 200 and keeps nothing). With BASELINE, that build
# is counted the same way, side by side.
#
#   bench/allocs.sh                          # this checkout's release build
#   BASELINE=/path/to/older/gust bench/allocs.sh
#   GUST=/path/to/gust NO_BUILD=1 bench/allocs.sh
#
# Needs: perf (root, or a perf_event_paranoid that allows uprobes), wrk,
# curl, python3; glibc's malloc (a build with another global allocator
# calls none of it). Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
BASE_PORT=${BASE_PORT:-19300}
for tool in perf wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -q -p gust
fi
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p hello
GUST=${GUST:-target/release/gust}
HELLO=examples/target/wasm32-wasip2/release/hello.wasm
LIBC=$(ldd "$GUST" | awk '/libc\.so/ {print $3}')
[ -n "$LIBC" ] || { echo "bench: $GUST does not link glibc" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
PROBES=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for probe in "${PROBES[@]}"; do perf probe -q -d "$probe" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Probes on libc's malloc and realloc, under a group of this script's own.
for fn in malloc realloc; do
  perf probe -q -x "$LIBC" --add "gust_allocs:$fn=$fn" 2>/dev/null \
    || perf probe -l "gust_allocs:$fn" 2>/dev/null | grep -q . \
    || { echo "bench: perf cannot probe $fn in $LIBC (root needed?)" >&2; exit 1; }
  PROBES+=("gust_allocs:$fn")
done

# An OTLP/HTTP receiver that answers every export with 200.
RECV_PORT=$((BASE_PORT + 9))
python3 - "$RECV_PORT" <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
PIDS+=("$!")

wait_http() { for _ in $(seq 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; echo "bench: $1 never answered" >&2; exit 1; }

# count NAME BINARY [FLAGS…]: "mallocs reallocs requests" over one wrk run.
count() {
  local name=$1 bin=$2 port=$BASE_PORT; shift 2
  GUST_LOG=warn "$bin" up --data-dir "$WORK/$name" --listen 127.0.0.1:$port \
    --api-listen 127.0.0.1:$((port + 1)) "$@" >"$WORK/$name.out" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_http "http://127.0.0.1:$((port + 1))/healthz"
  local token
  token=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/$name.out")
  GUST_API=http://127.0.0.1:$((port + 1)) GUST_TOKEN=$token "$bin" deploy hello "$HELLO" --public >/dev/null 2>&1
  wait_http "http://127.0.0.1:$port/hello"
  wrk -t2 -c16 -d2s "http://127.0.0.1:$port/hello" >/dev/null   # warm-up
  perf stat -x, -e gust_allocs:malloc,gust_allocs:realloc -p "$pid" -o "$WORK/$name.stat" &
  local stat=$!
  sleep 0.3
  local requests
  requests=$(wrk -t2 -c16 -d"$DURATION" "http://127.0.0.1:$port/hello" | awk '/requests in/ {print $1}')
  sleep 0.3
  kill -INT "$stat"; wait "$stat" 2>/dev/null || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  awk -F, -v n="$requests" '
    /gust_allocs:malloc/ {m = $1} /gust_allocs:realloc/ {r = $1}
    END {printf "%.1f %.1f %d\n", m / n, r / n, n}' "$WORK/$name.stat"
}

OTLP=(--otlp-endpoint "http://127.0.0.1:$RECV_PORT")
ROWS=()
row() {
  local label=$1; shift
  local m r n
  read -r m r n < <(count "$@")
  ROWS+=("| $label | $m | $r | $n |")
}
row "this build, traces off" gust "$GUST"
row "this build, traces on" gust-on "$GUST" "${OTLP[@]}"
if [ -n "${BASELINE:-}" ]; then
  row "baseline \`$BASELINE\`, traces off" base "$BASELINE"
  row "baseline, traces on" base-on "$BASELINE" "${OTLP[@]}"
fi

cat <<REPORT
### $(date -u +%Y-%m-%d) on $(nproc) cores: heap allocations per request

Load: \`wrk -t2 -c16 -d$DURATION\`, GET of \`hello\`; every \`malloc\` and
\`realloc\` of the server process counted (perf uprobes on $LIBC), divided
by the requests wrk saw (the server's background work included).

| target | malloc / request | realloc / request | requests |
|---|---:|---:|---:|
$(printf '%s\n' "${ROWS[@]}")
REPORT
