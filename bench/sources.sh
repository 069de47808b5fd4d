#!/usr/bin/env bash
# Event sources end to end: messages per second from a broker through Gust
# to a trivial function (hello) and its success, next to the rate a plain
# client consumes the same broker with on this machine (the limit), and
# the latency from publish to the end of the function under light load.
#
#   bench/sources.sh                       # every kind, 5000 messages each
#   N=20000 KINDS="redis nats" bench/sources.sh
#
# Brokers: the machine's Redis (6379), RabbitMQ (5672, guest/guest) and
# PostgreSQL (5432, wal_level = logical); started here: a nats-server with
# JetStream (the pinned one in .nats/, or $NATS_SERVER) and a mosquitto
# whose per-client queue holds a whole run (its default, 1000, drops the
# rest of a burst to a slow subscriber) and that lets 1000 messages be in
# flight to a client (its default, 20, is one round trip per 20 messages).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-5000}
LIGHT=${LIGHT:-200}
KINDS=${KINDS:-redis mqtt nats amqp postgres}
PORT=${PORT:-18580}
for tool in curl python3 psql; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
cargo build --release -q -p gust
cargo build --release -q -p gust-sources --example source_load
cargo build --release -q --target wasm32-wasip2 --manifest-path examples/Cargo.toml -p hello
GUST=target/release/gust
LOAD=target/release/examples/source_load
WORK=$(mktemp -d)
TAG=b$$
NATS_BIN=${NATS_SERVER:-.nats/bin/nats-server}
NATS_PORT=$((PORT + 10))
MQTT_PORT=$((PORT + 20))
cleanup() {
  kill "$PID" "${NATS_PID:-}" "${MQTT_PID:-}" 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -d test -qAtc "DROP PUBLICATION IF EXISTS ${TAG}_pub; DROP TABLE IF EXISTS ${TAG}_rows" 2>/dev/null || true
  for slot in $(psql -h 127.0.0.1 -U postgres -d test -Atc "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE '%${TAG}%'" 2>/dev/null); do
    psql -h 127.0.0.1 -U postgres -d test -qAtc "SELECT pg_drop_replication_slot('$slot')" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

export GUST_API=http://127.0.0.1:$((PORT + 1))
GUST_LOG=warn "$GUST" up --dev --data-dir "$WORK/data" --listen 127.0.0.1:$PORT \
  --api-listen 127.0.0.1:$((PORT + 1)) >/dev/null 2>"$WORK/gust.log" &
PID=$!
for _ in $(seq 200); do curl -fs -o /dev/null "$GUST_API/healthz" && break; sleep 0.05; done
"$GUST" deploy sink examples/target/wasm32-wasip2/release/hello.wasm --concurrency 64 >/dev/null

if [[ " $KINDS " == *" mqtt "* ]]; then
  mkdir -p "$WORK/mqtt" && chmod 777 "$WORK/mqtt"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n' $MQTT_PORT >"$WORK/mqtt/m.conf"
  mosquitto -c "$WORK/mqtt/m.conf" >/dev/null 2>&1 &
  MQTT_PID=$!
  sleep 0.3
fi
if [[ " $KINDS " == *" nats "* ]]; then
  "$NATS_BIN" -js -a 127.0.0.1 -p $NATS_PORT -sd "$WORK/nats" >/dev/null 2>&1 &
  NATS_PID=$!
  sleep 0.5
fi

delivered() {
  curl -fs "$GUST_API/metrics" | sed -n 's/^gust_events_total{outcome="delivered"} //p'
}

# Waits until the delivered counter reaches $1; prints the seconds since $2.
wait_delivered() {
  local want=$1 since=$2
  while [ "$(delivered)" -lt "$want" ]; do sleep 0.02; done
  python3 -c "import time; print(f'{time.time() - $since:.2f}')"
}

# p50 and p99 of (end of the delivering attempt - publish time) over the
# last $1 attempts of `sink`, paired in order with the publish times in $2.
latencies() {
  # The ledger indexes every 500 ms: wait until it holds them all.
  for _ in $(seq 50); do
    "$GUST" usage --export jsonl --function sink >"$WORK/usage.jsonl"
    [ "$(grep -c "\"trigger\":\"$kind\"" "$WORK/usage.jsonl")" -ge $((N + $1)) ] && break
    sleep 0.2
  done
  python3 - "$1" "$2" "$WORK/usage.jsonl" "$kind" <<'PY'
import json, sys
n, published, usage, kind = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
sent = [int(l) for l in open(published) if l.strip()]
rows = [json.loads(l) for l in open(usage) if l.strip()]
rows = [r for r in rows if r.get("function") == "sink" and r.get("trigger") == kind]
rows.sort(key=lambda r: r["start_ms"])
ends = [r["start_ms"] + r["wall_ns"] / 1e6 for r in rows[-n:]]
lat = sorted(e - s for e, s in zip(ends, sent[-n:]))
if not lat:
    print("n/a n/a"); sys.exit()
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"{pick(0.5):.1f} {pick(0.99):.1f}")
PY
}

