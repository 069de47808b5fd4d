#!/usr/bin/env bash
# What metering costs and how accurate it is.
#
# Overhead: the hello benchmark (wrk) against three servers: one with the
# usage ledger ("on") and two started with --no-metering (a switch for
# this measurement only): "off" and "control", started afresh every
# RESTART rounds. Each round loads each server alone, one after the
# other, in an order that rotates through all six orders, so that drift
# in the machine's speed falls on every server alike. On a shared
# virtual machine single rounds swing by 10-20%, so a run reports, over
# all rounds, the ratio of summed requests (and the median of the
# rounds' ratios) for on ÷ off, on ÷ control, on ÷ both (off and control
# as one baseline) and control ÷ off: two identical servers, whose ratio
# shows how far this method's noise reaches. Each
# server's CPU time per request (user + system, all its threads, from
# /proc/PID/stat) is summed the same way.
# Last, the ledger alone (no HTTP, no wasm): its CPU time per record,
# from crates/meter/examples/meter_cost.rs.
#
# Accuracy: a CPU-bound guest (testbed /busy?ms=N) invoked M times with 2
# clients; the sum of metered guest CPU time against the server process's
# own CPU time over the run (/proc/PID/stat) minus an idle baseline of the
# same length; metered wall time against what the client observed.
#
#   bench/metering.sh       # DURATION=2s ROUNDS=24 RESTART=2 BUSY_MS=20 CALLS=200
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-2s}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-24}
BUSY_MS=${BUSY_MS:-20}
CALLS=${CALLS:-200}
PORT=${PORT:-18780}
RESTART=${RESTART:-2}
WARM=${WARM:-2s}
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
cargo build --release -q -p gust
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p hello -p testbed
GUST=target/release/gust
HELLO=examples/target/wasm32-wasip2/release/hello.wasm
TESTBED=examples/target/wasm32-wasip2/release/testbed.wasm
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

