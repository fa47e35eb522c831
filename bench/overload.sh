#!/usr/bin/env bash
# bench/overload.sh: the simulated ENT offered 5x what it can serve, reached three ways,
# in one run (issue #5).
#
#   origin : `ecluse origin --capacity $CAP --base-latency-ms 20 --latency-per-inflight-ms 2`
#            (latency grows with in-flight requests, 503 or a 10 s hang past 2 x $CAP in
#            flight). A fresh origin process for each step below.              (cpu $SERVER_CPU)
#   direct : oha -> origin
#   nginx  : oha -> nginx -> origin. The best protection open-source nginx has: upstream
#            `max_conns=$LIMIT` + `keepalive 32`, and `limit_conn` $LIMIT per server with
#            `limit_conn_status 503`, so the excess is refused at once instead of queueing
#            (open-source nginx has no upstream queue); proxy_next_upstream off; 1 worker.
#   ecluse : oha -> ecluse (origin `max_inflight: $LIMIT`, `adaptive_concurrency:
#            { min: 4, tolerance: 2.0 }`, one route, threads: 1, access log off) -> origin
#
# Pinning: origin and proxy share cpu $SERVER_CPU, oha runs on cpu $LOAD_CPU (2-core machine,
# as in bench/proxy.sh). The origin mostly sleeps (its latency is simulated), so sharing a
# core with the proxy costs it little; the direct arm has the same origin on the same core.
#
# 1. Calibration, on a fresh origin: oha at fixed rates $STEPS (percent of $CAP / 20 ms) for
#    $STEP_DUR each, stopping at the first step that fails. A step is "successful" when >= 99% of its answers are 200 and it served
#    >= 95% of the rate asked; "best" = the highest 200/s among successful steps. Unloaded p99
#    = p99 at 10% of best ($STEP_DUR).
# 2. For each arm (fresh origin each): oha at 5 x best ($FACTOR), -c $OHA_CONNS, for $DURATION.
#
# Measurement: oha --latency-correction (latency counted from when the request was due,
# so no coordinated omission) --stats-success-breakdown --output-format json. The origin
# answers only 200 or 503 (or hangs then drops the connection), so oha's "successful"
# percentiles are exactly those of the 200s: p99 served = latencyPercentilesSuccessful.p99.
# goodput = number of 200s / length of the run. Requests cut by the end of the -z window
# ("aborted due to deadline") are not counted as errors. Origin peak in-flight comes from
# GET /__origin/stats after the run.
#
# Knobs (environment): CAP=16 LIMIT=$CAP FACTOR=5 DURATION=15s STEP_DUR=5s
#   TARGET_P50=40ms (ecluse's adaptive_concurrency.target_p50; unset by default)
#   STEPS="40 45 50 55 60 65 75 100" OHA_CONNS=400 SERVER_CPU=1 LOAD_CPU=0
#   ECLUSE_BIN=target/release/ecluse (the proxy)  ORIGIN_BIN=$ECLUSE_BIN (needs the
#   `origin` subcommand). Never builds: run `cargo build --release` first.
# Raw outputs go to bench/out/overload-<timestamp>/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

CAP=${CAP:-16}
LIMIT=${LIMIT:-$CAP}
FACTOR=${FACTOR:-5}
DURATION=${DURATION:-15s}
STEP_DUR=${STEP_DUR:-5s}
STEPS=${STEPS:-"40 45 50 55 60 65 75 100"}
OHA_CONNS=${OHA_CONNS:-400}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BASE_MS=20
PER_INFLIGHT_MS=2
ECLUSE_BIN=${ECLUSE_BIN:-target/release/ecluse}
ORIGIN_BIN=${ORIGIN_BIN:-$ECLUSE_BIN}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/overload.sh: %s\n' "$*" >&2; exit 1; }

scripts/need.sh nginx taskset python3 curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! command -v oha >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/oha" ] || die "oha missing: cargo install oha --locked"
  PATH="$HOME/.cargo/bin:$PATH"
