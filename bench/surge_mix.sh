#!/usr/bin/env bash
# bench/surge_mix.sh: one core of ecluse against one nginx worker on the request mix of a
# full room (issue #25): what a region's proxy answers per second per core while a
# surge is on, when most answers are made by the proxy itself.
#
# The mix (weights below, from a surge replay's own counts, see MIX_* below):
#   poll     GET /.ecluse/queue/status?room=ent with a waiting ticket   (answered by the proxy)
#   queue    a waiting student loading an ENT page: the queue page      (answered by the proxy)
#   limited  a student over the per-IP rate limit: 429                  (answered by the proxy)
#   off      the visio while it is switched off: 503 + Retry-After       (answered by the proxy)
#   hit      the day's assignment, 150,000 bytes, from the cache         (answered by the proxy)
#   page     an admitted student's ENT page, proxied to the ENT (4 KB)   (reaches the origin)
#
#   origin : nginx, pages (4 KB) and the assignment as static files,
#            1 worker                                                      (cpu $ORIGIN_CPU)
#   nginx  : 1 worker, access_log off, each kind at its best (closest equivalent):
#            poll   `return 200` with the same JSON body (nginx cannot verify a ticket,
#                   know a place in a queue or sign a refreshed cookie);
#            queue  the same HTML as ecluse's queue page, as a static file at its own
#                   path (nginx cannot tell a waiting ticket from an admitted one, so
#                   the load generator tells it by the path);
#            limited `limit_req` (rate 1r/s per IP, 429), the same body as ecluse's 429 page;
#            off    `return 503` with the same body and Retry-After;
#            hit    `proxy_cache` (keys_zone in memory), upstream keepalive 64;
#            page   `proxy_pass`, upstream keepalive 64.                      (cpu $PROXY_CPU)
#   ecluse : threads: 1, access log off, a full room (active_users: 1: one admitted
#            session, the others wait), visio switched off (level `busy` forced through
#            /admin/level), a 1/s per-IP limit on /api/, the assignment route cached
#            (`cache: {}`).                                                 (cpu $PROXY_CPU)
#
# Two measures, $ROUNDS interleaved rounds each (nginx, ecluse, nginx, …), median:
# 1. throughput: wrk -t1 -c$CONNS -d$DURATION with bench/mix.lua, which draws each
#    request's kind by weight (a fixed sequence, the same for both arms) and counts the
#    answers by status; plus the proxy's own CPU time per request (utime + stime from
#    /proc), hence requests per second per core = 1 s / CPU time per request.
# 2. p50/p99 by kind, at a fixed pace: wrk -t$LAT_CONNS -c$LAT_CONNS (one connection per
#    thread) with MIX_RATE=$RATE: each connection sends its share of $RATE req/s, and
#    bench/mix.lua times every request and keeps a histogram per kind. A connection
#    waits for its answer before the next request (closed loop at a pace: queueing
#    delays the following requests rather than being counted, so the p99 is a floor).
#
# Knobs (environment): DURATION=10s WARMUP=3s CONNS=50 ROUNDS=3 RATE=2000 LAT_CONNS=20
#   ORIGIN_CPU=1 PROXY_CPU=1 LOAD_CPU=0 ECLUSE_BIN=target/release/ecluse NO_BUILD=1,
#   MIX="poll=… queue=… limited=… off=… hit=… page=…" to try other weights.
# Needs: nginx, wrk (with its LuaJIT), taskset, curl, python3 (scripts/need.sh installs
# them with apt-get).
# Raw outputs: bench/out/surge-mix-<stamp>/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-2000}
LAT_CONNS=${LAT_CONNS:-20}
ORIGIN_CPU=${ORIGIN_CPU:-1}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
ECLUSE_BIN=${ECLUSE_BIN:-target/release/ecluse}

