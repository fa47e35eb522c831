#!/usr/bin/env bash
# bench/queue_status.sh: how many queue-status polls per second ecluse answers, next to
# nginx answering `return 200` on the same core, in one run (issue #4 target: >= 0.8x).
#
# While a waiting room is full, every waiting student's page polls
# /.ecluse/queue/status: verify the ticket's HMAC, look its place up, sign a refreshed
# cookie, answer JSON. This measures that path with a real waiting ticket.
#
#   nginx  : `return 200` with the same JSON body, 1 worker, access_log off  (cpu $SERVER_CPU)
#   ecluse : a room with active_users: 1 (full), threads: 1, access log off  (cpu $SERVER_CPU)
#   wrk    : -t1 -c$CONNS -d$DURATION                                         (cpu $LOAD_CPU)
#
# A warm-up round, then $ROUNDS rounds interleaved (nginx, ecluse, nginx, …); the table
# shows the median. Knobs: DURATION=10s CONNS=50 ROUNDS=3 SERVER_CPU=1 LOAD_CPU=0
# ECLUSE_BIN=target/release/ecluse NO_BUILD=1 (use ECLUSE_BIN as is).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
ECLUSE_BIN=${ECLUSE_BIN:-target/release/ecluse}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/queue_status.sh: %s\n' "$*" >&2; exit 1; }

scripts/need.sh nginx wrk taskset python3 curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ -z "${NO_BUILD:-}" ]; then
  log "cargo build --release --bin ecluse"
  cargo build --release --bin ecluse
fi
[ -x "$ECLUSE_BIN" ] || die "no ecluse binary at $ECLUSE_BIN"

OUT="$ROOT/bench/out/queue-status-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/ecluse-qbench.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

NGINX_PORT=$(free_port)
JSON='{"room":"ent","state":"waiting","position":42,"position_text":"42","eta_seconds":95,"eta_text":"2 min","updated_at":"08:02:13","poll_after_ms":9473,"paused":false,"opens_at":null}'
cat >"$TMP/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $TMP/b; proxy_temp_path $TMP/p; fastcgi_temp_path $TMP/f;
  uwsgi_temp_path $TMP/u; scgi_temp_path $TMP/s;
  keepalive_requests 100000000;
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / { default_type application/json; add_header Cache-Control no-store; return 200 '$JSON'; }
  }
}
NGINX
echo "k1:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$TMP/keys"
cat >"$TMP/ecluse.yaml" <<YAML
listen: ["127.0.0.1:0"]
admin: { listen: "127.0.0.1:0" }
server: { threads: 1, watch_config: false, state_dir: $TMP/state }
access_log: { enabled: false }
waiting_rooms:
  ent: { active_users: 1, new_users_per_minute: 1, secret_file: $TMP/keys, abandon_timeout: 10m, poll_interval: 10s }
origins:
  ent: { servers: ["127.0.0.1:9"], health_check: { disabled: true } }
routes:
  - { name: ent, origin: ent, waiting_room: ent }
YAML
cp "$TMP/nginx.conf" "$TMP/ecluse.yaml" "$OUT/"
taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" >"$OUT/nginx.out" 2>&1 &
PIDS+=($!)
RUST_LOG=warn taskset -c "$SERVER_CPU" "$ECLUSE_BIN" run --config "$TMP/ecluse.yaml" \
  >"$OUT/ecluse.stdout" 2>"$OUT/ecluse.stderr" &
PIDS+=($!)
deadline=$((SECONDS + 20))
until grep -q '^listening admin ' "$OUT/ecluse.stdout" 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || die "ecluse did not start: $(cat "$OUT/ecluse.stderr")"
  sleep 0.1
done
PROXY=$(sed -n 's/^listening proxy http:\/\/\([^/]*\)\/$/\1/p' "$OUT/ecluse.stdout" | head -1)
until curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && curl -s -o /dev/null "http://$PROXY/.ecluse/queue/status?room=ent"; do
  [ $SECONDS -lt $deadline ] || die "nginx or ecluse did not start"
  sleep 0.1
done
# Fill the room (one admitted session), then take a waiting ticket.
curl -s -o /dev/null "http://$PROXY/" || true
COOKIE=$(curl -s -D - -o /dev/null "http://$PROXY/" | sed -n 's/^set-cookie: \(ecluse_ent=[^;]*\).*/\1/ip' | head -1)
[ -n "$COOKIE" ] || die "no waiting ticket"
STATE=$(curl -s -H "Cookie: $COOKIE" "http://$PROXY/.ecluse/queue/status?room=ent")
echo "$STATE" | grep -q '"state":"waiting"' || die "not waiting: $STATE"
log "ticket: $STATE"

run_wrk() { # name round url [cookie]
  local name=$1 round=$2 url=$3 hdr=()
  if [ -n "${4:-}" ]; then hdr=(-H "Cookie: $4"); fi
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "${hdr[@]}" "$url" >"$OUT/$name.$round.wrk" 2>&1
  sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$OUT/$name.$round.wrk"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
NG=(); EC=()
for r in $(seq 0 "$ROUNDS"); do
  n=$(run_wrk nginx "$r" "http://127.0.0.1:$NGINX_PORT/status")
  e=$(run_wrk ecluse "$r" "http://$PROXY/.ecluse/queue/status?room=ent" "$COOKIE")
  [ "$r" = 0 ] && continue # warm-up
  log "round $r: nginx $n req/s, ecluse $e req/s"
  NG+=("$n"); EC+=("$e")
done
NGM=$(printf '%s\n' "${NG[@]}" | median)
ECM=$(printf '%s\n' "${EC[@]}" | median)
RATIO=$(python3 -c "print(f'{$ECM/$NGM:.2f}')")
printf '\nqueue-status polls per second, one core each, wrk -t1 -c%s -d%s, median of %s rounds\n' "$CONNS" "$DURATION" "$ROUNDS"
printf '%-45s %10s\n' "nginx return 200 (same JSON body)" "$NGM"
printf '%-45s %10s\n' "ecluse /.ecluse/queue/status (verify + sign)" "$ECM"
printf '%-45s %10s   (target >= 0.80)\n' "ratio ecluse / nginx" "$RATIO"
printf 'raw output: %s\n' "$OUT"
