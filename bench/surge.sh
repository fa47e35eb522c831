#!/usr/bin/env bash
# bench/surge.sh: Monday 16 March 2020, 08:00, replayed against the simulated ENT, three
# ways in one run (issue #9), with one table and one plot.
#
#   origin : `ecluse-surge origin --capacity $CAP --latency-per-inflight-us $PER_US`: the
#            simulated ENT (login, pages, assignment files, exam slots teachers upload
#            into, a CPU-heavy visio). A page takes $CAP/2 x $PER_US at rest; from $CAP/2
#            requests in flight on, its throughput is saturated (1/$PER_US) and each more
#            request only adds $PER_US of latency; past 2 x $CAP it answers 503 or hangs
#            10 s then drops the connection. A fresh origin per arm.
#   direct : students -> origin
#   nginx  : students -> nginx (bench/surge-nginx.conf: limit_req, limit_conn, max_conns at
#            the ENT's capacity, proxy_cache behind auth_request) -> origin
#   ecluse : students -> ecluse (bench/surge-ecluse.yaml: waiting room, visio switched off
#            when a queue forms, revalidated file cache, max_inflight at the capacity) ->
#            origin
#   ecluse-auto : the same policy with `active_users: auto` and `new_users_per_minute:
#            auto` and no numbers at all: no calibration (issue #23, docs/room-sizing.md)
#
# Scenarios (SCENARIO=...): `standard` (default), the Monday 08:00 surge; `half`: half of
# the ENT's servers die $LOSE_AT after the first request and come back at $RECOVER_AT
# (`ecluse-surge origin --lose-half-at --recover-at`), to compare a calibrated room that
# goes on admitting what the whole ENT could take with one that follows it.
#
# The students (`ecluse-surge run`): $STUDENTS arrive over $RAMP at a rate growing
# linearly (open loop: they come whatever the ENT does); each opens the ENT, waits on the
# queue page when there is one (polling its status URL at the interval it says, cookies
# kept), logs in, downloads the day's assignment file and their class's exam paper
# (checked by SHA-256), opens $PAGES pages, 30% try the visio, logs out; 300-900 ms
# between clicks; after an error they reload after 2-5 s. $TEACHERS teachers upload their
# exam papers in the first second (clicking "send" again after an error, 5 times at
# most). Each student has its own loopback address (127.16.0.0/12), teachers come from
# 127.2.0.0/16 (ecluse's `staff` class); everything goes to 127.0.0.1.
#
# The ecluse policy is sized like ops would after a load test: `ecluse-surge calibrate`
# measures the fresh origin's best goodput ($CAP clients in a closed loop); active_users
# is the students who, clicking every 300-900 ms, make $TARGET (default 1.0) of it, plus
# $PENDING_SHARE (default 1) x the admissions waiting for their holder's next poll: all of
# the ENT, since admitted students wait a moment for an ENT slot (queue_timeout) rather
# than meet a 503. The pace is the turnover that implies.
#
# Pinning (2-core machine): origin and proxy on cpu $SERVER_CPU, the load generator on
# cpu $LOAD_CPU, as in bench/overload.sh.
#
# Knobs (environment): STUDENTS RAMP CAP PER_US TEACHERS PAGES POLL TARGET MAX_DURATION
#   ARMS="direct nginx ecluse" (add ecluse-auto) SCENARIO=standard|half LOSE_AT RECOVER_AT
#   SERVER_CPU=1 LOAD_CPU=0 SEED
#   ECLUSE_BIN=target/release/ecluse SURGE_BIN=target/release/ecluse-surge
#   NO_BUILD=1 (use them as they are; otherwise `cargo build --release` first).
# `--full`: 50,000 students over 3 minutes against a bigger ENT; the plot is copied to
# docs/surge.svg. Outputs: bench/out/surge-<timestamp>/ (ARM.csv per second, ARM.json
# summary, ARM.people.json, ARM.svg, surge.svg, table.md, configs and logs).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

FULL=0
for a in "$@"; do
  case $a in
    --full) FULL=1 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "bench/surge.sh: unknown argument $a (try --full)" >&2; exit 2 ;;
  esac
done

if [ "$FULL" = 1 ]; then
  STUDENTS=${STUDENTS:-50000}
  RAMP=${RAMP:-180s}
  CAP=${CAP:-400}
  PER_US=${PER_US:-1000}
  TEACHERS=${TEACHERS:-16}
  POLL=${POLL:-10s}
  MAX_DURATION=${MAX_DURATION:-15m}
else
  STUDENTS=${STUDENTS:-2000}
  RAMP=${RAMP:-20s}
  CAP=${CAP:-200}
  PER_US=${PER_US:-2000}
  TEACHERS=${TEACHERS:-4}
  POLL=${POLL:-5s}
  MAX_DURATION=${MAX_DURATION:-3m}
