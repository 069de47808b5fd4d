#!/usr/bin/env bash
# Trace replay: an Azure-Functions-shaped workload (bench/trace_replay.py:
# FUNCTIONS functions over HOURS simulated hours, seeded) replayed SPEEDUP
# times faster than real time against a fresh server per keep-alive policy:
# a fixed 10-minute keep-alive and the learned one (both scaled by SPEEDUP:
# the server's --learned-bin-ms and --learned-fallback-ms shrink with it).
# Reports, per policy, the cold-start fraction and memory-time: warm
# function-hours (simulated time) and resident GB·s, using the resident
# size of one warm component measured here (distinct copies of hello).
# Target: learned has no more cold starts than fixed, with at most half
# its memory-time. POLICIES adds variants of the learned policy that weigh
# a cold start differently (`learned:20`: as 20 simulated minutes in
# memory; the default is 12).
#
#   bench/trace.sh                    # FUNCTIONS=2000 HOURS=12 SPEEDUP=600 SEED=1
#   POLICIES="fixed learned learned:6 learned:20" bench/trace.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FUNCTIONS=${FUNCTIONS:-2000}
HOURS=${HOURS:-12}
SPEEDUP=${SPEEDUP:-600}
SEED=${SEED:-1}
PORT=${PORT:-18980}
cargo build --release -q -p gust
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p hello
GUST=target/release/gust
HELLO=examples/target/wasm32-wasip2/release/hello.wasm
WORK=$(mktemp -d)
PID=
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 bench/trace_replay.py generate "$FUNCTIONS" "$HOURS" "$SEED" >"$WORK/trace"
CALLS=$(wc -l <"$WORK/trace")
MINUTE_MS=$((60000 / SPEEDUP))

start() {
  rm -rf "$WORK/data"
  GUST_LOG=warn "$GUST" up --data-dir "$WORK/data" --listen 127.0.0.1:$PORT \
    --api-listen 127.0.0.1:$((PORT + 1)) --scale-tick-ms 25 \
    --learned-bin-ms $MINUTE_MS --learned-fallback-ms $((10 * MINUTE_MS)) "$@" >"$WORK/out" 2>&1 &
  PID=$!
  for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$((PORT + 1))/healthz" && break; sleep 0.05; done
  TOKEN=$(sed -n 's/^gust: admin token (shown once, keep it): //p' "$WORK/out")
}
metric() { curl -fs -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$((PORT + 1))/metrics" | sed -n "s/^$1 //p"; }
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; }

# Resident size of one warm component: 40 distinct copies of hello loaded.
start
python3 bench/scaling.py deploy "http://127.0.0.1:$((PORT + 1))" "$TOKEN" "$HELLO" 40 v 0ms distinct >/dev/null
for _ in $(seq 100); do [ "$(metric gust_functions_warm)" = 0 ] && break; sleep 0.1; done
sleep 0.5
COLD_RSS=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
CURLS=()
for i in $(seq 0 39); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/v$i/" & CURLS+=($!); done
wait "${CURLS[@]}"
WARM_RSS=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
PER_KIB=$(( (WARM_RSS - COLD_RSS) / 40 ))
stop

ROWS=""
declare -A RESULT
for policy in ${POLICIES:-fixed learned}; do
  # learned:W weighs a cold start as W simulated minutes in memory.
  WEIGHT=${policy#learned:}; [ "$WEIGHT" = "$policy" ] && WEIGHT=12
  start --learned-cold-start-weight-ms $((WEIGHT * MINUTE_MS))
  keep=learned; [ $policy = fixed ] && keep="$((10 * MINUTE_MS))ms"
  python3 bench/scaling.py deploy "http://127.0.0.1:$((PORT + 1))" "$TOKEN" "$HELLO" "$FUNCTIONS" f "$keep" >/dev/null
  for _ in $(seq 200); do [ "$(metric gust_functions_warm)" = 0 ] && break; sleep 0.1; done
  read -r SENT ERRORS COLD WARM_S < <(GUST_TOKEN=$TOKEN python3 bench/trace_replay.py replay "http://127.0.0.1:$PORT" "$WORK/trace" "$SPEEDUP" "http://127.0.0.1:$((PORT + 1))/metrics")
  stop
  FRACTION=$(python3 -c "print(f'{$COLD/$SENT:.4f}')")
  FN_HOURS=$(python3 -c "print(f'{$WARM_S*$SPEEDUP/3600:.0f}')")
  GBS=$(python3 -c "print(f'{$WARM_S*$SPEEDUP*$PER_KIB/1048576:.0f}')")
  RESULT[$policy]="$COLD $FN_HOURS"
  ROWS+="| $policy | $SENT | $ERRORS | $COLD | $FRACTION | $FN_HOURS | $GBS |"$'\n'
done
RATIOS=""
read -r FIXED_COLD FIXED_H <<<"${RESULT[fixed]}"
for policy in ${POLICIES:-fixed learned}; do
  [ "$policy" = fixed ] && continue
  read -r COLD H <<<"${RESULT[$policy]}"
  RATIOS+="$policy ÷ fixed: cold starts $(python3 -c "print(f'{$COLD/max($FIXED_COLD,1):.2f}')"), memory-time $(python3 -c "print(f'{$H/max($FIXED_H,1):.2f}')")."$'\n'
done

cat <<REPORT
### $(date -u +%Y-%m-%d), $(nproc) cores

$FUNCTIONS functions, $HOURS simulated hours (seed $SEED, $CALLS calls), replayed ${SPEEDUP}× faster (a simulated minute is $MINUTE_MS ms). One warm component (hello) holds $PER_KIB KiB resident.

| policy | calls | errors | cold starts | cold fraction | warm function-hours | resident GB·s |
|---|---:|---:|---:|---:|---:|---:|
$ROWS
$RATIOS
REPORT