# ---- The mix ------------------------------------------------------------------------
# From the quick surge replay's own counts: `NO_BUILD=1 ARMS=ecluse bench/surge.sh`
# (2,000 students over 20 s, an ENT of capacity 200, polls every 5 s), 2026-12-08, the
# ecluse arm's /metrics at the end of the run and its summary (ecluse.json):
#   poll    3,638  ecluse_queue_status_polls_total (717 connection + 2,921 http)
#   queue   1,351  queue pages: the client's queue answers (4,989) less the polls; =
#                  ecluse_room_issued_total (one queue page per ticket issued)
#   limited     0  ecluse_ratelimit_decisions_total{result="limited"}: no student went
#                  over 20/s in that replay (kept in the mix for MIX="… limited=N")
#   off       494  ecluse_requests_total{route="visio",status_class="5xx"}
#   hit     4,000  assignment downloads (ecluse_requests_total{route="assignments"}); in
#                  the replay's policy each is revalidated with the ENT (mode:
#                  revalidate), here a plain hit (`cache: {}`), like nginx's proxy_cache
#   page   16,095  the origin's requests (20,095) less the 4,000 revalidations: pages,
#                  logins, the 79 visio joins, the 4 uploads
# At full scale (50,000 students, waits of minutes) polls weigh far more: try e.g.
# MIX="poll=60 queue=5 limited=1 off=2 hit=8 page=24".
MIX_SOURCE="quick surge replay, 2026-12-08: poll 3638, queue 1351, limited 0, off 494, hit 4000, page 16095"
[ -z "${MIX:-}" ] || MIX_SOURCE="weights given in MIX"
MIX=${MIX:-"poll=3638 queue=1351 limited=0 off=494 hit=4000 page=16095"}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/surge_mix.sh: %s\n' "$*" >&2; exit 1; }

scripts/need.sh nginx wrk taskset python3 curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ -z "${NO_BUILD:-}" ]; then
  log "cargo build --release --bin ecluse"
  cargo build --release --bin ecluse
fi
[ -x "$ECLUSE_BIN" ] || die "no ecluse binary at $ECLUSE_BIN"

OUT="$ROOT/bench/out/surge-mix-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/ecluse-mix.XXXXXX)
chmod 755 "$TMP"
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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_code() { # url code [curl args…]: poll until the URL answers that status, 20 s at most
  local url=$1 code=$2 deadline=$((SECONDS + 20))
  shift 2
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" || true)" = "$code" ]; do
    [ $SECONDS -lt $deadline ] || die "$url never answered $code"
    sleep 0.1
  done
}

ORIGIN_PORT=$(free_port)
NGINX_PORT=$(free_port)
mkdir -p "$TMP/www/files/assignments" "$TMP/pages"
head -c 150000 /dev/urandom >"$TMP/www/files/assignments/day.pdf"
head -c 4096 /dev/zero | tr '\0' 'p' >"$TMP/www/page.html"
chmod -R a+rX "$TMP/www"

nginx_common() {
  cat <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/$1.pid;
error_log $TMP/$1-error.log warn;
events { worker_connections 16384; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $TMP/$1-body; proxy_temp_path $TMP/$1-proxy;
  fastcgi_temp_path $TMP/$1-fastcgi; uwsgi_temp_path $TMP/$1-uwsgi; scgi_temp_path $TMP/$1-scgi;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  sendfile on;
  tcp_nopush on;
EOF
}
{
  nginx_common origin
  cat <<EOF
  server {
    listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
    root $TMP/www;
    location /files/ { default_type application/pdf; add_header Cache-Control "max-age=3600"; }
    location / { default_type text/html; add_header Cache-Control "private, no-store"; try_files /page.html =404; }
  }
}
EOF
} >"$TMP/origin.conf"
taskset -c "$ORIGIN_CPU" "$NGINX" -p "$TMP" -e "$TMP/origin-error.log" -c "$TMP/origin.conf" \
  >"$OUT/origin.stdout" 2>&1 &
PIDS+=($!)

wait_code "http://127.0.0.1:$ORIGIN_PORT/files/assignments/day.pdf" 200

# ---- ecluse -------------------------------------------------------------------------
echo "k1:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$TMP/keys"
cat >"$TMP/ecluse.yaml" <<YAML
listen: ["127.0.0.1:0"]
admin: { listen: "127.0.0.1:0" }
server: { threads: 1, watch_config: false, state_dir: $TMP/state }
access_log: { enabled: false }
waiting_rooms:
  ent:
    active_users: 1
    new_users_per_minute: 1
    secret_file: $TMP/keys
    abandon_timeout: 1h
    session_idle_timeout: 1h
    poll_interval: 10s
degradation:
  levels:
    - name: normal
    - name: busy
      disable: [visio]
  features:
    visio: { message_fr: "La visio est suspendue.", message_en: "Video is paused.", retry_after: 10m }
cache: { memory: 64MiB }
origins:
  ent: { servers: ["127.0.0.1:$ORIGIN_PORT"] }
