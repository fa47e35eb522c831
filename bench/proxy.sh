#!/usr/bin/env bash
# bench/proxy.sh: the same origin reached three ways, measured in one run.
#
#   origin : nginx, `return 200` with a 1 KB body, 1 worker          (cpu $ORIGIN_CPU)
#   direct : load generator -> origin
#   nginx  : load generator -> nginx (proxy_pass, upstream keepalive 64,
#            HTTP/1.1, 1 worker, access_log off)  -> origin           (cpu $PROXY_CPU)
#   ecluse : load generator -> ecluse (server.threads: 1, access_log disabled,
#            default health checks, one origin, one route) -> origin   (cpu $PROXY_CPU)
#
# Pinning (taskset). This machine has 2 cores: every server (origin, nginx proxy, ecluse)
# runs on cpu 1 and the load generator on cpu 0. On a bigger machine set e.g.
# ORIGIN_CPU=2 PROXY_CPU=1 LOAD_CPU=0. The two proxies are pinned to the same core, so the
# comparison is "one core of proxy" against "one core of proxy".
#
# Tools: wrk (closed loop, max throughput: -t1 -c$CONNS, warm-up run first) gives req/s;
# oha at fixed rates ($RATES req/s, --latency-correction, so no coordinated omission)
# gives p50/p99. Each target is measured $ROUNDS times, interleaved (direct, nginx,
# ecluse, direct, …) so drift hits all three alike; the table shows the median.
# Raw outputs go to bench/out/<timestamp>/.
#
# Knobs (environment): DURATION=10s CONNS=50 RATES="2000 5000" ROUNDS=3 WARMUP=3s
#   OHA_CONNS=50 ORIGIN_CPU=1 PROXY_CPU=1 LOAD_CPU=0 ECLUSE_BIN=target/release/ecluse
#   NO_BUILD=1 (use ECLUSE_BIN as is).
#   LIMIT_ARM=0 drops the "ratelim" arm (ecluse with a never-triggering rate limit).
#   EXTRA_ECLUSE="label=/path/to/ecluse[@config.yaml] ..." also measures other ecluse builds in the same
#   run (same config, same core, interleaved): an A/B for a change, against one nginx.
#   FLEET=1 adds a "fleet" arm: the "ratelim" config plus `cluster:` (sync_interval
#   $FLEET_SYNC, default 250ms) on a redis-server this script starts on a free loopback
#   port (cpu $ORIGIN_CPU, no persistence). One fleet node: per-node throughput, with the
#   fleet share applied to the limit on every request. Reports fleet / ratelim and the Redis
#   commands per proxied request (ecluse_cluster_redis_commands_total around each of its runs).
#   PINGORA_ARM=1 adds a "pingora" arm: pingora's floor (examples/pingora_floor.rs, the
#   smallest ProxyHttp on the same pingora, allocator and release profile), so the table
#   separates the framework's cost from ecluse's. EXTRA_PINGORA="label=flag,flag ..." adds
#   more floor arms with its knobs (--ctx-bytes=1024, --compression, --no-steal).
#   FULL_ARM=1 adds a "full" arm: ecluse with every policy of the reference config on the
#   path (route, a never-triggering rate limit, a waiting room whose session cookie every
#   request carries, metrics, the access log written to a file). Target: >= 0.95x pingora.
#   ROUTES_ARM=N (e.g. 2000) adds a "routesN" arm: N per-school host routes
#   (school1.ent.example.fr … schoolN…), every request for the last school; against
#   the one-route "ecluse" arm (target >= 0.97x). ROUTES_BASE_BIN=/path/to/ecluse adds
#   "routesN-base", the same config on another build (the scan before the index).
# Needs: nginx, wrk, taskset (installed through scripts/need.sh), oha (cargo install).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-50}
OHA_CONNS=${OHA_CONNS:-50}
RATES=${RATES-"2000 5000"}  # RATES="": no oha runs
ROUNDS=${ROUNDS:-3}
ORIGIN_CPU=${ORIGIN_CPU:-1}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
ECLUSE_BIN=${ECLUSE_BIN:-target/release/ecluse}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/proxy.sh: %s\n' "$*" >&2; exit 1; }