# start NAME PORT [FLAGS...]: a server; sets PID_<NAME> and TOKEN_<NAME>.
start() {
  local name=$1 port=$2; shift 2
  GUST_LOG=warn "$GUST" up --data-dir "$WORK/$name" --listen 127.0.0.1:$port \
    --api-listen 127.0.0.1:$((port + 1)) "$@" >"$WORK/$name.out" 2>&1 &
  PIDS+=($!)
  printf -v "PID_$name" %s $!
  for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$((port + 1))/healthz" && break; sleep 0.05; done
  printf -v "TOKEN_$name" %s "$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/$name.out")"
}
SERVERS=(on off control)
ORDERS=("on off control" "off control on" "control on off" "on control off" "control off on" "off on control")
declare -A PORT_OF=([on]=$PORT [off]=$((PORT + 10)) [control]=$((PORT + 20)))
declare -A PID_OF
# fresh: the three servers, new processes on new data directories, each
# with hello deployed and warmed. A process has a speed of its own (where
# its memory and code landed): two identical servers differ by a few
# percent for their whole life. Fresh servers every RESTART rounds spread
# that over many processes instead of one per server.
fresh() {
  local round=$1 s
  for s in "${SERVERS[@]}"; do
    if [[ -n ${PID_OF[$s]:-} ]]; then
      kill -TERM "${PID_OF[$s]}"; wait "${PID_OF[$s]}" 2>/dev/null || true
      rm -rf "$WORK/$s"
    fi
  done
  # Started in a rotating order too: a server started later can differ.
  for s in ${ORDERS[$(( (round - 1) / RESTART % 6 ))]}; do
    if [[ $s == on ]]; then start on "${PORT_OF[on]}"; else start "$s" "${PORT_OF[$s]}" --no-metering; fi
    local token=TOKEN_$s pid=PID_$s
    PID_OF[$s]=${!pid}
    GUST_API=http://127.0.0.1:$((PORT_OF[$s] + 1)) GUST_TOKEN=${!token} "$GUST" deploy hello "$HELLO" --public >/dev/null
    # Warm it up once.
    wrk -t2 -c"$CONNECTIONS" -d"$WARM" "http://127.0.0.1:${PORT_OF[$s]}/hello/" >/dev/null
  done
  echo "bench: round $round: fresh servers" >&2
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# One line per server and round: "round server req/s p50 p99 cpu_ticks requests".
: >"$WORK/rounds"
for round in $(seq "$ROUNDS"); do
  if (( (round - 1) % RESTART == 0 )); then fresh "$round"; fi
  for s in ${ORDERS[$(( (round - 1) % 6 ))]}; do
    t0=$(ticks "${PID_OF[$s]}")
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:${PORT_OF[$s]}/hello/" >"$WORK/round.wrk"
    t1=$(ticks "${PID_OF[$s]}")
    read -r RPS P50 P99 < <(python3 bench/wrk_summary.py <"$WORK/round.wrk")
    REQUESTS=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$WORK/round.wrk")
    echo "$round $s $RPS $P50 $P99 $((t1 - t0)) $REQUESTS" >>"$WORK/rounds"
  done
done
OVERHEAD=$(python3 - "$WORK/rounds" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
hz = int(sys.argv[2])
rounds = {}
for r, s, rps, p50, p99, ticks, requests in rows:
    rounds.setdefault(int(r), {})[s] = (float(rps), p50, p99, int(ticks), int(requests))
print("| round | order | on: req/s | on: p50 / p99 (ms) | off: req/s | control: req/s | on ÷ off | on ÷ control | control ÷ off |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
ratios = {"on ÷ off": [], "on ÷ control": [], "on ÷ both": [], "control ÷ off": []}
for r, by in sorted(rounds.items()):
    on, off, control = by["on"][0], by["off"][0], by["control"][0]
    order = " ".join(s for rr, s, *_ in rows if int(rr) == r)
    ratios["on ÷ off"].append(on / off)
    ratios["on ÷ control"].append(on / control)
    ratios["on ÷ both"].append(on / ((off + control) / 2))
    ratios["control ÷ off"].append(control / off)
    print(f"| {r} | {order} | {on:.0f} | {by['on'][1]} / {by['on'][2]} | {off:.0f} | {control:.0f} "
          f"| {on / off:.3f} | {on / control:.3f} | {control / off:.3f} |")
# "both": off and control as one baseline (twice the processes).
group = {"on": ("on",), "off": ("off",), "control": ("control",), "both": ("off", "control")}
total = {g: sum(by[s][0] for by in rounds.values() for s in m) / len(m) for g, m in group.items()}
cpu = {g: sum(by[s][3] for by in rounds.values() for s in m) / hz
       / sum(by[s][4] for by in rounds.values() for s in m) * 1e6
       for g, m in group.items()}
print()
print("| ratio | summed req/s | median of rounds | CPU per request |")
print("|---|---:|---:|---:|")
for name, values in ratios.items():
    a, b = name.split(" ÷ ")
    print(f"| {name} | **{total[a] / total[b]:.3f}** | {statistics.median(values):.3f} | {cpu[b] / cpu[a]:.3f} |")
print()
print("CPU time per request (µs, all threads, summed over rounds): "
      + ", ".join(f"{s} {cpu[s]:.1f}" for s in ("on", "off", "control"))
      + ". The last column is requests per CPU-second, the same way round.")
PY
)
kill -TERM "${PID_OF[@]}"; wait "${PID_OF[@]}" 2>/dev/null || true

# The ledger alone (no HTTP, no wasm): CPU per record.
cargo build --release -q -p gust-meter --example meter_cost
METER_ALONE=$(target/release/examples/meter_cost 20000 5)

# Accuracy, on a fresh metering server.
start accuracy $((PORT + 30))
PID_on=$PID_accuracy
export GUST_API=http://127.0.0.1:$((PORT + 31)) GUST_TOKEN=$TOKEN_accuracy
"$GUST" deploy busy "$TESTBED" --public >/dev/null
ACCURACY=$(python3 bench/metering_accuracy.py "$PID_on" "http://127.0.0.1:$((PORT + 30))/busy/busy?ms=$BUSY_MS" "$CALLS" "$GUST")
kill -TERM "$PID_on"; wait "$PID_on" 2>/dev/null || true

cat <<REPORT
### $(date -u +%Y-%m-%d), $(nproc) cores

Overhead: \`wrk -t2 -c$CONNECTIONS -d$DURATION\` per server and round, hello component, $ROUNDS rounds, fresh servers every $RESTART; each round loads the three servers alone, in turn, in a rotating order.

$OVERHEAD

The ledger alone (\`meter_cost\`, 20,000 records/s for 5 s): $METER_ALONE

Accuracy: $CALLS calls of a guest busy for $BUSY_MS ms, 2 clients.

$ACCURACY
REPORT
