#!/usr/bin/env bash
# bench/cache.sh: ecluse's cache against nginx proxy_cache, in one run.
#
#   origin : nginx serving static files from the run's scratch dir (1 KB, 1 MB, 2 MB of
#            random bytes, `Cache-Control: max-age=3600`), 1 worker, sendfile. Its access
#            log is on (only this origin's), so origin fetches can be counted. The 2 MB
#            file (part 2) is sent at `limit_rate $ORIGIN_RATE` (default 4m: one fetch
#            takes ~0.5 s), a loaded ENT rather than a local disk, so that many students
#            really do arrive while the first fetch is in progress.     (cpu $ORIGIN_CPU)
#   nginx  : proxy_cache (keys_zone in memory, proxy_cache_path in the scratch dir,
#            proxy_cache_lock on with lock_timeout/lock_age 10s like ecluse's default
#            lock_timeout, proxy_cache_valid 200 10m), upstream keepalive 64, HTTP/1.1,
#            1 worker, access_log off, sendfile on. Adds `X-Cache-Status`.  (cpu $PROXY_CPU)
#   ecluse : `ecluse run`, server.threads: 1, access_log disabled, cache: { memory: 256MiB,
#            max_object_size: 8MiB }, one route with `cache: {}`.          (cpu $PROXY_CPU)
#
# 1. Cache-hit throughput. Each arm is warmed (one request, then a second one that must
#    be a hit: `Cache-Status: ecluse; hit…` / `X-Cache-Status: HIT`, else the run stops),
#    then wrk -t1 -c$CONNS -d$DURATION per object size (1 KB, 1 MB), after a $WARMUP wrk
#    warm-up, $ROUNDS rounds interleaved (round 1: nginx 1K, ecluse 1K, nginx 1M,
#    ecluse 1M; round 2: …), median. MB/s = req/s x body size (10^6 bytes). Origin
#    fetches during the wrk runs are counted too (must be 0).
# 2. 10,000 students fetching the same 2 MB file at once, cold cache: oha -n $STUDENTS
#    -c $STUDENT_CONNS --disable-keepalive (every student a new TCP connection, as a new
#    browser would be; closed loop: as fast as the machine moves 10,000 x 2 MB, which is
#    20 GB through loopback on 2 cores). Each arm and round uses its own URL
#    (`/students/2m.bin?run=<arm>-<round>`: both caches key on the query) so every run
#    starts cold. Reports origin fetches (from the origin's access log; target = 1), the
#    number of 200s, p50/p99, and for ecluse the ecluse_cache_requests_total deltas.
#    $STUDENT_ROUNDS rounds, interleaved nginx/ecluse.
#
# Pinning (taskset), as in bench/proxy.sh: this machine has 2 cores; every server runs
# on cpu 1, the load generators on cpu 0. On a bigger machine set e.g. ORIGIN_CPU=2.
# Raw outputs go to bench/out/cache-<timestamp>/.
#
# Knobs (environment): DURATION=10s WARMUP=3s CONNS=50 ROUNDS=3 STUDENTS=10000
#   STUDENT_CONNS=500 STUDENT_ROUNDS=$ROUNDS ORIGIN_RATE=4m (nginx limit_rate for the 2 MB
#   file; 0 = unlimited) STUDENT_KEEPALIVE=0 (1: oha reuses its connections)
#   ORIGIN_CPU=1 PROXY_CPU=1 LOAD_CPU=0 ECLUSE_BIN=target/release/ecluse
#   NO_BUILD=1 (use ECLUSE_BIN as is).
# Needs: nginx, wrk, taskset, curl, python3 (installed through scripts/need.sh), oha
# (cargo install).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
STUDENTS=${STUDENTS:-10000}
STUDENT_CONNS=${STUDENT_CONNS:-500}
STUDENT_ROUNDS=${STUDENT_ROUNDS:-$ROUNDS}
STUDENT_KEEPALIVE=${STUDENT_KEEPALIVE:-0}
ORIGIN_RATE=${ORIGIN_RATE:-4m}
ORIGIN_CPU=${ORIGIN_CPU:-1}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
ECLUSE_BIN=${ECLUSE_BIN:-target/release/ecluse}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/cache.sh: %s\n' "$*" >&2; exit 1; }

scripts/need.sh nginx wrk taskset python3 curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! command -v oha >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/oha" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
  else
    log "oha (load generator) is missing: installing it with"
    log "'cargo install oha --locked'. This compiles it from source and takes a few minutes."
    cargo install oha --locked
    PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