routes:
  - name: assignments
    match: { path_prefix: /files/assignments/ }
    origin: ent
    waiting_room: ent
    cache: {}
  - { name: visio, match: { path_prefix: /visio }, origin: ent, feature: visio }
  # The surge's 429s come from the per-IP limit of the ENT route; here on a route of
  # their own (all the load comes from 127.0.0.1) so the other kinds stay under it.
  - name: api
    match: { path_prefix: /api/ }
    origin: ent
    rate_limits:
      - { name: per_ip, key: client_ip, rate: 1/s, burst: 1 }
  - { name: ent, match: { path_prefix: / }, origin: ent, waiting_room: ent }
YAML
RUST_LOG=warn taskset -c "$PROXY_CPU" "$ECLUSE_BIN" run --config "$TMP/ecluse.yaml" \
  >"$OUT/ecluse.stdout" 2>"$OUT/ecluse.stderr" &
ECLUSE_PID=$!
PIDS+=($ECLUSE_PID)
deadline=$((SECONDS + 30))
until grep -q '^listening admin ' "$OUT/ecluse.stdout" 2>/dev/null; do
  kill -0 "$ECLUSE_PID" 2>/dev/null || die "ecluse exited: $(cat "$OUT/ecluse.stderr")"
  [ $SECONDS -lt $deadline ] || die "ecluse did not start: $(cat "$OUT/ecluse.stderr")"
  sleep 0.1
done
EC=$(sed -n 's/^listening proxy http:\/\/\([^/]*\)\/$/\1/p' "$OUT/ecluse.stdout" | head -1)
ADMIN=$(sed -n 's/^listening admin http:\/\/\([^/]*\)\/$/\1/p' "$OUT/ecluse.stdout" | head -1)
wait_code "http://$ADMIN/readyz" 200
curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -d '{"level":"busy"}' \
  "http://$ADMIN/admin/level" || die "cannot force the level"
cookie_of() { sed -n 's/^set-cookie: \(ecluse_ent=[^;]*\).*/\1/ip' | head -1; }
# The first student is admitted (the room holds one), every later one waits.
ADMITTED=$(curl -s -D - -o /dev/null "http://$EC/" | cookie_of)
WAITING=$(curl -s -D - -o /dev/null "http://$EC/" | cookie_of)
[ -n "$ADMITTED" ] && [ -n "$WAITING" ] || die "no room cookies"
STATE=$(curl -s -H "Cookie: $WAITING" "http://$EC/.ecluse/queue/status?room=ent")
grep -q '"state":"waiting"' <<<"$STATE" || die "the second student is not waiting: $STATE"

# What ecluse answers for each kind: the bodies nginx will send, and checks that each
# kind gets the answer it should (the page proxied, the file a cache hit…).
fetch() { # name url expected-code [curl args]
  local name=$1 url=$2 want=$3 got
  shift 3
  got=$(curl -s -D "$TMP/pages/$name.head" -o "$TMP/pages/$name.body" -w '%{http_code}' "$@" "$url")
  [ "$got" = "$want" ] || die "ecluse $url: $got, expected $want ($(head -c 300 "$TMP/pages/$name.body"))"
}
fetch poll "http://$EC/.ecluse/queue/status?room=ent" 200 -H "Cookie: $WAITING"
fetch queue "http://$EC/cours/maths" 200 -H "Cookie: $WAITING"
grep -qi 'ecluse' "$TMP/pages/queue.body" || die "the waiting student's page is not the queue page"
curl -s -o /dev/null "http://$EC/api/notes"   # the burst of 1
fetch limited "http://$EC/api/notes" 429
fetch off "http://$EC/visio/salle" 503 -H "Cookie: $ADMITTED"
fetch page "http://$EC/cours/maths" 200 -H "Cookie: $ADMITTED"
cmp -s "$TMP/pages/page.body" "$TMP/www/page.html" || die "the admitted student's page is not the ENT's"
fetch hit "http://$EC/files/assignments/day.pdf" 200 -H "Cookie: $ADMITTED"
fetch hit "http://$EC/files/assignments/day.pdf" 200 -H "Cookie: $ADMITTED"
grep -qi '^cache-status: ecluse; hit' "$TMP/pages/hit.head" ||
  die "ecluse: the assignment is not a cache hit: $(grep -i '^cache-status' "$TMP/pages/hit.head")"