fi
PAGES=${PAGES:-3}
TARGET=${TARGET:-1.0}
PENDING_SHARE=${PENDING_SHARE:-1}
SEED=${SEED:-20200316}
ARMS=${ARMS:-"direct nginx ecluse"}
SCENARIO=${SCENARIO:-standard}
case $SCENARIO in
  standard) SCHEDULE=() ;;
  half)
    LOSE_AT=${LOSE_AT:-$([ "$FULL" = 1 ] && echo 90s || echo 15s)}
    RECOVER_AT=${RECOVER_AT:-$([ "$FULL" = 1 ] && echo 300s || echo 60s)}
    SCHEDULE=(--lose-half-at "$LOSE_AT" --recover-at "$RECOVER_AT")
    ;;
  *) echo "bench/surge.sh: SCENARIO is standard or half" >&2; exit 2 ;;
esac
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
ECLUSE_BIN=${ECLUSE_BIN:-target/release/ecluse}
SURGE_BIN=${SURGE_BIN:-target/release/ecluse-surge}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/surge.sh: %s\n' "$*" >&2; exit 1; }

scripts/need.sh nginx taskset curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# Always (a no-op when up to date): a binary left from an older checkout would replay
# the old code.
if [ "${NO_BUILD:-0}" != 1 ]; then
  log "building release binaries (cargo build --release --bin ecluse --bin ecluse-surge)"
  scripts/need.sh cmake
  cargo build --release --bin ecluse --bin ecluse-surge
fi
[ -x "$ECLUSE_BIN" ] || die "no ecluse binary at $ECLUSE_BIN"
[ -x "$SURGE_BIN" ] || die "no ecluse-surge binary at $SURGE_BIN"
# The load generator opens one socket per student in flight, the proxies as many.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

OUT="$ROOT/bench/out/surge-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/ecluse-surge.XXXXXX)