if [ -z "${NO_BUILD:-}" ]; then
  log "cargo build --release --bin ecluse"
  cargo build --release --bin ecluse
fi
[ -x "$ECLUSE_BIN" ] || die "no ecluse binary at $ECLUSE_BIN"

STAMP=$(date +%Y%m%d-%H%M%S)
OUT="$ROOT/bench/out/cache-$STAMP"
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/ecluse-cache-bench.XXXXXX)
# nginx workers run as `nobody` when started as root: they must be able to read the files.
chmod 755 "$TMP"

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
wait_200() {
  local url=$1 deadline=$((SECONDS + 20))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" = 200 ]; do
    [ $SECONDS -lt $deadline ] || die "$url never answered 200"
    sleep 0.1
  done
}

ORIGIN_PORT=$(free_port)
NGINX_PORT=$(free_port)

# The objects: random bytes (nothing compresses or dedupes them).
mkdir -p "$TMP/www/students"
head -c 1024 /dev/urandom >"$TMP/www/1k.bin"
head -c $((1024 * 1024)) /dev/urandom >"$TMP/www/1m.bin"
head -c $((2 * 1024 * 1024)) /dev/urandom >"$TMP/www/students/2m.bin"
chmod -R a+rX "$TMP/www"
declare -A SIZE_PATH=([1K]=/1k.bin [1M]=/1m.bin)
declare -A SIZE_BYTES=([1K]=1024 [1M]=$((1024 * 1024)))
SIZES=(1K 1M)
STUDENT_PATH=/students/2m.bin
STUDENT_BYTES=$((2 * 1024 * 1024))

# Common nginx preamble: everything in $TMP, nothing in /var.
nginx_common() {
  local name=$1
  cat <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/$name.pid;
error_log $TMP/$name-error.log warn;
events { worker_connections 16384; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $TMP/$name-body;
  proxy_temp_path $TMP/$name-proxy;
  fastcgi_temp_path $TMP/$name-fastcgi;
  uwsgi_temp_path $TMP/$name-uwsgi;
  scgi_temp_path $TMP/$name-scgi;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
EOF
}

{
  nginx_common origin
  cat <<EOF
  # One line per request that reached the origin: how origin fetches are counted.
  log_format fetches '\$request_uri \$status \$body_bytes_sent';
  server {
    listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
    access_log $TMP/origin-access.log fetches;
    root $TMP/www;
    location / { add_header Cache-Control "max-age=3600"; }
    location /students/ {
      add_header Cache-Control "max-age=3600";
      limit_rate $ORIGIN_RATE;
    }
  }
}
EOF
} >"$TMP/origin.conf"