fi
[ -x "$ECLUSE_BIN" ] || die "no ecluse binary at $ECLUSE_BIN (cargo build --release --bin ecluse)"
[ -x "$ORIGIN_BIN" ] || die "no binary at $ORIGIN_BIN"
"$ORIGIN_BIN" origin --help >/dev/null 2>&1 ||
  die "$ORIGIN_BIN has no 'origin' subcommand (stale build? cargo build --release --bin ecluse, or set ORIGIN_BIN)"

OUT="$ROOT/bench/out/overload-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/ecluse-overload.XXXXXX)

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

# Stop one process we started (SIGINT, then SIGKILL after 5 s).
stop() {
  local p=$1
  kill -INT "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Poll URL until it answers 200, or fail after 20 s.
wait_200() {
  local url=$1 deadline=$((SECONDS + 20))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" = 200 ]; do
    [ $SECONDS -lt $deadline ] || die "$url never answered 200"
    sleep 0.1
  done
}

# Wait until FILE has a line `listening KIND http://ADDR/`; print the URL.
wait_listening() {
  local file=$1 kind=$2 pid=$3 deadline=$((SECONDS + 20))
  until grep -q "^listening $kind " "$file" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "process for $file exited: $(cat "${file%.stdout}.stderr" 2>/dev/null)"
    [ $SECONDS -lt $deadline ] || die "no 'listening $kind' line in $file"
    sleep 0.05
  done
  sed -n "s/^listening $kind \(http:[^ ]*\)\$/\1/p" "$file" | head -1
}

# Start a fresh origin; sets ORIGIN_PID and ORIGIN_URL (http://ADDR/).
start_origin() {
  local name=$1
  taskset -c "$SERVER_CPU" "$ORIGIN_BIN" origin --port 0 --capacity "$CAP" \
    --base-latency-ms "$BASE_MS" --latency-per-inflight-ms "$PER_INFLIGHT_MS" \
    >"$OUT/origin-$name.stdout" 2>"$OUT/origin-$name.stderr" &
  ORIGIN_PID=$!
  PIDS+=("$ORIGIN_PID")
  ORIGIN_URL=$(wait_listening "$OUT/origin-$name.stdout" origin "$ORIGIN_PID")
  wait_200 "${ORIGIN_URL}pages/x"
}

# oha at a fixed rate: run_oha NAME RATE DURATION URL
run_oha() {
  taskset -c "$LOAD_CPU" oha --no-tui --latency-correction --stats-success-breakdown \
    -q "$2" -c "$OHA_CONNS" -z "$3" --output-format json "$4" \
    >"$OUT/oha-$1.json" 2>"$OUT/oha-$1.err" || true
}

# Summary of an oha JSON: "ok200 per_s p99_ok_ms share_200" (share of answered requests).
oha_summary() {
  python3 - "$1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
codes = j.get("statusCodeDistribution", {})
ok = codes.get("200", 0)
errs = sum(v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k)
answered = sum(codes.values()) + errs
total = j["summary"]["total"] or 1
p99 = (j.get("latencyPercentilesSuccessful") or {}).get("p99")
print(ok, f"{ok / total:.1f}", f"{p99 * 1000:.2f}" if p99 is not None else "nan",
      f"{ok / answered if answered else 0:.4f}")
PY
}

# ---- 1. calibration ---------------------------------------------------------------
NOMINAL=$((CAP * 1000 / BASE_MS))
start_origin calib
URL_CAL="${ORIGIN_URL}pages/x"
BEST=0
: >"$OUT/calibration.txt"
for pct in $STEPS; do
  rate=$((NOMINAL * pct / 100))
  run_oha "calib-$rate" "$rate" "$STEP_DUR" "$URL_CAL"
  read -r ok per_s p99 share < <(oha_summary "$OUT/oha-calib-$rate.json")
  good=$(python3 -c "print(int($share >= 0.99 and $per_s >= 0.95 * $rate))")
  log "calibration: $rate req/s asked ($pct% of $NOMINAL): $per_s 200/s, p99 ${p99} ms, 200 share $share$([ "$good" = 1 ] && echo ' ok' || echo ' FAILED')"
  echo "$rate $per_s $p99 $share $good" >>"$OUT/calibration.txt"
  if [ "$good" = 1 ]; then
    BEST=$(python3 -c "print(max($BEST, $per_s))")
  fi
  # Let a stressed origin drain (hung requests last 10 s) before the next step.
  if [ "$good" != 1 ]; then break; fi
done
python3 -c "import sys; sys.exit(0 if $BEST > 0 else 1)" || die "no calibration step succeeded"
LOW=$(python3 -c "print(max(1, round($BEST * 0.1)))")
stop "$ORIGIN_PID"
start_origin unloaded
run_oha "unloaded-$LOW" "$LOW" "$STEP_DUR" "${ORIGIN_URL}pages/x"
read -r _ _ P99_UNLOADED _ < <(oha_summary "$OUT/oha-unloaded-$LOW.json")
stop "$ORIGIN_PID"
RATE=$(python3 -c "print(round($BEST * $FACTOR))")
log "best $BEST req/s, unloaded p99 $P99_UNLOADED ms (at $LOW req/s); offered load: $RATE req/s"

# ---- 2. the three arms --------------------------------------------------------------
nginx_conf() {
  local port=$1 origin_addr=$2
  cat <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx-body;
  proxy_temp_path $TMP/nginx-proxy;
  fastcgi_temp_path $TMP/nginx-fastcgi;
  uwsgi_temp_path $TMP/nginx-uwsgi;
  scgi_temp_path $TMP/nginx-scgi;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  # At most $LIMIT requests in flight through this server; the rest get 503 at once.
  limit_conn_zone \$server_name zone=perserver:1m;
  upstream origin {
    server $origin_addr max_conns=$LIMIT;
    keepalive 32;
  }
  server {
    listen 127.0.0.1:$port backlog=4096;
    server_name bench;
    limit_conn perserver $LIMIT;
    limit_conn_status 503;
    limit_conn_log_level info;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_next_upstream off;
    }
  }
}
EOF
}