PIDS=()
stop() {
  local p=$1
  kill -INT "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${PIDS[@]}"; do stop "$p"; done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Wait until FILE has a line `listening KIND http://ADDR/`; print ADDR.
wait_listening() {
  local file=$1 kind=$2 pid=$3 deadline=$((SECONDS + 30))
  until grep -q "^listening $kind " "$file" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "process for $file exited: $(cat "${file%.stdout}.stderr" 2>/dev/null)"
    [ $SECONDS -lt $deadline ] || die "no 'listening $kind' line in $file"
    sleep 0.05
  done
  sed -n "s|^listening $kind http://\([^/]*\)/\$|\1|p" "$file" | head -1
}

wait_200() {
  local url=$1 deadline=$((SECONDS + 30))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" = 200 ]; do
    [ $SECONDS -lt $deadline ] || die "$url never answered 200"
    sleep 0.1
  done
}

start_origin() {
  local arm=$1
  taskset -c "$SERVER_CPU" "$SURGE_BIN" origin --port 0 --capacity "$CAP" \
    --latency-per-inflight-us "$PER_US" --exam-slots "$TEACHERS" "${SCHEDULE[@]}" \
    >"$OUT/origin-$arm.stdout" 2>"$OUT/origin-$arm.stderr" &
  ORIGIN_PID=$!
  PIDS+=("$ORIGIN_PID")
  ORIGIN=$(wait_listening "$OUT/origin-$arm.stdout" origin "$ORIGIN_PID")
  wait_200 "http://$ORIGIN/healthz"
}

log "$STUDENTS students over $RAMP, $TEACHERS teachers; ENT capacity $CAP (saturates at $((1000000 / PER_US)) req/s); arms: $ARMS"
for arm in $ARMS; do
  start_origin "$arm"
  ADMIN_ARG=()
  PROXY_PID=""
  case $arm in
    direct) TARGET_ADDR=$ORIGIN ;;
    nginx)
      port=$(free_port)
      mkdir -p "$TMP/nginx/cache"
      # nginx's workers run as an unprivileged user when started as root: they must be
      # able to write the cache and temp files.
      chmod 755 "$TMP"
      chmod -R 777 "$TMP/nginx"
      sed -e "s|@PORT@|$port|g" -e "s|@ORIGIN@|$ORIGIN|g" -e "s|@CAPACITY@|$CAP|g" \
        -e "s|@TMP@|$TMP/nginx|g" bench/surge-nginx.conf >"$OUT/nginx.conf"
      taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/nginx-error.log" \
        -c "$OUT/nginx.conf" >"$OUT/nginx.stdout" 2>&1 &
      PROXY_PID=$!
      PIDS+=("$PROXY_PID")
      TARGET_ADDR=127.0.0.1:$port
      wait_200 "http://$TARGET_ADDR/pages/warmup"
      ;;
    ecluse)
      CAL=$(taskset -c "$LOAD_CPU" "$SURGE_BIN" calibrate --origin "$ORIGIN" --pages "$PAGES" \
        --poll "$POLL" --teachers "$TEACHERS" --target "$TARGET" --pending-share "$PENDING_SHARE")
      BEST=$(sed -n 's/^best_rps //p' <<<"$CAL")
      PACE=$(sed -n 's/^new_users_per_minute //p' <<<"$CAL")
      ACTIVE=$(sed -n 's/^active_users //p' <<<"$CAL")
      log "ecluse: ENT best ${BEST} req/s -> active_users $ACTIVE, new_users_per_minute $PACE"
      mkdir -p "$OUT/ecluse"
      sed -e "s|@ORIGIN@|$ORIGIN|g" -e "s|@CAPACITY@|$CAP|g" -e "s|@PACE@|$PACE|g" \
        -e "s|@ACTIVE@|$ACTIVE|g" -e "s|@POLL@|$POLL|g" bench/surge-ecluse.yaml >"$OUT/ecluse/ecluse.yaml"
      echo "k1:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$OUT/ecluse/ticket.key"
      "$ECLUSE_BIN" check "$OUT/ecluse/ecluse.yaml" >&2
      RUST_LOG=${RUST_LOG:-warn} taskset -c "$SERVER_CPU" "$ECLUSE_BIN" run --config "$OUT/ecluse/ecluse.yaml" \
        >"$OUT/ecluse.stdout" 2>"$OUT/ecluse.stderr" &
      PROXY_PID=$!
      PIDS+=("$PROXY_PID")
      TARGET_ADDR=$(wait_listening "$OUT/ecluse.stdout" proxy "$PROXY_PID")
      ADMIN=$(wait_listening "$OUT/ecluse.stdout" admin "$PROXY_PID")
      wait_200 "http://$ADMIN/readyz"
      ADMIN_ARG=(--admin "$ADMIN")
      ;;
    ecluse-auto)
      # No calibration: the room sizes itself from the ENT (the run measures the ENT's
      # best goodput itself, for the efficiency column only).
      mkdir -p "$OUT/ecluse-auto"
      sed -e "s|@ORIGIN@|$ORIGIN|g" -e "s|@CAPACITY@|$CAP|g" -e "s|@PACE@|auto|g" \
        -e "s|@ACTIVE@|auto|g" -e "s|@POLL@|$POLL|g" bench/surge-ecluse.yaml >"$OUT/ecluse-auto/ecluse.yaml"
      echo "k1:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$OUT/ecluse-auto/ticket.key"
      "$ECLUSE_BIN" check "$OUT/ecluse-auto/ecluse.yaml" >&2
      RUST_LOG=${RUST_LOG:-warn} taskset -c "$SERVER_CPU" "$ECLUSE_BIN" run --config "$OUT/ecluse-auto/ecluse.yaml" \
        >"$OUT/ecluse-auto.stdout" 2>"$OUT/ecluse-auto.stderr" &
      PROXY_PID=$!
      PIDS+=("$PROXY_PID")
      TARGET_ADDR=$(wait_listening "$OUT/ecluse-auto.stdout" proxy "$PROXY_PID")
      ADMIN=$(wait_listening "$OUT/ecluse-auto.stdout" admin "$PROXY_PID")
      wait_200 "http://$ADMIN/readyz"
      ADMIN_ARG=(--admin "$ADMIN")
      ;;
    *) die "unknown arm $arm (direct, nginx, ecluse, ecluse-auto)" ;;
  esac
  log "$arm: students -> $TARGET_ADDR"
  taskset -c "$LOAD_CPU" "$SURGE_BIN" run --arm "$arm" --target "$TARGET_ADDR" --origin "$ORIGIN" \
    "${ADMIN_ARG[@]}" --students "$STUDENTS" --ramp "$RAMP" --teachers "$TEACHERS" \
    --pages "$PAGES" --max-duration "$MAX_DURATION" --seed "$SEED" --out "$OUT" \
    >"$OUT/$arm.summary" 2>"$OUT/$arm.log" || die "$arm run failed: $(tail -5 "$OUT/$arm.log")"
  if [ "$arm" = ecluse ] || [ "$arm" = ecluse-auto ]; then
    curl -s "http://$ADMIN/metrics" >"$OUT/$arm-metrics.txt" || true
  fi
  [ -z "$PROXY_PID" ] || stop "$PROXY_PID"
  stop "$ORIGIN_PID"
done
cp "$TMP"/nginx/nginx-error.log "$OUT/" 2>/dev/null || true

{
  echo "Surge replay: $STUDENTS students over $RAMP (rate rising linearly), $TEACHERS teachers;"
  echo "simulated ENT of capacity $CAP in flight (throughput saturating at $((1000000 / PER_US)) req/s),"
  echo "a fresh one per arm; scenario $SCENARIO${LOSE_AT:+ (half the servers die at $LOSE_AT, back at $RECOVER_AT)}; $(date -u +%Y-%m-%d), $(nproc) cores."
  echo
  "$SURGE_BIN" report --dir "$OUT" --arms "$(echo "$ARMS" | tr ' ' ',')" --svg "$OUT/surge.svg"
} | tee "$OUT/table.md"
if [ "$FULL" = 1 ]; then
  cp "$OUT/surge.svg" docs/surge.svg
  echo "plot: docs/surge.svg"
fi
echo "raw outputs: ${OUT#"$ROOT"/}"
