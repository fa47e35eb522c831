#!/usr/bin/env bash
# bench/tls.sh: HTTPS and HTTP/2, one core of ecluse (rustls) against one nginx worker
# (OpenSSL), in one run (issue #25). Pupils come over HTTPS, many over HTTP/2, from
# mobile networks that drop connections: new handshakes matter as much as requests.
#
#   origin : nginx, plain HTTP, a static file ($FILE_SIZE bytes of random data,
#            `Cache-Control: max-age=3600`), 1 worker                    (cpu $ORIGIN_CPU)
#   nginx  : `listen … ssl http2`, TLS 1.2 and 1.3, `ssl_session_cache shared:SSL:10m` and
#            session tickets on (its best for resumption); /file.bin through `proxy_cache`
#            (a hit), /.ecluse/queue/status as `return 200` with ecluse's JSON body,
#            1 worker, access_log off                                     (cpu $PROXY_CPU)
#   ecluse : `tls:` listener (rustls, HTTP/2 by ALPN), threads: 1, access log off; the
#            file through a `cache: {}` route (a hit), the status poll with a waiting
#            ticket of a full room (verify the ticket, find its place, sign)  (cpu $PROXY_CPU)
#   Both use the same certificate and key, made by openssl in the run's scratch dir
#   (CERT=ec: ECDSA P-256, the common Let's Encrypt choice; CERT=rsa: RSA 2048).
#
# Measures, each $ROUNDS rounds interleaved (nginx, ecluse, nginx, …), median:
#   handshake new     openssl s_time -new -tls1_3 (a full TLS 1.3 handshake per connection,
#                     plus one GET of the status URL), $CLIENTS processes at once
#   handshake resumed openssl s_time -reuse -tls1_3 (the session resumed with the ticket)
#   h1 file / poll    h2load --h1 -c$CONNS -n$REQUESTS: HTTP/1.1 over TLS, kept-alive
#   h2 file / poll    h2load -c$H2_CONNS -m$STREAMS -n$REQUESTS: HTTP/2, several streams
#                     per connection
# For each: what the client got per second, and the server's own CPU time per handshake
# or request (utime + stime from /proc), hence per second per core = 1 s / CPU time: on 2
# cores the load generator (which does as much crypto as the server) is often the
# limit, so the per-core figure is the one to compare.
# PROFILE=1: after the rounds, `perf record -g` on ecluse during one more run of each
# measure; the top of each profile goes to bench/out/tls-<stamp>/perf-<measure>.txt.
#
# Knobs (environment): DURATION=10 (seconds of each handshake run) REQUESTS=100000 ROUNDS=3 CONNS=50 H2_CONNS=10 STREAMS=10
#   CLIENTS=8 FILE_SIZE=1024 CERT=ec ORIGIN_CPU=1 PROXY_CPU=1 LOAD_CPU=0
#   ECLUSE_BIN=target/release/ecluse NO_BUILD=1 PROFILE=0 ONLY="hs_new hs_resumed h1_file
#   h1_poll h2_file h2_poll" (a subset).
# Needs: nginx, h2load (Debian's nghttp2-client), openssl, taskset, curl, python3,
# perf for PROFILE=1 (scripts/need.sh installs them with apt-get).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10}
REQUESTS=${REQUESTS:-100000}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
H2_CONNS=${H2_CONNS:-10}
STREAMS=${STREAMS:-10}
CLIENTS=${CLIENTS:-8}
FILE_SIZE=${FILE_SIZE:-1024}
CERT=${CERT:-ec}
ORIGIN_CPU=${ORIGIN_CPU:-1}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
PROFILE=${PROFILE:-0}
ECLUSE_BIN=${ECLUSE_BIN:-target/release/ecluse}
ONLY=${ONLY:-"hs_new hs_resumed h1_file h1_poll h2_file h2_poll"}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/tls.sh: %s\n' "$*" >&2; exit 1; }

scripts/need.sh nginx h2load openssl taskset python3 curl
[ "$PROFILE" = 0 ] || scripts/need.sh perf
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ -z "${NO_BUILD:-}" ]; then
  log "cargo build --release --bin ecluse"
  cargo build --release --bin ecluse
fi
[ -x "$ECLUSE_BIN" ] || die "no ecluse binary at $ECLUSE_BIN"

OUT="$ROOT/bench/out/tls-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/ecluse-tls.XXXXXX)
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
wait_code() { # url code [curl args…]
  local url=$1 code=$2 deadline=$((SECONDS + 20))
  shift 2
  until [ "$(curl -sk -o /dev/null -w '%{http_code}' "$@" "$url" || true)" = "$code" ]; do
    [ $SECONDS -lt $deadline ] || die "$url never answered $code"
    sleep 0.1
  done
}

