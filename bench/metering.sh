#!/usr/bin/env bash
# What metering costs and how accurate it is.
#
# Overhead: the hello benchmark (wrk) against two servers, one with the
# usage ledger and one started with --no-metering (a switch for this
# measurement only), run alternately ROUNDS times (who goes first swaps
# each round, so drift in the machine's speed cancels); req/s and
# percentiles, the ratio of each round and their median. On a shared
# virtual machine single rounds swing by 20%: trust the median.
#
# Because of that swing, SIDE rounds also load both servers at the same
# time (one `wrk -t1` each, so both see the machine in the same state)
# and compare what each request cost its server in CPU time (user +
# system, all its threads, from /proc/PID/stat): requests per CPU-second,
# on ÷ off, is the throughput ratio at equal CPU, free of the drift
# between rounds. SIDE control rounds then do the same with two servers
# without the ledger: how far apart two identical servers measure is the
# method's noise. Last, the ledger alone (no HTTP, no wasm): its CPU time
# per record, from crates/meter/examples/meter_cost.rs.
#
# Accuracy: a CPU-bound guest (testbed /busy?ms=N) invoked M times with 2
# clients; the sum of metered guest CPU time against the server process's
# own CPU time over the run (/proc/PID/stat) minus an idle baseline of the
# same length; metered wall time against what the client observed.
#
#   bench/metering.sh       # DURATION=2s ROUNDS=20 SIDE=10 SIDE_DURATION=5 BUSY_MS=20 CALLS=200
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-2s}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-20}
SIDE=${SIDE:-10}
SIDE_DURATION=${SIDE_DURATION:-5}
BUSY_MS=${BUSY_MS:-20}
CALLS=${CALLS:-200}
PORT=${PORT:-18780}
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
start on $PORT
start off $((PORT + 10)) --no-metering
GUST_API=http://127.0.0.1:$((PORT + 1)) GUST_TOKEN=$TOKEN_on "$GUST" deploy hello "$HELLO" --public >/dev/null
GUST_API=http://127.0.0.1:$((PORT + 11)) GUST_TOKEN=$TOKEN_off "$GUST" deploy hello "$HELLO" --public >/dev/null