RETRY_AFTER=$(sed -n 's/^retry-after: *\([0-9]*\).*/\1/ip' "$TMP/pages/off.head" | head -1)

# ---- nginx --------------------------------------------------------------------------
mkdir -p "$TMP/www/_"
cp "$TMP/pages/queue.body" "$TMP/www/_/queue.html"
cp "$TMP/pages/limited.body" "$TMP/www/_/429.html"
cp "$TMP/pages/off.body" "$TMP/www/_/off.html"
chmod -R a+rX "$TMP/www"
# nginx's `return` takes the body inline: JSON only, single quotes escaped for nginx.
POLL_JSON=$(sed "s/'/\\\\'/g" "$TMP/pages/poll.body")
{
  nginx_common nginx
  cat <<EOF
  limit_req_zone \$binary_remote_addr zone=perip:10m rate=1r/s;
  proxy_cache_path $TMP/nginx-cache levels=1:2 keys_zone=ent:16m max_size=1g inactive=60m use_temp_path=off;
  upstream ent { server 127.0.0.1:$ORIGIN_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    root $TMP/www;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header X-Forwarded-For \$remote_addr;
    proxy_set_header X-Forwarded-Proto \$scheme;
    location = /.ecluse/queue/status {
      default_type application/json; add_header Cache-Control no-store; return 200 '$POLL_JSON';
    }
    location = /_/queue.html { default_type text/html; add_header Cache-Control no-store; }
    location /api/ {
      limit_req zone=perip burst=1 nodelay;
      limit_req_status 429;
      error_page 429 /_/429.html;
      proxy_pass http://ent;
    }
    location = /_/429.html { internal; default_type text/html; add_header Retry-After 1 always; }
    location /visio { error_page 503 /_/off.html; return 503; }
    location = /_/off.html { internal; default_type text/html; add_header Retry-After ${RETRY_AFTER:-600} always; }
    location /files/assignments/ {
      proxy_pass http://ent;
      proxy_cache ent;
      proxy_cache_valid 200 10m;
      proxy_cache_lock on;
      add_header X-Cache-Status \$upstream_cache_status;
    }
    location / { proxy_pass http://ent; }
  }
}
EOF
} >"$TMP/nginx.conf"
taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" \
  >"$OUT/nginx.stdout" 2>&1 &
NGINX_PID=$!
PIDS+=($NGINX_PID)
NG=127.0.0.1:$NGINX_PORT
wait_code "http://$NG/_/queue.html" 200
curl -s -o /dev/null "http://$NG/files/assignments/day.pdf"
curl -s -D - -o /dev/null "http://$NG/files/assignments/day.pdf" | grep -qi '^x-cache-status: HIT' ||
  die "nginx: the assignment is not a cache hit"
wait_code "http://$NG/api/notes" 429
wait_code "http://$NG/visio/salle" 503
cp "$TMP"/*.conf "$TMP/ecluse.yaml" "$OUT/"
cp -r "$TMP/pages" "$OUT/"

# ---- The kinds, per arm: name weight path cookie --------------------------------------
declare -A W=()
for kv in $MIX; do W[${kv%%=*}]=${kv#*=}; done
KINDS=(poll queue limited off hit page)
for k in "${KINDS[@]}"; do [ -n "${W[$k]:-}" ] || die "MIX has no weight for $k"; done
declare -A EXPECT=([poll]=200 [queue]=200 [limited]=429 [off]=503 [hit]=200 [page]=200)
kinds_file() { # arm
  local a=$1
  for k in "${KINDS[@]}"; do
    case $a/$k in
      */poll) printf '%s\t%s\t%s\t%s\n' $k "${W[$k]}" "/.ecluse/queue/status?room=ent" "$WAITING" ;;
      ecluse/queue) printf '%s\t%s\t%s\t%s\n' $k "${W[$k]}" "/cours/maths" "$WAITING" ;;
      nginx/queue) printf '%s\t%s\t%s\t%s\n' $k "${W[$k]}" "/_/queue.html" "$WAITING" ;;
      */limited) printf '%s\t%s\t%s\t%s\n' $k "${W[$k]}" "/api/notes" - ;;
      */off) printf '%s\t%s\t%s\t%s\n' $k "${W[$k]}" "/visio/salle" "$ADMITTED" ;;
      */hit) printf '%s\t%s\t%s\t%s\n' $k "${W[$k]}" "/files/assignments/day.pdf" "$ADMITTED" ;;
      */page) printf '%s\t%s\t%s\t%s\n' $k "${W[$k]}" "/cours/maths" "$ADMITTED" ;;
    esac
  done
}
declare -A HOST=([nginx]=$NG [ecluse]=$EC)
declare -A ARM_PIDS=([nginx]="$NGINX_PID $(cat /proc/"$NGINX_PID"/task/*/children)" [ecluse]=$ECLUSE_PID)
ARMS=(nginx ecluse)
for a in "${ARMS[@]}"; do kinds_file "$a" >"$OUT/kinds-$a.tsv"; done