# ---- The certificate both sides serve ------------------------------------------------
case $CERT in
  ec) KEYOPT=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
  rsa) KEYOPT=(-newkey rsa:2048) ;;
  *) die "CERT must be ec or rsa" ;;
esac
openssl req -x509 "${KEYOPT[@]}" -nodes -days 30 -subj "/CN=ent.bench.test" \
  -addext "subjectAltName=DNS:ent.bench.test,IP:127.0.0.1" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>"$OUT/openssl-req.err"
chmod a+r "$TMP/key.pem" "$TMP/cert.pem"

ORIGIN_PORT=$(free_port)
NGINX_PORT=$(free_port)
mkdir -p "$TMP/www"
head -c "$FILE_SIZE" /dev/urandom >"$TMP/www/file.bin"
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
EOF
}
{
  nginx_common origin
  cat <<EOF
  server {
    listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
    root $TMP/www;
    location / { default_type application/octet-stream; add_header Cache-Control "max-age=3600"; }
  }
}
EOF
} >"$TMP/origin.conf"
taskset -c "$ORIGIN_CPU" "$NGINX" -p "$TMP" -e "$TMP/origin-error.log" -c "$TMP/origin.conf" \
  >"$OUT/origin.stdout" 2>&1 &
PIDS+=($!)

# ---- ecluse ---------------------------------------------------------------------------
echo "k1:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$TMP/keys"
cat >"$TMP/ecluse.yaml" <<YAML
listen: ["127.0.0.1:0"]
tls: { listen: ["127.0.0.1:0"], cert_file: $TMP/cert.pem, key_file: $TMP/key.pem }
admin: { listen: "127.0.0.1:0" }
server: { threads: 1, watch_config: false, state_dir: $TMP/state }
access_log: { enabled: false }
waiting_rooms:
  ent: { active_users: 1, new_users_per_minute: 1, secret_file: $TMP/keys, abandon_timeout: 1h, poll_interval: 10s }
cache: { memory: 64MiB }
origins:
  ent: { servers: ["127.0.0.1:$ORIGIN_PORT"] }
routes:
  - { name: files, match: { path_prefix: /file.bin }, origin: ent, cache: {} }
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
EC=$(sed -n 's/^listening tls https:\/\/\([^/]*\)\/$/\1/p' "$OUT/ecluse.stdout" | head -1)
[ -n "$EC" ] || die "no tls listening line from ecluse"
cookie_of() { sed -n 's/^set-cookie: \(ecluse_ent=[^;]*\).*/\1/ip' | head -1; }
wait_code "https://$EC/file.bin" 200
curl -sk -o /dev/null "https://$EC/"   # the one admitted student
WAITING=$(curl -sk -D - -o /dev/null "https://$EC/" | cookie_of)
[ -n "$WAITING" ] || die "no waiting ticket"
curl -sk -H "Cookie: $WAITING" -o "$TMP/poll.json" "https://$EC/.ecluse/queue/status?room=ent"
grep -q '"state":"waiting"' "$TMP/poll.json" || die "not waiting: $(cat "$TMP/poll.json")"
curl -sk -D - -o /dev/null "https://$EC/file.bin" | grep -qi '^cache-status: ecluse; hit' ||
  die "ecluse: /file.bin is not a cache hit"

# ---- nginx ----------------------------------------------------------------------------
POLL_JSON=$(sed "s/'/\\\\'/g" "$TMP/poll.json")
{
  nginx_common nginx
  cat <<EOF
  proxy_cache_path $TMP/nginx-cache levels=1:2 keys_zone=ent:16m max_size=1g inactive=60m use_temp_path=off;
  upstream ent { server 127.0.0.1:$ORIGIN_PORT; keepalive 64; }
  ssl_certificate $TMP/cert.pem;
  ssl_certificate_key $TMP/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2 backlog=4096;
    http2_max_concurrent_streams 128;
    location = /.ecluse/queue/status {
      default_type application/json; add_header Cache-Control no-store; return 200 '$POLL_JSON';
    }
    location / {
      proxy_pass http://ent;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache ent;
      proxy_cache_valid 200 10m;
      add_header X-Cache-Status \$upstream_cache_status;
    }
  }
}
EOF
} >"$TMP/nginx.conf"
taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" \
  >"$OUT/nginx.stdout" 2>&1 &
NGINX_PID=$!
PIDS+=($NGINX_PID)
NG=127.0.0.1:$NGINX_PORT
wait_code "https://$NG/file.bin" 200
curl -sk -D - -o /dev/null "https://$NG/file.bin" | grep -qi '^x-cache-status: HIT' ||
  die "nginx: /file.bin is not a cache hit"