ecluse_conf() {
  cat <<EOF
listen: ["127.0.0.1:0"]
admin: { listen: "127.0.0.1:0" }
server: { threads: 1, watch_config: false }
access_log: { enabled: false }
origins:
  origin:
    servers: ["$1"]
    max_inflight: $LIMIT
    adaptive_concurrency: { min: 4, tolerance: 2.0${TARGET_P50:+, target_p50: $TARGET_P50} }
routes:
  - { name: all, origin: origin }
EOF
}

: >"$OUT/arms.txt"
for arm in direct nginx ecluse; do
  start_origin "$arm"
  addr=${ORIGIN_URL#http://}; addr=${addr%/}
  PROXY_PID=""
  case $arm in
    direct) URL="${ORIGIN_URL}pages/x" ;;
    nginx)
      port=$(free_port)
      nginx_conf "$port" "$addr" >"$OUT/nginx.conf"
      taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP" -e "$TMP/nginx-error.log" -c "$OUT/nginx.conf" \
        >"$OUT/nginx.stdout" 2>&1 &
      PROXY_PID=$!
      PIDS+=("$PROXY_PID")
      URL="http://127.0.0.1:$port/pages/x"
      wait_200 "$URL"
      ;;
    ecluse)
      ecluse_conf "$addr" >"$OUT/ecluse.yaml"
      RUST_LOG=${RUST_LOG:-warn} taskset -c "$SERVER_CPU" "$ECLUSE_BIN" run --config "$OUT/ecluse.yaml" \
        >"$OUT/ecluse.stdout" 2>"$OUT/ecluse.stderr" &
      PROXY_PID=$!
      PIDS+=("$PROXY_PID")
      ADMIN=$(wait_listening "$OUT/ecluse.stdout" admin "$PROXY_PID")
      URL="$(wait_listening "$OUT/ecluse.stdout" proxy "$PROXY_PID")pages/x"
      wait_200 "${ADMIN}readyz"
      wait_200 "$URL"
      ;;
  esac
  log "$arm: oha -q $RATE -c $OHA_CONNS -z $DURATION $URL"
  run_oha "$arm" "$RATE" "$DURATION" "$URL"
  curl -s "${ORIGIN_URL}__origin/stats" >"$OUT/origin-stats-$arm.json" || true
  if [ "$arm" = ecluse ]; then
    curl -s "${ADMIN}metrics" >"$OUT/ecluse-metrics.txt" 2>/dev/null || true
  fi
  [ -z "$PROXY_PID" ] || stop "$PROXY_PID"
  stop "$ORIGIN_PID"
  echo "$arm" >>"$OUT/arms.txt"