scripts/need.sh nginx wrk taskset python3 curl
FLEET=${FLEET:-0}
FLEET_SYNC=${FLEET_SYNC:-250ms}
[ "$FLEET" = 0 ] || scripts/need.sh redis-server
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# oha only for the fixed-rate latencies (RATES="" measures throughput alone, with wrk).
if [ -n "$RATES" ] && ! command -v oha >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/oha" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
  else
    log "oha (fixed-rate load generator) is missing: installing it with"
    log "'cargo install oha --locked'. This compiles it from source and takes a few minutes."
    cargo install oha --locked
    PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

PINGORA_ARM=${PINGORA_ARM:-0}
PINGORA_BIN=${PINGORA_BIN:-target/release/examples/pingora_floor}
if [ -z "${NO_BUILD:-}" ]; then
  if [ "$PINGORA_ARM" != 0 ] || [ -n "${EXTRA_PINGORA:-}" ]; then
    log "cargo build --release --bin ecluse --example pingora_floor"
    cargo build --release --bin ecluse --example pingora_floor
  else
    log "cargo build --release --bin ecluse"
    cargo build --release --bin ecluse
  fi
fi
[ -x "$ECLUSE_BIN" ] || die "no ecluse binary at $ECLUSE_BIN"

STAMP=$(date +%Y%m%d-%H%M%S)
OUT="$ROOT/bench/out/$STAMP"
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/ecluse-bench.XXXXXX)

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill -INT "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    # Give each a moment, then insist.
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Poll URL until it answers 200, or fail after 20 s.
wait_200() { # url [header]
  local url=$1 deadline=$((SECONDS + 20)) h=()
  [ -z "${2:-}" ] || h=(-H "$2")
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "${h[@]}" "$url" || true)" = 200 ]; do
    [ $SECONDS -lt $deadline ] || die "$url never answered 200"
    sleep 0.1
  done
}

ORIGIN_PORT=$(free_port)
NGINX_PORT=$(free_port)
STATUS_PORT=$(free_port)
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')

# Common nginx preamble: everything in $TMP, nothing in /var.
nginx_common() {
  local name=$1
  cat <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/$name.pid;
error_log $TMP/$name-error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $TMP/$name-body;
  proxy_temp_path $TMP/$name-proxy;
  fastcgi_temp_path $TMP/$name-fastcgi;
  uwsgi_temp_path $TMP/$name-uwsgi;
  scgi_temp_path $TMP/$name-scgi;
  # Neither side closes a busy keep-alive connection every 1000 requests (the default),
  # so connection reuse is the proxies' doing, not the origin's.
  keepalive_requests 100000000;
  keepalive_timeout 75s;
EOF
}

{
  nginx_common origin
  cat <<EOF
  server {
    listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
    location / { default_type text/plain; return 200 "$BODY"; }
  }
  # Connection counter, so we can see whether the proxies reuse upstream connections.
  server {
    listen 127.0.0.1:$STATUS_PORT;
    location / { stub_status; }
  }
}
EOF
} >"$TMP/origin.conf"