cp "$TMP"/*.conf "$TMP/ecluse.yaml" "$TMP/cert.pem" "$OUT/"

declare -A HOST=([nginx]=$NG [ecluse]=$EC)
declare -A ARM_PIDS=([nginx]="$NGINX_PID $(cat /proc/"$NGINX_PID"/task/*/children)" [ecluse]=$ECLUSE_PID)
ARMS=(nginx ecluse)
# Both arms agree on what they serve: TLS 1.3, ALPN h2.
for a in "${ARMS[@]}"; do
  echo | openssl s_client -connect "${HOST[$a]}" -alpn h2,http/1.1 -tls1_3 2>/dev/null \
    >"$OUT/s_client-$a.txt" || true
  grep -q 'ALPN protocol: h2' "$OUT/s_client-$a.txt" || die "$a does not negotiate h2 over TLS 1.3"
done

proc_ticks() {
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
  done
  echo "$t"
}

# One measure on one arm, its output in $OUT/$m-$a-$r.txt: the client's own output.
run_measure() { # measure arm round
  local m=$1 a=$2 r=$3 h=${HOST[$2]} p pids=()
  local poll="https://$h/.ecluse/queue/status?room=ent" file="https://$h/file.bin"
  case $m in
    hs_new | hs_resumed)
      local mode=-new
      [ "$m" = hs_resumed ] && mode=-reuse
      for p in $(seq "$CLIENTS"); do
        taskset -c "$LOAD_CPU" openssl s_time -connect "$h" $mode -tls1_3 -time "$DURATION" \
          -www /file.bin >"$OUT/$m-$a-$r.$p.txt" 2>&1 &
        pids+=($!)
      done
      for p in "${pids[@]}"; do wait "$p" || true; done
      cat "$OUT/$m-$a-$r".*.txt >"$OUT/$m-$a-$r.txt" ;;
    # -n, not -D: h2load 1.52's timing mode stops counting after a while (2,000 requests
    # on a 2-second run at ~7,000/s).
    h1_file) taskset -c "$LOAD_CPU" h2load --h1 -c"$CONNS" -n"$REQUESTS" "$file" >"$OUT/$m-$a-$r.txt" 2>&1 || true ;;
    h1_poll) taskset -c "$LOAD_CPU" h2load --h1 -c"$CONNS" -n"$REQUESTS" -H "Cookie: $WAITING" "$poll" >"$OUT/$m-$a-$r.txt" 2>&1 || true ;;
    h2_file) taskset -c "$LOAD_CPU" h2load -c"$H2_CONNS" -m"$STREAMS" -n"$REQUESTS" "$file" >"$OUT/$m-$a-$r.txt" 2>&1 || true ;;
    h2_poll) taskset -c "$LOAD_CPU" h2load -c"$H2_CONNS" -m"$STREAMS" -n"$REQUESTS" -H "Cookie: $WAITING" "$poll" >"$OUT/$m-$a-$r.txt" 2>&1 || true ;;
    *) die "unknown measure $m" ;;
  esac
}

for r in $(seq 0 "$ROUNDS"); do # round 0: warm-up, not counted
  for m in $ONLY; do
    for a in "${ARMS[@]}"; do
      log "round $r/$ROUNDS: $m on $a"
      t0=$(proc_ticks ${ARM_PIDS[$a]})
      run_measure "$m" "$a" "$r"
      echo "$(($(proc_ticks ${ARM_PIDS[$a]}) - t0))" >"$OUT/ticks-$m-$a-$r.txt"
    done
  done
done

if [ "$PROFILE" != 0 ]; then
  for m in $ONLY; do
    log "perf record -g on ecluse during $m"
    perf record -g -o "$OUT/perf-$m.data" -p "$ECLUSE_PID" -- sleep "$DURATION" \
      >"$OUT/perf-$m.log" 2>&1 &
    pp=$!
    run_measure "$m" ecluse profile
    wait "$pp" || true
    perf report -i "$OUT/perf-$m.data" --no-children --percent-limit 1.5 --stdio \
      2>/dev/null | grep -v '^$' | head -120 >"$OUT/perf-$m.txt" || true
    perf report -i "$OUT/perf-$m.data" --no-children --sort dso --stdio 2>/dev/null |
      grep -v '^#' | grep -v '^$' | head -15 >"$OUT/perf-$m-dso.txt" || true
  done