proc_ticks() {
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
  done
  echo "$t"
}

log "warm-up: wrk $WARMUP on each arm"
for a in "${ARMS[@]}"; do
  MIX_KINDS="$OUT/kinds-$a.tsv" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" \
    -s bench/mix.lua "http://${HOST[$a]}" >"$OUT/warmup-$a.txt" 2>&1
done
for r in $(seq "$ROUNDS"); do
  for a in "${ARMS[@]}"; do
    log "round $r/$ROUNDS: wrk -t1 -c$CONNS -d$DURATION mix on $a"
    t0=$(proc_ticks ${ARM_PIDS[$a]})
    MIX_KINDS="$OUT/kinds-$a.tsv" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" \
      -s bench/mix.lua "http://${HOST[$a]}" >"$OUT/wrk-$a-$r.txt" 2>&1
    echo "$(($(proc_ticks ${ARM_PIDS[$a]}) - t0))" >"$OUT/ticks-$a-$r.txt"
  done
done
for r in $(seq "$ROUNDS"); do
  for a in "${ARMS[@]}"; do
    log "round $r/$ROUNDS: $RATE req/s over $LAT_CONNS connections, latency by kind, on $a"
    MIX_KINDS="$OUT/kinds-$a.tsv" MIX_RATE=$RATE MIX_THREADS=$LAT_CONNS taskset -c "$LOAD_CPU" \
      wrk -t"$LAT_CONNS" -c"$LAT_CONNS" -d"$DURATION" -s bench/mix.lua "http://${HOST[$a]}" \
      >"$OUT/lat-$a-$r.txt" 2>&1
  done