{
  nginx_common nginx
  cat <<EOF
  proxy_cache_path $TMP/nginx-cache levels=1:2 keys_zone=ecl:16m max_size=1g inactive=60m
                   use_temp_path=off;
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
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_cache ecl;
      proxy_cache_valid 200 10m;
      # One origin fetch per object; the others wait for it (ecluse's cache lock, whose
      # default lock_timeout is 10s).
      proxy_cache_lock on;
      proxy_cache_lock_timeout 10s;
      proxy_cache_lock_age 10s;
      add_header X-Cache-Status \$upstream_cache_status;
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
cache: { memory: 256MiB, max_object_size: 8MiB }
origins:
  origin: { servers: ["127.0.0.1:$ORIGIN_PORT"] }
routes:
  - { name: all, origin: origin, cache: {} }
EOF
cp "$TMP"/origin.conf "$TMP"/nginx.conf "$TMP"/ecluse.yaml "$OUT/"

log "origin nginx on 127.0.0.1:$ORIGIN_PORT (cpu $ORIGIN_CPU, 2 MB file at limit_rate $ORIGIN_RATE)"
taskset -c "$ORIGIN_CPU" "$NGINX" -p "$TMP" -e "$TMP/origin-error.log" -c "$TMP/origin.conf" \
  >"$OUT/origin.stdout" 2>&1 &
PIDS+=($!)
log "proxy_cache nginx on 127.0.0.1:$NGINX_PORT (cpu $PROXY_CPU)"
taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" \
  >"$OUT/nginx.stdout" 2>&1 &
NGINX_PID=$!
PIDS+=($NGINX_PID)

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

declare -A BASE=(
  [nginx]="http://127.0.0.1:$NGINX_PORT"
  [ecluse]="${ECLUSE_URL%/}"
)
ARMS=(nginx ecluse)

wait_200 "http://127.0.0.1:$ORIGIN_PORT/1k.bin"
wait_200 "http://127.0.0.1:$NGINX_PORT/1k.bin"
wait_200 "${ADMIN_URL}readyz"
log "ecluse proxy $ECLUSE_URL admin $ADMIN_URL: ready"

# CPU accounting, to tell whether a figure is the proxy's limit or the load generator's:
# the proxy's own CPU time (utime + stime of all its processes and threads; nginx = master
# + worker + cache manager) and how busy the load generator's core was.
declare -A ARM_PIDS=(
  [nginx]="$NGINX_PID $(cat /proc/"$NGINX_PID"/task/*/children)"
  [ecluse]="$ECLUSE_PID"
)
proc_ticks() { # pid...: CPU time in clock ticks
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
    t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
  done
  echo "$t"
}
cpu_line() { # cpu number: "total idle" ticks from /proc/stat
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $5 + $6 }' /proc/stat
}
# Busy ticks of all the cores in use (load generator, proxies, origin), whoever is billed.
BENCH_CPUS=$(printf '%s\n' "$LOAD_CPU" "$PROXY_CPU" "$ORIGIN_CPU" | sort -u)
cpus_busy() {
  local c t i b=0
  for c in $BENCH_CPUS; do read -r t i < <(cpu_line "$c"); b=$((b + t - i)); done
  echo "$b"
}
measure_start() { # arm
  M_PROXY=$(proc_ticks ${ARM_PIDS[$1]}); M_LOAD=$(cpu_line "$LOAD_CPU"); M_ALL=$(cpus_busy)
}
measure_end() { # arm file: writes "proxy_ticks load_total load_idle all_busy"
  local p l0t l0i l1t l1i
  p=$(proc_ticks ${ARM_PIDS[$1]})
  read -r l0t l0i <<<"$M_LOAD"
  read -r l1t l1i < <(cpu_line "$LOAD_CPU")
  echo "$((p - M_PROXY)) $((l1t - l0t)) $((l1i - l0i)) $(($(cpus_busy) - M_ALL))" >"$2"
}

# Requests the origin served for a path (exact request URI), from its access log.
origin_fetches() {
  [ -f "$TMP/origin-access.log" ] || { echo 0; return; }
  awk -v p="$1" '$1 == p { n++ } END { print n + 0 }' "$TMP/origin-access.log"
}

# First request fills the cache; the second must come from it, or the numbers below
# would measure the proxy path, not the cache.
warm_and_check() { # arm path bytes
  local arm=$1 path=$2 bytes=$3 url hdrs got
  url="${BASE[$arm]}$path"
  wait_200 "$url"
  hdrs=$(curl -s -D - -o "$TMP/body" "$url")
  got=$(stat -c %s "$TMP/body")
  [ "$got" = "$bytes" ] || die "$arm $path: body of $got bytes, expected $bytes"
  case $arm in
    ecluse)
      grep -qi '^cache-status: ecluse; hit' <<<"$hdrs" || die "ecluse $path: the second \
request was not a cache hit (Cache-Status: $(grep -i '^cache-status:' <<<"$hdrs" | tr -d '\r' \
| cut -d' ' -f2-)). Is the route's cache policy on and the object under max_object_size?" ;;
    nginx)
      grep -qi '^x-cache-status: HIT' <<<"$hdrs" || die "nginx $path: the second request \
was not a cache hit (X-Cache-Status: $(grep -i '^x-cache-status:' <<<"$hdrs" | tr -d '\r' \
| cut -d' ' -f2-)). Check $OUT/nginx-error.log."
  esac
  printf '%s' "$hdrs" >"$OUT/hit-headers-$arm-$(basename "$path").txt"
}

for s in "${SIZES[@]}"; do
  for a in "${ARMS[@]}"; do
    warm_and_check "$a" "${SIZE_PATH[$s]}" "${SIZE_BYTES[$s]}"
  done
done
log "both caches hold the 1 KB and 1 MB objects (second request was a hit)"

# ---- 1. cache-hit throughput --------------------------------------------------------
log "warm-up: wrk $WARMUP on each arm and size"
for s in "${SIZES[@]}"; do
  for a in "${ARMS[@]}"; do
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" "${BASE[$a]}${SIZE_PATH[$s]}" \
      >"$OUT/warmup-$a-$s.txt" 2>&1
  done
done