printf '\n%-9s %12s %14s %7s %12s %12s\n' kind "gust msgs/s" "plain msgs/s" ratio "p50 ms" "p99 ms"
for kind in $KINDS; do
  case $kind in
    redis) url=redis://127.0.0.1:6379; target=${TAG}_stream
      add=(--url "$url" --stream "$target") ;;
    mqtt) url=mqtt://127.0.0.1:$MQTT_PORT; target=bench/$TAG
      add=(--url "$url" --topic "$target" --qos 1) ;;
    nats) url=nats://127.0.0.1:$NATS_PORT; target=bench.$TAG
      add=(--url "$url" --stream BENCH --topic "$target") ;;
    amqp) url=amqp://guest:guest@127.0.0.1:5672/%2f; target=${TAG}_queue
      add=(--url "$url" --queue "$target") ;;
    postgres) url=postgres://postgres@127.0.0.1:5432/test; target=${TAG}_rows
      psql -h 127.0.0.1 -U postgres -d test -qAtc "CREATE TABLE $target (id bigint PRIMARY KEY, note text); CREATE PUBLICATION ${TAG}_pub FOR TABLE $target"
      add=(--url "$url" --publication "${TAG}_pub") ;;
  esac
  # What the source needs before it is added.
  case $kind in
    nats) "$LOAD" mkstream nats "$url" BENCH 0 ;;
    amqp) "$LOAD" pub amqp "$url" "$target" 0 ;;
  esac
  "$GUST" source add sink --kind "$kind" "${add[@]}" --prefetch 256 --max-backlog 10000 --id "$kind" >/dev/null
  sleep 1.5

  publish() { # $1: how many, $2: interval ms (optional)
    if [ "$kind" = postgres ]; then
      python3 - "$1" "${2:-}" "$target" "$OFFSET" <<'PY'
import subprocess, sys, time
n, interval, table, offset = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
p = subprocess.Popen(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qAt"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
for i in range(n):
    # Each row its own transaction (the usual shape of an application's writes).
    p.stdin.write(f"INSERT INTO {table} VALUES ({offset + i}, 'x');\n")
    if interval:
        p.stdin.write("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint;\n")
        p.stdin.flush()
        print(p.stdout.readline().strip(), flush=True)
        time.sleep(int(interval) / 1000)
p.stdin.close(); p.wait()
PY
    else
      "$LOAD" pub "$kind" "$url" "$target" "$1" ${2:+"$2"}
    fi
  }

  OFFSET=0
  base=$(delivered)
  start=$(python3 -c 'import time; print(time.time())')
  publish "$N" >/dev/null
  secs=$(wait_delivered $((base + N)) "$start")
  gust_rate=$(python3 -c "print(f'{$N / $secs:.0f}')")

  OFFSET=$N
  base=$(delivered)
  publish "$LIGHT" 20 >"$WORK/sent"
  wait_delivered $((base + LIGHT)) 0 >/dev/null
  read -r p50 p99 < <(latencies "$LIGHT" "$WORK/sent")
  "$GUST" source rm sink "$kind" >/dev/null
  sleep 2 # the source stops within a second: the plain client consumes alone

  # The plain client: the same number of messages, published first, then consumed.
  case $kind in
    postgres)
      psql -h 127.0.0.1 -U postgres -d test -qAtc "SELECT pg_create_logical_replication_slot('${TAG}_plain', 'pgoutput')" >/dev/null
      OFFSET=$((N + LIGHT)); publish "$N" >/dev/null
      plain=$(python3 - "$TAG" "$N" <<'PY'
import subprocess, sys, time
tag, n = sys.argv[1], int(sys.argv[2])
t = time.time()
out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qAtc",
    f"SELECT count(*) FROM pg_logical_slot_get_binary_changes('{tag}_plain', NULL, NULL, 'proto_version', '1', 'publication_names', '{tag}_pub') WHERE substr(data, 1, 1) = 'I'"],
    capture_output=True, text=True, check=True).stdout.strip()
print(f"{int(out) / (time.time() - t):.0f}")
PY
) ;;
    mqtt)
      "$LOAD" sub mqtt "$url" "$target" "$N" >"$WORK/plain" &
      sub=$!; sleep 0.5; publish "$N" >/dev/null; wait $sub
      plain=$(sed -n 's/.*: \([0-9]*\) msgs\/s/\1/p' "$WORK/plain") ;;
    *)
      publish "$N" >/dev/null
      plain=$("$LOAD" sub "$kind" "$url" "$target" "$N" | sed -n 's/.*: \([0-9]*\) msgs\/s/\1/p') ;;
  esac
  ratio=$(python3 -c "print(f'{$gust_rate / max(1, $plain):.2f}')")
  printf '%-9s %12s %14s %7s %12s %12s\n' "$kind" "$gust_rate" "$plain" "$ratio" "$p50" "$p99"
done