done
cp "$TMP"/*-error.log "$OUT/" 2>/dev/null || true
# Which layer answered ecluse's polls: below pingora (a kept-alive HTTP/1.1 connection)
# or through it.
curl -s "http://$ADMIN/metrics" >"$OUT/ecluse-metrics.txt" || true
grep '^ecluse_queue_status_polls_total' "$OUT/ecluse-metrics.txt" >&2 || true

python3 - "$OUT" "$ROUNDS" "$CONNS" "$DURATION" "$RATE" "$(getconf CLK_TCK)" "$MIX" \
  "$MIX_SOURCE" "$LAT_CONNS" <<'PY' | tee "$OUT/table.txt"
import json, os, re, statistics, sys
out, rounds, conns, dur, rate, hz, mix, source, lat_conns = sys.argv[1:]
rounds, hz = int(rounds), float(hz)
W = dict(kv.split("=") for kv in mix.split())
W = {k: float(v) for k, v in W.items()}
kinds = ["poll", "queue", "limited", "off", "hit", "page"]
expect = {"poll": "200", "queue": "200", "limited": "429", "off": "503", "hit": "200", "page": "200"}
arms = ["nginx", "ecluse"]
R = range(1, rounds + 1)
med = lambda xs: statistics.median([x for x in xs if x is not None]) if any(x is not None for x in xs) else None
f = lambda v, fmt="{:.0f}": "-" if v is None else fmt.format(v)
ratio = lambda a, b: None if a is None or not b else a / b

def wrk(a, r):
    try: t = open(f"{out}/wrk-{a}-{r}.txt").read()
    except OSError: return None, None, {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    n = re.search(r"(\d+) requests in", t)
    st = {s: int(c) for s, c in re.findall(r"^status (\d+) (\d+)$", t, re.M)}
    return (float(m.group(1)) if m else None), (int(n.group(1)) if n else None), st

def ticks(a, r):
    try: return int(open(f"{out}/ticks-{a}-{r}.txt").read())
    except (OSError, ValueError): return None

rps = {a: [wrk(a, r)[0] for r in R] for a in arms}
us = {a: [ticks(a, r) / hz * 1e6 / wrk(a, r)[1] if ticks(a, r) is not None and wrk(a, r)[1] else None
          for r in R] for a in arms}
print()
print(f"surge mix, one core each: wrk -t1 -c{conns} -d{dur}, bench/mix.lua, median of {rounds} interleaved rounds")
tot = sum(W.values())
print("mix: " + ", ".join(f"{k} {100 * W[k] / tot:.1f}%" for k in kinds) + f"  ({source})")
print()
print(f"{'':8} {'req/s':>9} {'CPU us/req':>11} {'req/s per core':>15}   per-round req/s")
for a in arms:
    u = med(us[a])
    print(f"{a:8} {f(med(rps[a])):>9} {f(u, '{:.1f}'):>11} {f(None if not u else 1e6 / u):>15}   "
          + " ".join(f(v) for v in rps[a]))
e, n = med(rps["ecluse"]), med(rps["nginx"])
ue, un = med(us["ecluse"]), med(us["nginx"])
print(f"ratio ecluse / nginx: req/s {f(ratio(e, n), '{:.2f}x')}, per core (1 / CPU per request) "
      f"{f(ratio(un, ue), '{:.2f}x')}")
# Answers by status against the weights (a kind answered wrongly shows here).
for a in arms:
    st = {}
    for r in R:
        for s, c in wrk(a, r)[2].items(): st[s] = st.get(s, 0) + c
    n_all = sum(st.values())
    want = {}
    for k in kinds: want[expect[k]] = want.get(expect[k], 0) + W[k] / tot
    got = {s: c / n_all for s, c in st.items()} if n_all else {}
    line = ", ".join(f"{s}: {100 * got.get(s, 0):.1f}% (weights {100 * want.get(s, 0):.1f}%)"
                     for s in sorted(set(got) | set(want)))
    print(f"answers by status, {a}: {line}")
    if any(abs(got.get(s, 0) - want.get(s, 0)) > 0.02 for s in set(got) | set(want)):
        print(f"warning: {a}'s answers do not match the mix: a kind got another answer than it should")

def lat(a, r):
    """{kind: (n, p50 ms, p99 ms)}, req/s achieved"""
    try: t = open(f"{out}/lat-{a}-{r}.txt").read()
    except OSError: return {}, None
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    return ({k: (int(n_), float(p50), float(p99)) for k, n_, p50, p99 in
             re.findall(r"^latency (\S+) (\d+) ([\d.]+) ([\d.]+)$", t, re.M)},
            float(m.group(1)) if m else None)

print()
print(f"latency by kind: wrk -t{lat_conns} -c{lat_conns} -d{dur}, each connection at its share of {rate} req/s,"
      f" bench/mix.lua timing each request; median of {rounds} rounds (ms)")
print(f"{'kind':8} {'n/round':>8} {'nginx p50':>10} {'nginx p99':>10} {'ecluse p50':>11} {'ecluse p99':>11} {'p99 e/n':>8}")
L = {a: [lat(a, r) for r in R] for a in arms}
worse = []
for k in kinds:
    p = {a: (med([x[0].get(k, (0, None, None))[1] for x in L[a]]),
             med([x[0].get(k, (0, None, None))[2] for x in L[a]])) for a in arms}
    nk = med([x[0].get(k, (None,))[0] for x in L["ecluse"]])
    rr = ratio(p["ecluse"][1], p["nginx"][1])
    if rr is not None and rr > 1.0: worse.append(k)
    print(f"{k:8} {f(nk):>8} {f(p['nginx'][0], '{:.3f}'):>10} {f(p['nginx'][1], '{:.3f}'):>10} "
          f"{f(p['ecluse'][0], '{:.3f}'):>11} {f(p['ecluse'][1], '{:.3f}'):>11} {f(rr, '{:.2f}x'):>8}")
print("achieved req/s in the latency runs: " + "; ".join(
    f"{a} " + " ".join(f(x[1]) for x in L[a]) for a in arms))
print()
ok = (ratio(e, n) or 0) >= 1.0
print(f"target (>= 1.0x nginx for the mix): {'MET' if ok else 'NOT MET'} ({f(ratio(e, n), '{:.2f}x')});"
      f" p99 <= nginx's: {'MET' if not worse else 'NOT MET for ' + ', '.join(worse)}")
print(f"raw outputs: {os.path.relpath(out)}")
PY