for r in $(seq "$ROUNDS"); do
  for s in "${SIZES[@]}"; do
    for a in "${ARMS[@]}"; do
      log "round $r/$ROUNDS: wrk -t1 -c$CONNS -d$DURATION $a $s"
      f0=$(origin_fetches "${SIZE_PATH[$s]}")
      measure_start "$a"
      taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${BASE[$a]}${SIZE_PATH[$s]}" \
        >"$OUT/wrk-$a-$s-$r.txt" 2>&1
      measure_end "$a" "$OUT/cpu-wrk-$a-$s-$r.txt"
      f1=$(origin_fetches "${SIZE_PATH[$s]}")
      echo "$((f1 - f0))" >"$OUT/origin-fetches-wrk-$a-$s-$r.txt"
    done
  done
done

# ---- 2. 10,000 students, one 2 MB file, cold cache ----------------------------------
metrics() { curl -s "${ADMIN_URL}metrics" | grep '^ecluse_cache_requests_total' || true; }
KA_FLAG=(--disable-keepalive)
[ "$STUDENT_KEEPALIVE" = 1 ] && KA_FLAG=()
for r in $(seq "$STUDENT_ROUNDS"); do
  for a in "${ARMS[@]}"; do
    uri="$STUDENT_PATH?run=$a-$r"
    log "round $r/$STUDENT_ROUNDS: $STUDENTS students on $a$uri: oha -n $STUDENTS -c $STUDENT_CONNS ${KA_FLAG[*]}"
    f0=$(origin_fetches "$uri")
    [ "$a" = ecluse ] && metrics >"$OUT/metrics-students-$r-before.txt"
    measure_start "$a"
    taskset -c "$LOAD_CPU" oha --no-tui -n "$STUDENTS" -c "$STUDENT_CONNS" "${KA_FLAG[@]}" \
      --output-format json "${BASE[$a]}$uri" \
      >"$OUT/oha-students-$a-$r.json" 2>"$OUT/oha-students-$a-$r.err" || true
    measure_end "$a" "$OUT/cpu-students-$a-$r.txt"
    f1=$(origin_fetches "$uri")
    [ "$a" = ecluse ] && metrics >"$OUT/metrics-students-$r-after.txt"
    echo "$((f1 - f0))" >"$OUT/origin-fetches-students-$a-$r.txt"
  done
done