done
cp "$TMP"/nginx-error.log "$OUT/" 2>/dev/null || true

python3 - "$OUT" "$RATE" "$BEST" "$P99_UNLOADED" "$LOW" "$CAP" "$LIMIT" "$DURATION" "$OHA_CONNS" <<'PY' | tee "$OUT/table.txt"
import json, os, sys
out, rate, best, p99u, low, cap, limit, dur, conns = sys.argv[1:]
rate = float(rate); best = float(best); p99u = float(p99u)
print()
print(f"overload: simulated ENT capacity {cap} (20 ms + 2 ms per in-flight request above {int(cap)//2},"
      f" 503/hang past {2*int(cap)}); proxies limit {limit} in flight")
print(f"origin best {best:.0f} req/s (highest clean fixed-rate step), unloaded p99 {p99u:.2f} ms (at {low} req/s)")
print(f"offered: oha -q {rate:.0f} -c {conns} -z {dur} --latency-correction; fresh origin per arm")
print()
hdr = (f"{'arm':7} {'offered':>8} {'goodput':>8} {'% best':>7} {'p99 ok ms':>10} {'x unload':>9}"
       f" {'503s':>7} {'other':>7} {'peak inflt':>10} {'p99 non-200 ms':>14}")
print(hdr)
res = {}
for arm in ["direct", "nginx", "ecluse"]:
    try:
        j = json.load(open(f"{out}/oha-{arm}.json"))
    except (OSError, ValueError):
        print(f"{arm:7} (no oha output)"); continue
    codes = j.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    s503 = codes.get("503", 0)
    other = sum(v for k, v in codes.items() if k not in ("200", "503"))
    other += sum(v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k)
    total = j["summary"]["total"]
    good = ok / total
    p99 = (j.get("latencyPercentilesSuccessful") or {}).get("p99")
    p99 = p99 * 1000 if p99 is not None else float("nan")
    try:
        peak = json.load(open(f"{out}/origin-stats-{arm}.json")).get("peak_inflight")
    except (OSError, ValueError):
        peak = None
    res[arm] = (good, p99)
    p99r = (j.get("latencyPercentilesNotSuccessful") or {}).get("p99")
    p99r = f"{p99r * 1000:.1f}" if p99r is not None else "-"
    print(f"{arm:7} {rate:8.0f} {good:8.0f} {100*good/best:6.0f}% {p99:10.1f} {p99/p99u:8.1f}x"
          f" {s503:7} {other:7} {peak if peak is not None else '-':>10} {p99r:>14}")
    errs = {k: v for k, v in j.get("errorDistribution", {}).items()}
    if errs:
        print(f"        errors: " + "; ".join(f"{v} x {k}" for k, v in errs.items()))
print()
if "ecluse" in res:
    good, p99 = res["ecluse"]
    g = good >= 0.9 * best
    l = p99 <= 2 * p99u
    print(f"ecluse goodput >= 90% of best: {100*good/best:.0f}%  {'MET' if g else 'NOT MET'}")
    print(f"ecluse p99 served <= 2x unloaded p99: {p99:.1f} ms vs {2*p99u:.1f} ms  {'MET' if l else 'NOT MET'}")
    print(f"target (issue #5): {'MET' if g and l else 'NOT MET'}")
print(f"raw outputs: {os.path.relpath(out)}")
PY