{
  nginx_common nginx
  cat <<EOF
  upstream origin {
    server 127.0.0.1:$ORIGIN_PORT;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # ecluse sets these two; make nginx do the same work.
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
EOF
} >"$TMP/nginx.conf"

cat >"$TMP/ecluse.yaml" <<EOF
listen: ["127.0.0.1:0"]
admin: { listen: "127.0.0.1:0" }
server: { threads: 1, watch_config: false }
access_log: { enabled: false }
origins:
  origin: { servers: ["127.0.0.1:$ORIGIN_PORT"] }
routes:
  - { name: all, origin: origin }
EOF
cp "$TMP"/origin.conf "$TMP"/nginx.conf "$TMP"/ecluse.yaml "$OUT/"

log "origin nginx on 127.0.0.1:$ORIGIN_PORT (cpu $ORIGIN_CPU)"
taskset -c "$ORIGIN_CPU" "$NGINX" -p "$TMP" -e "$TMP/origin-error.log" -c "$TMP/origin.conf" \
  >"$OUT/origin.stdout" 2>&1 &
PIDS+=($!)
log "proxy nginx on 127.0.0.1:$NGINX_PORT (cpu $PROXY_CPU)"
taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" \
  >"$OUT/nginx.stdout" 2>&1 &
PIDS+=($!)

log "ecluse $("$ECLUSE_BIN" --version 2>/dev/null || true) (cpu $PROXY_CPU)"
RUST_LOG=${RUST_LOG:-warn} taskset -c "$PROXY_CPU" "$ECLUSE_BIN" run --config "$TMP/ecluse.yaml" \
  >"$OUT/ecluse.stdout" 2>"$OUT/ecluse.stderr" &
ECLUSE_PID=$!
PIDS+=($ECLUSE_PID)

deadline=$((SECONDS + 20))
until grep -q '^listening admin ' "$OUT/ecluse.stdout" 2>/dev/null; do
  kill -0 "$ECLUSE_PID" 2>/dev/null || { cat "$OUT/ecluse.stderr" >&2; die "ecluse exited"; }
  [ $SECONDS -lt $deadline ] || die "ecluse printed no listening lines"
  sleep 0.1
done
ECLUSE_URL=$(sed -n 's/^listening proxy \(http:[^ ]*\)$/\1/p' "$OUT/ecluse.stdout" | head -1)
ADMIN_URL=$(sed -n 's/^listening admin \(http:[^ ]*\)$/\1/p' "$OUT/ecluse.stdout" | head -1)
[ -n "$ECLUSE_URL" ] && [ -n "$ADMIN_URL" ] || die "cannot read ecluse addresses"

declare -A ADMIN=()
# One extra request header per arm (the routes arm's Host, the full arm's room cookie).
declare -A HDR=()
declare -A URL=(
  [direct]="http://127.0.0.1:$ORIGIN_PORT/"
  [nginx]="http://127.0.0.1:$NGINX_PORT/"
  [ecluse]="$ECLUSE_URL"
)
TARGETS=(direct nginx ecluse)

# The same ecluse with a rate limit on every request that never triggers (issue #3:
# >= 0.95x the throughput without it). LIMIT_ARM=0 leaves it out.
cat >"$TMP/ecluse-ratelim.yaml" <<EOF
listen: ["127.0.0.1:0"]
admin: { listen: "127.0.0.1:0" }
server: { threads: 1, watch_config: false }
access_log: { enabled: false }
origins:
  origin: { servers: ["127.0.0.1:$ORIGIN_PORT"] }
routes:
  - name: all
    origin: origin
    rate_limits:
      - { name: per_ip, key: client_ip, rate: 100000000/s, burst: 100000000 }
EOF
cp "$TMP/ecluse-ratelim.yaml" "$OUT/"
EXTRAS="${EXTRA_ECLUSE:-}"
# Fleet mode (issue: per-node throughput >= 0.9x single node; Redis commands per proxied
# request << 0.1): the ratelim config plus `cluster:`, against a local redis-server.
if [ "$FLEET" != 0 ]; then
  REDIS_PORT=$(free_port)
  log "redis-server on 127.0.0.1:$REDIS_PORT (cpu $ORIGIN_CPU)"
  taskset -c "$ORIGIN_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
    --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
  PIDS+=($!)
  deadline=$((SECONDS + 20))
  until grep -q 'Ready to accept connections' "$OUT/redis.log" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { cat "$OUT/redis.log" >&2; die "redis-server never got ready"; }
    sleep 0.1
  done
  { cat "$TMP/ecluse-ratelim.yaml"
    echo "cluster: { redis: \"redis://127.0.0.1:$REDIS_PORT/\", node_id: bench-fleet, sync_interval: $FLEET_SYNC }"
  } >"$TMP/ecluse-fleet.yaml"
  cp "$TMP/ecluse-fleet.yaml" "$OUT/"
  EXTRAS="fleet=$ECLUSE_BIN@$TMP/ecluse-fleet.yaml $EXTRAS"
fi
if [ "${LIMIT_ARM:-1}" != 0 ]; then
  EXTRAS="ratelim=$ECLUSE_BIN@$TMP/ecluse-ratelim.yaml $EXTRAS"
fi
# Every policy of the reference config on the path (issue #25: >= 0.95x pingora's floor).
FULL_ARM=${FULL_ARM:-0}
if [ "$FULL_ARM" != 0 ]; then
  export ECLUSE_TICKET_KEYS="k1:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  cat >"$TMP/ecluse-full.yaml" <<EOF2
listen: ["127.0.0.1:0"]
admin: { listen: "127.0.0.1:0" }
server: { threads: 1, watch_config: false }
access_log: { enabled: true, path: "$TMP/access-full.log" }
origins:
  origin: { servers: ["127.0.0.1:$ORIGIN_PORT"] }
waiting_rooms:
  ent:
    active_users: 1000000
    new_users_per_minute: 1000000
    secret_env: ECLUSE_TICKET_KEYS
routes:
  - name: all
    origin: origin
    waiting_room: ent
    rate_limits:
      - { name: per_ip, key: client_ip, rate: 100000000/s, burst: 100000000 }
EOF2
  cp "$TMP/ecluse-full.yaml" "$OUT/"
  EXTRAS="$EXTRAS full=$ECLUSE_BIN@$TMP/ecluse-full.yaml"
fi
# N per-school host routes, the request for the last one (issue #25: >= 0.97x one route).
ROUTES_ARM=${ROUTES_ARM:-0}
if [ "$ROUTES_ARM" != 0 ]; then
  {
    cat <<EOF2
listen: ["127.0.0.1:0"]
admin: { listen: "127.0.0.1:0" }
server: { threads: 1, watch_config: false }
access_log: { enabled: false }
origins:
  origin: { servers: ["127.0.0.1:$ORIGIN_PORT"] }
routes:
EOF2
    for i in $(seq "$ROUTES_ARM"); do
      echo "  - { name: school$i, origin: origin, match: { host: school$i.ent.example.fr } }"
    done
  } >"$TMP/ecluse-routes.yaml"
  cp "$TMP/ecluse-routes.yaml" "$OUT/"
  EXTRAS="$EXTRAS routes$ROUTES_ARM=$ECLUSE_BIN@$TMP/ecluse-routes.yaml"
  HDR[routes$ROUTES_ARM]="Host: school$ROUTES_ARM.ent.example.fr"
  if [ -n "${ROUTES_BASE_BIN:-}" ]; then
    EXTRAS="$EXTRAS routes$ROUTES_ARM-base=$ROUTES_BASE_BIN@$TMP/ecluse-routes.yaml"
    HDR[routes$ROUTES_ARM-base]="Host: school$ROUTES_ARM.ent.example.fr"
  fi
fi

# Other ecluse builds or configs (label=BIN or label=BIN@CONFIG), measured in the same run.
for spec in $EXTRAS; do
  label=${spec%%=*} bin=${spec#*=} cfg="$TMP/ecluse.yaml"
  if [[ $bin == *@* ]]; then cfg=${bin#*@}; bin=${bin%%@*}; fi
  [ -x "$bin" ] || die "EXTRA_ECLUSE: no binary at $bin"
  RUST_LOG=${RUST_LOG:-warn} taskset -c "$PROXY_CPU" "$bin" run --config "$cfg" \
    >"$OUT/$label.stdout" 2>"$OUT/$label.stderr" &
  PIDS+=($!)
  deadline=$((SECONDS + 20))
  until grep -q '^listening admin ' "$OUT/$label.stdout" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$label printed no listening lines"
    sleep 0.1
  done
  URL[$label]=$(sed -n 's/^listening proxy \(http:[^ ]*\)$/\1/p' "$OUT/$label.stdout" | head -1)
  ADMIN[$label]=$(sed -n 's/^listening admin \(http:[^ ]*\)$/\1/p' "$OUT/$label.stdout" | head -1)
  wait_200 "${ADMIN[$label]}readyz"
  wait_200 "${URL[$label]}" "${HDR[$label]:-}"
  TARGETS+=("$label")
  log "$label ($bin) on ${URL[$label]}: ready"
done
# pingora's floor, and its knobs (label=flag,flag).
FLOORS="${EXTRA_PINGORA:-}"
[ "$PINGORA_ARM" = 0 ] || FLOORS="pingora= $FLOORS"
for spec in $FLOORS; do
  label=${spec%%=*} flags=${spec#*=}
  [ -x "$PINGORA_BIN" ] || die "no pingora floor binary at $PINGORA_BIN"
  port=$(free_port)
  # shellcheck disable=SC2086 # the flags are words
  taskset -c "$PROXY_CPU" "$PINGORA_BIN" "127.0.0.1:$ORIGIN_PORT" "127.0.0.1:$port" ${flags//,/ } \
    >"$OUT/$label.stdout" 2>"$OUT/$label.stderr" &
  PIDS+=($!)
  URL[$label]="http://127.0.0.1:$port/"
  wait_200 "${URL[$label]}"
  TARGETS+=("$label")
  log "$label (pingora floor ${flags//,/ }) on ${URL[$label]}: ready"
done
# The full arm's requests carry an admitted session's cookie, as a pupil's inside does.
if [ -n "${URL[full]:-}" ]; then
  cookie=$(curl -s -o /dev/null -D - "${URL[full]}" | tr -d '\r' |
    sed -n 's/^[Ss]et-[Cc]ookie: \(ecluse_ent=[^;]*\).*/\1/p' | head -1)
  [ -n "$cookie" ] || die "the full arm set no room cookie"
  HDR[full]="Cookie: $cookie"
fi
for t in "${!HDR[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "${HDR[$t]}" "${URL[$t]}")
  [ "$code" = 200 ] || die "$t answered $code with ${HDR[$t]}"
done
wait_200 "${URL[direct]}"
wait_200 "${URL[nginx]}"
wait_200 "${ADMIN_URL}readyz"
wait_200 "${URL[ecluse]}"
log "ecluse proxy $ECLUSE_URL admin $ADMIN_URL: ready"

origin_accepts() {
  curl -s "http://127.0.0.1:$STATUS_PORT/" | awk 'NR==3 {print $1}'
}

# Redis commands sent so far by an ecluse arm in fleet mode (empty otherwise).
redis_cmds() {
  [ -n "${ADMIN[$1]:-}" ] || return 0
  curl -s "${ADMIN[$1]}metrics" | awk '$1 == "ecluse_cluster_redis_commands_total" {print $2}'
}
# Calls Redis has served (all commands but INFO), when redis-cli is there.
redis_calls() {
  [ -n "${REDIS_PORT:-}" ] && command -v redis-cli >/dev/null 2>&1 || return 0
  redis-cli -p "$REDIS_PORT" info commandstats |
    awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" {n += $3} END {print n + 0}'
}
# Requests ecluse answered so far (all routes, all status classes).
ecluse_requests() {
  curl -s "${ADMIN[$1]}metrics" | awk '/^ecluse_requests_total[{ ]/ {n += $2} END {print n + 0}'
}

run_wrk() { # target round
  local t=$1 r=$2 a0 a1 c0 c1
  a0=$(origin_accepts)
  c0=$(redis_cmds "$t")
  local h=()
  [ -z "${HDR[$t]:-}" ] || h=(-H "${HDR[$t]}")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${h[@]}" "${URL[$t]}" \
    >"$OUT/wrk-$t-$r.txt" 2>&1
  c1=$(redis_cmds "$t")
  a1=$(origin_accepts)
  # -1: the stub_status request itself.
  echo "$((a1 - a0 - 1))" >"$OUT/origin-conns-$t-$r.txt"
  [ -z "$c0" ] || echo "$c0 $c1" >"$OUT/redis-cmds-wrk-$t-$r.txt"
}

# Whole measured phase, for the fleet arm: Redis' own count against the node's.
if [ -n "${ADMIN[fleet]:-}" ]; then
  echo "$(redis_calls) $(redis_cmds fleet) $(ecluse_requests fleet)" >"$OUT/redis-phase-before.txt"
fi

log "warm-up: wrk $WARMUP on each target"
for t in "${TARGETS[@]}"; do
  h=()
  [ -z "${HDR[$t]:-}" ] || h=(-H "${HDR[$t]}")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" "${h[@]}" "${URL[$t]}" >"$OUT/warmup-$t.txt" 2>&1
done

for r in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    log "round $r/$ROUNDS: wrk -t1 -c$CONNS -d$DURATION $t"
    run_wrk "$t" "$r"
  done
done
for q in $RATES; do
  for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
      log "round $r/$ROUNDS: oha -q $q -c $OHA_CONNS -z $DURATION $t"
      c0=$(redis_cmds "$t")
      h=()
      [ -z "${HDR[$t]:-}" ] || h=(-H "${HDR[$t]}")
      taskset -c "$LOAD_CPU" oha --no-tui --latency-correction "${h[@]}" \
        -q "$q" -c "$OHA_CONNS" -z "$DURATION" --output-format json "${URL[$t]}" \
        >"$OUT/oha-$t-$q-$r.json" 2>"$OUT/oha-$t-$q-$r.err" || true
      c1=$(redis_cmds "$t")
      [ -z "$c0" ] || echo "$c0 $c1" >"$OUT/redis-cmds-oha-$t-$q-$r.txt"
    done
  done
done

if [ -n "${ADMIN[fleet]:-}" ]; then
  echo "$(redis_calls) $(redis_cmds fleet) $(ecluse_requests fleet)" >"$OUT/redis-phase-after.txt"
fi
cp "$TMP"/*-error.log "$OUT/" 2>/dev/null || true

python3 - "$OUT" "$ROUNDS" "$RATES" "$CONNS" "$DURATION" "$OHA_CONNS" "${TARGETS[*]}" <<'PY' | tee "$OUT/table.txt"
import json, re, statistics, sys, os
out, rounds, rates, conns, dur, oha_conns, targets = sys.argv[1:]
rounds = int(rounds); rates = rates.split(); targets = targets.split()
extras = targets[3:]

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def wrk(t, r):
    try:
        s = open(f"{out}/wrk-{t}-{r}.txt").read()
    except OSError:
        return None, None
    m = re.search(r"Requests/sec:\s+([\d.]+)", s)
    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", s)
    sock = re.search(r"Socket errors:.*", s)
    return (float(m.group(1)) if m else None), (errs.group(1) if errs else None) or (sock.group(0) if sock else None)

def oha(t, q, r):
    try:
        j = json.load(open(f"{out}/oha-{t}-{q}-{r}.json"))
    except (OSError, ValueError):
        return None, None, None, None
    lp = j.get("latencyPercentiles", {})
    s = j.get("summary", {})
    codes = j.get("statusCodeDistribution", {})
    # Requests cut by the end of the -z window are not failures.
    bad = sum(v for k, v in codes.items() if k != "200") + sum(
        v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k)
    ms = lambda v: v * 1000 if v is not None else None
    return s.get("requestsPerSec"), ms(lp.get("p50")), ms(lp.get("p99")), bad

rps = {t: med([wrk(t, r)[0] for r in range(1, rounds + 1)]) for t in targets}
rps_all = {t: [wrk(t, r)[0] for r in range(1, rounds + 1)] for t in targets}
notes = {t: [wrk(t, r)[1] for r in range(1, rounds + 1) if wrk(t, r)[1]] for t in targets}
conns_open = {}
for t in targets:
    v = []
    for r in range(1, rounds + 1):
        try: v.append(int(open(f"{out}/origin-conns-{t}-{r}.txt").read()))
        except (OSError, ValueError): pass
    conns_open[t] = med(v)
lat = {}
for q in rates:
    for t in targets:
        rs = [oha(t, q, r) for r in range(1, rounds + 1)]
        lat[(t, q)] = (med([x[0] for x in rs]), med([x[1] for x in rs]), med([x[2] for x in rs]),
                       sum(x[3] or 0 for x in rs))

def f(v, fmt="{:.0f}"):
    return "-" if v is None else fmt.format(v)

print()
print(f"ecluse bench: origin nginx `return 200` 1 KB body; median of {rounds} rounds")
print(f"throughput: wrk -t1 -c{conns} -d{dur}; latency: oha -c{oha_conns} -z{dur} fixed rate, --latency-correction")
print("nginx proxy and ecluse both have their access log OFF; both pinned to the same core")
print("(nginx proxy: upstream keepalive 64 with its default keepalive_requests 1000 per upstream connection)")
print()
hdr = f"{'':8} {'req/s':>9}"
for q in rates:
    hdr += f" {'p50@'+q:>10} {'p99@'+q:>10}"
hdr += f" {'origin conns':>13}"
print(hdr + "   (latencies in ms; origin conns = new origin connections during the wrk run)")
for t in targets:
    line = f"{t:8.8} {f(rps[t]):>9}"
    for q in rates:
        _, p50, p99, bad = lat[(t, q)]
        line += f" {f(p50, '{:.3f}'):>10} {f(p99, '{:.3f}'):>10}"
    line += f" {f(conns_open[t]):>13}"
    print(line)
print()
def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b
print("ratios                        req/s" + "".join(f"   p99@{q:<6}" for q in rates))
pairs = [("ecluse / nginx", "ecluse", "nginx")]
pairs += [(f"{x} / nginx", x, "nginx") for x in extras]
pairs += [(f"{x} / ecluse", x, "ecluse") for x in extras]
if "fleet" in targets and "ratelim" in targets:
    pairs += [("fleet / ratelim", "fleet", "ratelim")]
if "pingora" in targets:
    pairs += [(f"{x} / pingora", x, "pingora") for x in ["ecluse"] + extras if x != "pingora"]
pairs += [("ecluse / direct", "ecluse", "direct"), ("nginx  / direct", "nginx", "direct")]
for name, a, b in pairs:
    line = f"{name:28} {f(ratio(rps[a], rps[b]), '{:.2f}x'):>6}"
    for q in rates:
        line += f"   {f(ratio(lat[(a, q)][2], lat[(b, q)][2]), '{:.2f}x'):>9}"
    print(line)
print()
print("per-round wrk req/s: " + "; ".join(
    f"{t} " + " ".join(f(v) for v in rps_all[t]) for t in targets))
for q in rates:
    for t in targets:
        achieved, _, _, bad = lat[(t, q)]
        if achieved is not None and achieved < 0.95 * float(q):
            print(f"warning: {t} reached only {achieved:.0f} req/s of the {q} asked: its latencies are queueing")
        if bad:
            print(f"warning: {t} @ {q} req/s: {bad} non-200 responses or errors")
for t in targets:
    if notes[t]:
        print(f"warning: wrk {t}: {'; '.join(notes[t])}")
for x in ["ecluse"] + extras:
    vr = ratio(rps[x], rps["nginx"])
    vp = [ratio(lat[(x, q)][2], lat[("nginx", q)][2]) for q in rates]
    ok = vr is not None and vr >= 1.0 and all(v is not None and v <= 1.0 for v in vp)
    print(f"target for {x} (>= 1.0x nginx req/s and p99 <= nginx): {'MET' if ok else 'NOT MET'}")
if "full" in targets and "pingora" in targets:
    v = ratio(rps["full"], rps["pingora"])
    print(f"target for full (>= 0.95x pingora req/s): {'MET' if v is not None and v >= 0.95 else 'NOT MET'}")
for x in extras:
    if re.fullmatch(r"routes\d+", x):
        v = ratio(rps[x], rps["ecluse"])
        print(f"target for {x} (>= 0.97x one-route ecluse req/s): {'MET' if v is not None and v >= 0.97 else 'NOT MET'}")
# The same ratio round by round (arms interleaved): median and spread.
def per_round(a, b):
    return [x / y for x, y in zip(rps_all[a], rps_all[b]) if x and y]
for name, a, b in pairs:
    rs = per_round(a, b)
    if len(rs) > 1 and b != "direct":
        print(f"per-round {name}: " + " ".join(f"{v:.2f}" for v in rs)
              + f" (median {statistics.median(rs):.2f}, spread {min(rs):.2f}-{max(rs):.2f})")
if "fleet" in targets and "ratelim" in targets:
    v = ratio(rps["fleet"], rps["ratelim"])
    print(f"target for fleet (>= 0.9x ratelim req/s, per node): {'MET' if v is not None and v >= 0.9 else 'NOT MET'}")

# Redis commands per proxied request (fleet-mode arms): the node's
# ecluse_cluster_redis_commands_total around each of its runs, over the requests sent.
def cmds(name):
    try:
        a, b = open(f"{out}/{name}").read().split()
        return float(b) - float(a)
    except (OSError, ValueError):
        return None
def sent_wrk(t, r):
    try:
        m = re.search(r"(\d+) requests in", open(f"{out}/wrk-{t}-{r}.txt").read())
        return int(m.group(1)) if m else None
    except OSError:
        return None
def sent_oha(t, q, r):
    try:
        return sum(json.load(open(f"{out}/oha-{t}-{q}-{r}.json")).get("statusCodeDistribution", {}).values())
    except (OSError, ValueError):
        return None
for t in targets:
    runs = [(f"wrk", cmds(f"redis-cmds-wrk-{t}-{r}.txt"), sent_wrk(t, r)) for r in range(1, rounds + 1)]
    runs += [(f"oha@{q}", cmds(f"redis-cmds-oha-{t}-{q}-{r}.txt"), sent_oha(t, q, r))
             for q in rates for r in range(1, rounds + 1)]
    if all(c is None for _, c, _ in runs):
        continue
    parts = []
    for kind in ["wrk"] + [f"oha@{q}" for q in rates]:
        c = sum(x[1] or 0 for x in runs if x[0] == kind)
        n = sum(x[2] or 0 for x in runs if x[0] == kind)
        parts.append(f"{kind} {c:.0f} cmds / {n} req = {c / n:.5f}" if n else f"{kind} -")
    print(f"redis commands per proxied request, {t} (target << 0.1): " + "; ".join(parts))
try:
    b = [float(x) for x in open(f"{out}/redis-phase-before.txt").read().split()]
    a = [float(x) for x in open(f"{out}/redis-phase-after.txt").read().split()]
    d = [y - x for x, y in zip(b, a)]
    line = f"whole measured phase (idle time between its runs included): fleet node {d[-2]:.0f} cmds / {d[-1]:.0f} req = {d[-2] / max(d[-1], 1):.5f}"
    if len(d) == 3:
        line += f"; Redis INFO commandstats: {d[0]:.0f} calls"
    print(line)
except (OSError, ValueError, IndexError):
    pass
print(f"raw outputs: {os.path.relpath(out)}")
PY

log "stopping ecluse (SIGINT)"
kill -INT "$ECLUSE_PID" 2>/dev/null || true