run_wrk() { wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$1" | python3 bench/wrk_summary.py; }
# Warm both up once; then short alternating rounds, so that each pair of
# rounds sees the machine in the same state.
wrk -t2 -c"$CONNECTIONS" -d3s "http://127.0.0.1:$PORT/hello/" >/dev/null
wrk -t2 -c"$CONNECTIONS" -d3s "http://127.0.0.1:$((PORT + 10))/hello/" >/dev/null
ROWS=""
ON_SUM=0; OFF_SUM=0; RATIOS=()
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then
    read -r OFF_RPS OFF_P50 OFF_P99 < <(run_wrk "http://127.0.0.1:$((PORT + 10))/hello/")
    read -r ON_RPS ON_P50 ON_P99 < <(run_wrk "http://127.0.0.1:$PORT/hello/")
  else
    read -r ON_RPS ON_P50 ON_P99 < <(run_wrk "http://127.0.0.1:$PORT/hello/")
    read -r OFF_RPS OFF_P50 OFF_P99 < <(run_wrk "http://127.0.0.1:$((PORT + 10))/hello/")
  fi
  RATIO=$(python3 -c "print(f'{$ON_RPS/$OFF_RPS:.3f}')")
  RATIOS+=("$RATIO")
  ROWS+="| $round | $OFF_RPS | $OFF_P50 / $OFF_P99 | $ON_RPS | $ON_P50 / $ON_P99 | $RATIO |"$'\n'
  ON_SUM=$(python3 -c "print($ON_SUM + $ON_RPS)"); OFF_SUM=$(python3 -c "print($OFF_SUM + $OFF_RPS)")
done
median() { python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
MEDIAN=$(median "${RATIOS[@]}")

# Side by side: CPU time per request of each server under the same load.
# The control rounds load two servers without the ledger the same way:
# how far apart two identical servers measure is this method's noise.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# side A_PID A_PORT B_PID B_PORT: prints "A_RPS A_US B_RPS B_US B_US/A_US".
side() {
  local a0 b0 a_ticks b_ticks a_rps b_rps
  a0=$(ticks "$1"); b0=$(ticks "$3")
  wrk -t1 -c$((CONNECTIONS / 2)) -d"${SIDE_DURATION}s" --latency "http://127.0.0.1:$2/hello/" >"$WORK/a.wrk" &
  local wrk_a=$!
  wrk -t1 -c$((CONNECTIONS / 2)) -d"${SIDE_DURATION}s" --latency "http://127.0.0.1:$4/hello/" >"$WORK/b.wrk" &
  local wrk_b=$!
  wait "$wrk_a" "$wrk_b"
  a_ticks=$(( $(ticks "$1") - a0 )); b_ticks=$(( $(ticks "$3") - b0 ))
  read -r a_rps _ < <(python3 bench/wrk_summary.py <"$WORK/a.wrk")
  read -r b_rps _ < <(python3 bench/wrk_summary.py <"$WORK/b.wrk")
  python3 -c "
hz, d = $(getconf CLK_TCK), $SIDE_DURATION
a, b = $a_ticks / hz / ($a_rps * d) * 1e6, $b_ticks / hz / ($b_rps * d) * 1e6
print(f'$a_rps {a:.1f} $b_rps {b:.1f} {b / a:.3f}')"
}
SIDE_ROWS=""; SIDE_RATIOS=()
for round in $(seq "$SIDE"); do
  read -r ON_RPS ON_US OFF_RPS OFF_US RATIO < <(side "$PID_on" "$PORT" "$PID_off" $((PORT + 10)))
  SIDE_RATIOS+=("$RATIO")
  SIDE_ROWS+="| $round | $OFF_RPS | $OFF_US | $ON_RPS | $ON_US | $RATIO |"$'\n'
done
SIDE_MEDIAN=$(median "${SIDE_RATIOS[@]}")
kill -TERM "$PID_on"; wait "$PID_on" 2>/dev/null || true
start control $((PORT + 20)) --no-metering
GUST_API=http://127.0.0.1:$((PORT + 21)) GUST_TOKEN=$TOKEN_control "$GUST" deploy hello "$HELLO" --public >/dev/null
wrk -t2 -c"$CONNECTIONS" -d3s "http://127.0.0.1:$((PORT + 20))/hello/" >/dev/null
CONTROL_ROWS=""; CONTROL_RATIOS=()
for round in $(seq "$SIDE"); do
  read -r B_RPS B_US A_RPS A_US RATIO < <(side "$PID_control" $((PORT + 20)) "$PID_off" $((PORT + 10)))
  CONTROL_RATIOS+=("$RATIO")
  CONTROL_ROWS+="| $round | $A_RPS | $A_US | $B_RPS | $B_US | $RATIO |"$'\n'
done
CONTROL_MEDIAN=$(median "${CONTROL_RATIOS[@]}")
kill -TERM "$PID_off" "$PID_control"; wait "$PID_off" "$PID_control" 2>/dev/null || true

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

Overhead: \`wrk -t2 -c$CONNECTIONS -d$DURATION\`, hello component, alternating.

| round | off: req/s | off: p50 / p99 (ms) | on: req/s | on: p50 / p99 (ms) | on ÷ off |
|---|---:|---:|---:|---:|---:|
$ROWS
On ÷ off: median of rounds $MEDIAN, sum of rounds $(python3 -c "print(f'{$ON_SUM/$OFF_SUM:.3f}')").

Side by side: both servers loaded at once (\`wrk -t1 -c$((CONNECTIONS / 2)) -d${SIDE_DURATION}s\` each); server CPU time per request (µs).

| round | off: req/s | off: CPU µs/req | on: req/s | on: CPU µs/req | requests per CPU-second, on ÷ off |
|---|---:|---:|---:|---:|---:|
$SIDE_ROWS
Requests per CPU-second, on ÷ off: median of rounds $SIDE_MEDIAN.

Control: two servers without the ledger, side by side the same way (the method's noise).

| round | off A: req/s | off A: CPU µs/req | off B: req/s | off B: CPU µs/req | requests per CPU-second, B ÷ A |
|---|---:|---:|---:|---:|---:|
$CONTROL_ROWS
Control, B ÷ A: median of rounds $CONTROL_MEDIAN.

The ledger alone (\`meter_cost\`, 20,000 records/s for 5 s): $METER_ALONE

Accuracy: $CALLS calls of a guest busy for $BUSY_MS ms, 2 clients.

$ACCURACY
REPORT