cp "$TMP"/*-error.log "$TMP/origin-access.log" "$OUT/" 2>/dev/null || true

python3 - "$OUT" "$ROUNDS" "$CONNS" "$DURATION" "$STUDENT_ROUNDS" "$STUDENTS" "$STUDENT_CONNS" \
  "$STUDENT_KEEPALIVE" "$ORIGIN_RATE" "$STUDENT_BYTES" "$(getconf CLK_TCK)" <<'PY' | tee "$OUT/table.txt"
import json, os, re, statistics, sys
(out, rounds, conns, dur, srounds, students, sconns, ska, orate, sbytes, hz) = sys.argv[1:]
hz = float(hz)
rounds, srounds, students, sbytes = int(rounds), int(srounds), int(students), int(sbytes)
arms = ["nginx", "ecluse"]
sizes = [("1K", "1 KB", 1024), ("1M", "1 MB", 1024 * 1024)]

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def f(v, fmt="{:.0f}"):
    return "-" if v is None else fmt.format(v)

def ratio(a, b):
    return None if a is None or not b else a / b

def read_int(p):
    try: return int(open(p).read())
    except (OSError, ValueError): return None

def cpu(p):
    """(proxy CPU seconds, load-generator core busy fraction, busy seconds of all the
    cores in use) over one measured run."""
    try: proxy, lt, li, allb = map(int, open(p).read().split())
    except (OSError, ValueError): return None, None, None
    return proxy / hz, ((1 - li / lt) if lt else None), allb / hz

def wrk(a, s, r):
    """req/s, requests, seconds, note"""
    try: t = open(f"{out}/wrk-{a}-{s}-{r}.txt").read()
    except OSError: return None, None, None, None
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    n = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", t)
    secs = None
    if n:
        secs = float(n.group(2)) * {"ms": 1e-3, "s": 1, "m": 60}[n.group(3)]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    sock = re.search(r"Socket errors:.*", t)
    note = (f"{bad.group(1)} non-2xx" if bad else None) or (sock.group(0) if sock else None)
    return (float(m.group(1)) if m else None), (int(n.group(1)) if n else None), secs, note

R = range(1, rounds + 1)
rps, us_req, busy, load, all_us = {}, {}, {}, {}, {}
for a in arms:
    for s, _, _ in sizes:
        k = (a, s)
        runs = [wrk(a, s, r) for r in R]
        cpus = [cpu(f"{out}/cpu-wrk-{a}-{s}-{r}.txt") for r in R]
        rps[k] = [x[0] for x in runs]
        us_req[k] = med([c[0] * 1e6 / x[1] if c[0] is not None and x[1] else None
                         for x, c in zip(runs, cpus)])
        busy[k] = med([c[0] / x[2] if c[0] is not None and x[2] else None for x, c in zip(runs, cpus)])
        load[k] = med([c[1] for c in cpus])
        all_us[k] = med([c[2] * 1e6 / x[1] if c[2] is not None and x[1] else None
                         for x, c in zip(runs, cpus)])
notes = [f"{a} {s} round {r}: {wrk(a, s, r)[3]}" for a in arms for s, _, _ in sizes
         for r in R if wrk(a, s, r)[3]]
wrk_fetch = {(a, s): sum(read_int(f"{out}/origin-fetches-wrk-{a}-{s}-{r}.txt") or 0 for r in R)
             for a in arms for s, _, _ in sizes}

print()
print(f"1. cache hits: wrk -t1 -c{conns} -d{dur}, median of {rounds} interleaved rounds")
print("   nginx proxy_cache vs ecluse cache (memory tier), 1 worker / 1 thread, both on the same core")
print()
print(f"{'size':6} {'nginx req/s':>12} {'ecluse req/s':>13} {'ecluse/nginx':>13} "
      f"{'nginx MB/s':>11} {'ecluse MB/s':>12} {'origin fetches':>15}")
verdicts, bound = [], []
for s, label, nbytes in sizes:
    n, e = med(rps[("nginx", s)]), med(rps[("ecluse", s)])
    mbs = lambda v: None if v is None else v * nbytes / 1e6
    fetches = wrk_fetch[("nginx", s)] + wrk_fetch[("ecluse", s)]
    print(f"{label:6} {f(n):>12} {f(e):>13} {f(ratio(e, n), '{:.2f}x'):>13} "
          f"{f(mbs(n)):>11} {f(mbs(e)):>12} {fetches:>15}")
    verdicts.append(f"{label} {'MET' if (ratio(e, n) or 0) >= 1.0 else 'NOT MET'} "
                    f"({f(ratio(e, n), '{:.2f}x')})")
print("   (MB/s = req/s x body size in 10^6 bytes; origin fetches = requests that reached the"
      " origin during the wrk runs, both arms: must be 0)")
print()
print("   where the time went: proxy CPU time (utime+stime of its processes) per request, how busy"
      " that kept the proxy, how busy the")
print("   load generator's core was, and the busy time of all the cores used per request (wrk,"
      " proxy, kernel, whoever is billed)")
print(f"{'size':6} {'nginx us/req':>13} {'ecluse us/req':>14} {'ecluse/nginx':>13} "
      f"{'nginx busy':>11} {'ecluse busy':>12} {'wrk core n/e':>13} {'all cores us/req n/e':>21}")
pct = lambda v: f(None if v is None else 100 * v, "{:.0f}%")
for s, label, _ in sizes:
    n, e = us_req[("nginx", s)], us_req[("ecluse", s)]
    print(f"{label:6} {f(n, '{:.1f}'):>13} {f(e, '{:.1f}'):>14} {f(ratio(e, n), '{:.2f}x'):>13} "
          f"{pct(busy[('nginx', s)]):>11} {pct(busy[('ecluse', s)]):>12} "
          f"{pct(load[('nginx', s)]) + '/' + pct(load[('ecluse', s)]):>13} "
          f"{f(all_us[('nginx', s)], '{:.1f}') + '/' + f(all_us[('ecluse', s)], '{:.1f}'):>21}")
    for a in arms:
        if (load[(a, s)] or 0) > 0.95 and (busy[(a, s)] or 1) < 0.9:
            bound.append(f"{label} {a}")
print("per-round req/s: " + "; ".join(
    f"{a} {s} " + " ".join(f(v) for v in rps[(a, s)]) for s, _, _ in sizes for a in arms))
if bound:
    print("note: the load generator's core was saturated while the proxy's was not for: "
          + ", ".join(bound) + ". There req/s is wrk's limit, not the proxy's; and on loopback part of the server's TCP"
          " sending is billed to wrk's core: compare 'all cores us/req' (bench/README.md).")
print("target (cache hits >= 1.0x nginx proxy_cache req/s): " + ", ".join(verdicts))
for n in notes:
    print(f"warning: wrk {n}")

def oha(a, r):
    try: j = json.load(open(f"{out}/oha-students-{a}-{r}.json"))
    except (OSError, ValueError): return None
    lp, sm = j.get("latencyPercentiles", {}), j.get("summary", {})
    fb = j.get("firstBytePercentiles", {})
    codes = j.get("statusCodeDistribution", {})
    ms = lambda v: None if v is None else v * 1000
    c = cpu(f"{out}/cpu-students-{a}-{r}.txt")
    return {
        "ok": codes.get("200", 0),
        "other": sum(v for k, v in codes.items() if k != "200"),
        "errors": sum(j.get("errorDistribution", {}).values()),
        "p50": ms(lp.get("p50")), "p99": ms(lp.get("p99")), "max": ms(sm.get("slowest")),
        "ttfb99": ms(fb.get("p99")),
        "wall": sm.get("total"),
        "mbs": (sm.get("sizePerSec") or 0) / 1e6 or None,
        "us": None if c[0] is None else c[0] * 1e6 / students,
        "load": c[1],
        "all": None if c[2] is None else c[2] * 1e6 / students,
    }

def cache_results(r):
    def parse(p):
        d = {}
        try: lines = open(p).read().splitlines()
        except OSError: return d
        for l in lines:
            m = re.match(r'ecluse_cache_requests_total\{(.*)\}\s+(\S+)', l)
            if not m: continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            d[labels.get("result")] = d.get(labels.get("result"), 0) + float(m.group(2))
        return d
    b, a = parse(f"{out}/metrics-students-{r}-before.txt"), parse(f"{out}/metrics-students-{r}-after.txt")
    return {k: int(a[k] - b.get(k, 0)) for k in a if a[k] - b.get(k, 0) > 0}

print()
mode = "a new connection per student (--disable-keepalive)" if ska != "1" else "connections reused"
print(f"2. {students} students, the same 2 MB file, cold cache: oha -n {students} -c {sconns}, {mode}")
print(f"   origin: nginx static file at limit_rate {orate} (one fetch = {sbytes / 1e6:.1f} MB at"
      f" {orate}B/s); median of {srounds} round(s)")
print()
print(f"{'arm':7} {'origin fetches':>15} {'200s':>12} {'errors':>7} {'p50 ms':>7} {'p99 ms':>7} "
      f"{'ttfb p99':>9} {'max ms':>7} {'wall s':>7} {'MB/s':>5} {'us/req':>7} {'oha core':>9} {'all us/req':>11}")
s_verdict, sbound = [], []
SR = range(1, srounds + 1)
for a in arms:
    rs = [oha(a, r) for r in SR]
    fetch = [read_int(f"{out}/origin-fetches-students-{a}-{r}.txt") for r in SR]
    bad = sum(x["other"] + x["errors"] for x in rs if x)
    g = lambda k: med([x[k] for x in rs if x])
    print(f"{a:7} {' '.join(f(v) for v in fetch):>15} "
          f"{f(g('ok')) + '/' + str(students):>12} {bad:>7} {f(g('p50')):>7} {f(g('p99')):>7} "
          f"{f(g('ttfb99')):>9} {f(g('max')):>7} {f(g('wall'), '{:.1f}'):>7} {f(g('mbs')):>5} "
          f"{f(g('us')):>7} {pct(g('load')):>9} {f(g('all')):>11}")
    s_verdict.append(f"{a} {'MET' if fetch and all(v == 1 for v in fetch) else 'NOT MET'}")
    if (g("load") or 0) > 0.95:
        sbound.append(a)
print("   (origin fetches: one figure per round; 200s: median per round; errors: non-200 +"
      " connection errors, all rounds;")
print("    ttfb = time to first byte; us/req = proxy CPU time per student; oha core = how busy"
      " the load generator's core was;")
print("    all us/req = busy time of all the cores used, per student)")
for r in SR:
    c = cache_results(r)
    if c:
        print(f"ecluse cache results, round {r}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
if sbound:
    print("note: oha's core was saturated (" + ", ".join(sbound) + "): the wall time is how fast"
          " one core can take in the bytes, not the proxy's limit.")
print("target (one origin fetch per round): " + ", ".join(s_verdict))
print(f"raw outputs: {os.path.relpath(out)}")
PY

log "stopping ecluse (SIGINT)"
kill -INT "$ECLUSE_PID" 2>/dev/null || true