fi
cp "$TMP"/*-error.log "$OUT/" 2>/dev/null || true

python3 - "$OUT" "$ROUNDS" "$(getconf CLK_TCK)" "$ONLY" "$CONNS" "$H2_CONNS" "$STREAMS" \
  "$CLIENTS" "$FILE_SIZE" "$CERT" "$DURATION" <<'PY' | tee "$OUT/table.txt"
import os, re, statistics, sys
out, rounds, hz, only, conns, h2c, streams, clients, size, cert, dur = sys.argv[1:]
rounds, hz = int(rounds), float(hz)
R = range(1, rounds + 1)
arms = ["nginx", "ecluse"]
med = lambda xs: statistics.median([x for x in xs if x is not None]) if any(x is not None for x in xs) else None
f = lambda v, fmt="{:.0f}": "-" if v is None else fmt.format(v)
ratio = lambda a, b: None if a is None or not b else a / b
label = {
    "hs_new": f"new TLS 1.3 handshakes (s_time -new, {clients} clients)",
    "hs_resumed": f"resumed TLS 1.3 handshakes (s_time -reuse, {clients} clients)",
    "h1_file": f"HTTP/1.1 over TLS, cached file {size} B (-c{conns})",
    "h1_poll": f"HTTP/1.1 over TLS, status poll (-c{conns})",
    "h2_file": f"HTTP/2, cached file {size} B (-c{h2c} -m{streams})",
    "h2_poll": f"HTTP/2, status poll (-c{h2c} -m{streams})",
}

def parse(m, a, r):
    """(operations per second seen by the client, operations done, failures)"""
    try: t = open(f"{out}/{m}-{a}-{r}.txt").read()
    except OSError: return None, None, None
    if m.startswith("hs_"):
        # s_time prints, per client process, "N connections in T real seconds"; its
        # progress line has an "r" per resumed session and a "*" per full handshake.
        real = re.findall(r"(\d+) connections in (\d+) real seconds", t)
        if not real: return None, None, None
        n = sum(int(x[0]) for x in real)
        secs = max(int(x[1]) for x in real) or 1
        marks = "".join(re.findall(r"^[r*]+$", t, re.M))
        resumed[(m, a, r)] = (marks.count("r"), len(marks))
        return n / secs, n, None
    rq = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", t)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", t)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", t)
    bad = None
    if done and codes:
        bad = int(done.group(3)) + int(done.group(4)) + int(codes.group(3)) + int(codes.group(4))
    return (float(rq.group(1)) if rq else None), (int(done.group(1)) if done else None), bad

resumed = {}

def ticks(m, a, r):
    try: return int(open(f"{out}/ticks-{m}-{a}-{r}.txt").read())
    except (OSError, ValueError): return None

print()
print(f"HTTPS and HTTP/2, one core each (same {cert} certificate), median of {rounds} interleaved rounds of {dur} s")
print(f"{'measure':52} {'nginx/s':>8} {'ecluse/s':>9} {'e/n':>6} {'nginx us':>9} {'ecluse us':>10} {'per core n':>11} {'per core e':>11} {'e/n':>6}")
verdict = []
for m in only.split():
    row = {}
    for a in arms:
        ps = [parse(m, a, r) for r in R]
        us = [ticks(m, a, r) / hz * 1e6 / p[1] if ticks(m, a, r) is not None and p[1] else None
              for p, r in zip(ps, R)]
        row[a] = (med([p[0] for p in ps]), med(us), [p[0] for p in ps], sum(p[2] or 0 for p in ps))
    n, e = row["nginx"], row["ecluse"]
    core = {a: None if not row[a][1] else 1e6 / row[a][1] for a in arms}
    rc = ratio(core["ecluse"], core["nginx"])
    print(f"{label[m]:52} {f(n[0]):>8} {f(e[0]):>9} {f(ratio(e[0], n[0]), '{:.2f}x'):>6} "
          f"{f(n[1], '{:.1f}'):>9} {f(e[1], '{:.1f}'):>10} {f(core['nginx']):>11} {f(core['ecluse']):>11} "
          f"{f(rc, '{:.2f}x'):>6}")
    verdict.append(f"{m} {f(rc, '{:.2f}x')}")
    for a in arms:
        if row[a][3]: print(f"warning: {a} {m}: {row[a][3]} failed requests or non-2xx answers")
print("(…/s: what the client got; us: the server's CPU time per handshake or request;"
      " per core = 1 s / that, the figure to compare when the client's core is the limit)")
print("per-round client figures: " + "; ".join(
    f"{m} " + " / ".join(f"{a} " + " ".join(f(p) for p in [parse(m, a, r)[0] for r in R]) for a in arms)
    for m in only.split()))
for a in arms:
    rs = [v for k, v in resumed.items() if k[0] == "hs_resumed" and k[1] == a]
    if rs:
        print(f"sessions resumed in the -reuse runs, {a}: {sum(x[0] for x in rs)} of {sum(x[1] for x in rs)}"
              " (the rest were full handshakes: the server did not resume)")
print("target (>= 1.0x nginx per core on each): " + ", ".join(verdict))
print(f"raw outputs: {os.path.relpath(out)}")
PY
