#!/usr/bin/env bash
# bench/fleet.sh: where a fleet stops (issue #24). $NODES ecluse nodes (release build,
# `threads: 1` each) share one waiting room through one real `redis-server`; a load
# generator (h2load, open loop: each connection sends at a fixed rate, `--rps`) brings
# newcomers at a rising rate, with the queue's polls and the admitted pupils' traffic in
# the surge replay's proportions. Prints, for one room on one Redis:
#
#   1. arrivals per second before the arrivals' latency p99 passes $P99_MS ms (default
#      100), with polls and admitted traffic alongside ("mix") and alone ("arrivals");
#   2. queue-status polls per second per node (wrk, closed loop, every node at once);
#   3. Redis commands and Redis CPU per 1,000 arrivals (`INFO commandstats`, `INFO cpu`),
#      microseconds per EVALSHA, and the arrivals per second one Redis core would take
#      at that cost (the ceiling derived from Redis' own cost, not reached here).
#
# The room is kept full (active_users: 1, a queue standing, new_users_per_minute: 1) so
# every newcomer takes a ticket: one ARRIVE script on Redis each, the surge's hot path.
# All the load comes from 127.0.0.1: the room's per-address cap on new tickets
# (`ticket_rate`, 60/min by default) is lifted, as many pupils come from many addresses.
# Traffic:
#   arrivals : GET / without a cookie, spread evenly over the nodes (a browser arriving)
#   polls    : GET /.ecluse/queue/status?room=ent with a waiting ticket, $POLLS per arrival
#   admitted : GET /pages/N with an admitted session, proxied to an nginx origin
#              (`return 200`, 1 KB), $ADMITTED per arrival
# Proportions (defaults, from the surge replay, bench/surge.sh): a pupil inside makes
# about 9 requests (the ENT, login GET+POST and its redirect, 2 files, 3 pages, logout);
# a queued pupil polls every poll interval (5 s in bench/surge-ecluse.yaml) for the wait,
# 20 s at p50 in the 2,000-pupil replay: 4 polls.
#
# Each step lasts $STEP seconds at a rate $START, ×$FACTOR, … until the arrivals' p99
# passes $P99_MS or errors appear, at most $MAX_STEPS steps. The latency is h2load's own
# per-request log (microseconds from send to the end of the response). Nothing is pinned
# (3 nodes, Redis, nginx and the load generator share the machine's cores): on a 2-core
# machine the figure is the machine's, not Redis' (see the derived ceiling).
#
# Knobs: NODES=3 STEP=8 START=250 FACTOR=2 MAX_STEPS=8 P99_MS=100 POLLS=4 ADMITTED=9
#   CONNS=32 (connections per node and kind) POLL_SECONDS=8 (the wrk poll run)
#   PROFILES="mix arrivals" ECLUSE_BIN=target/release/ecluse
#   NO_BUILD=1 (use ECLUSE_BIN as is; otherwise `cargo build --release --bin ecluse`).
# Outputs: bench/out/fleet-<timestamp>/ (configs, logs, per-step h2load logs, summary.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
NODES=${NODES:-3}
STEP=${STEP:-8}
START=${START:-250}
FACTOR=${FACTOR:-2}
MAX_STEPS=${MAX_STEPS:-8}
P99_MS=${P99_MS:-100}
POLLS=${POLLS:-4}
ADMITTED=${ADMITTED:-9}
CONNS=${CONNS:-32}
POLL_SECONDS=${POLL_SECONDS:-8}
PROFILES=${PROFILES:-mix arrivals}
ECLUSE_BIN=${ECLUSE_BIN:-target/release/ecluse}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/fleet.sh: %s\n' "$*" >&2; exit 1; }

[ "$NODES" -ge 1 ] || die "NODES must be at least 1"
scripts/need.sh redis-server h2load wrk nginx python3 curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ -z "${NO_BUILD:-}" ]; then
  log "cargo build --release --bin ecluse"
  cargo build --release --bin ecluse
fi
[ -x "$ECLUSE_BIN" ] || die "no ecluse binary at $ECLUSE_BIN"

OUT="$ROOT/bench/out/fleet-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/ecluse-fleet.XXXXXX)
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
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# --- Redis ---------------------------------------------------------------------------
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$TMP" >"$OUT/redis.log" 2>&1 &
PIDS+=($!)
deadline=$((SECONDS + 20))
until rcli ping >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || die "redis-server did not start"
  sleep 0.1
done

# --- the origin: nginx `return 200`, 1 KB ---------------------------------------------
ORIGIN_PORT=$(free_port)
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
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
    listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
    location / { default_type text/html; add_header Cache-Control private; return 200 '$BODY'; }
  }
}
NGINX
"$NGINX" -p "$TMP" -c "$TMP/nginx.conf" >"$OUT/nginx.out" 2>&1 &
PIDS+=($!)

# --- the nodes -----------------------------------------------------------------------
echo "k1:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$TMP/keys"
ADDRS=()
for n in $(seq 1 "$NODES"); do
  mkdir -p "$TMP/n$n"
  cat >"$TMP/n$n/ecluse.yaml" <<YAML
listen: ["127.0.0.1:0"]
admin: { listen: "127.0.0.1:0" }
server: { threads: 1, watch_config: false, state_dir: $TMP/n$n/state }
access_log: { enabled: false }
cluster: { redis: "redis://127.0.0.1:$REDIS_PORT/", node_id: n$n, sync_interval: 250ms, timeout: 1s }
waiting_rooms:
  ent: { active_users: 1, new_users_per_minute: 1, secret_file: $TMP/keys, abandon_timeout: 30m, session_idle_timeout: 30m, poll_interval: 5s, ticket_rate: "1000000/s" }
origins:
  ent: { servers: ["127.0.0.1:$ORIGIN_PORT"], health_check: { disabled: true } }
routes:
  - { name: ent, origin: ent, waiting_room: ent }
YAML
  cp "$TMP/n$n/ecluse.yaml" "$OUT/n$n.yaml"
  RUST_LOG=warn "$ECLUSE_BIN" run --config "$TMP/n$n/ecluse.yaml" \
    >"$OUT/n$n.stdout" 2>"$OUT/n$n.stderr" &
  PIDS+=($!)
done
for n in $(seq 1 "$NODES"); do
  deadline=$((SECONDS + 30))
  until grep -q '^listening admin ' "$OUT/n$n.stdout" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "node n$n did not start: $(cat "$OUT/n$n.stderr")"
    sleep 0.1
  done
  ADDRS+=("$(sed -n 's/^listening proxy http:\/\/\([^/]*\)\/$/\1/p' "$OUT/n$n.stdout" | head -1)")
  ADMIN=$(sed -n 's/^listening admin http:\/\/\([^/]*\)\/$/\1/p' "$OUT/n$n.stdout" | head -1)
  until curl -sf "http://$ADMIN/admin/state" | grep -q "\"live_nodes\":$NODES"; do
    [ $SECONDS -lt $deadline ] || die "node n$n does not see $NODES nodes"
    sleep 0.2
  done
done
log "nodes: ${ADDRS[*]}; redis 127.0.0.1:$REDIS_PORT; origin 127.0.0.1:$ORIGIN_PORT"

# One admitted session (the room's only place), then a waiting ticket.
cookie_of() { sed -n 's/^set-cookie: \(ecluse_ent=[^;]*\).*/\1/ip' | head -1; }
INSIDE=$(curl -s -D - -o /dev/null "http://${ADDRS[0]}/pages/0" | cookie_of)
WAITING=$(curl -s -D - -o /dev/null "http://${ADDRS[0]}/" | cookie_of)
[ -n "$INSIDE" ] && [ -n "$WAITING" ] || die "no admitted session or no waiting ticket"
curl -s -H "Cookie: $INSIDE" "http://${ADDRS[1 % NODES]}/pages/1" | grep -q xxxx ||
  die "the admitted session does not reach the origin"
curl -s -H "Cookie: $WAITING" "http://${ADDRS[1 % NODES]}/.ecluse/queue/status?room=ent" |
  grep -q '"state":"waiting"' || die "the waiting ticket is not waiting"

# Redis counters: total calls, EVALSHA calls, EVALSHA usec, CPU seconds (user+sys).
redis_counters() {
  { rcli info commandstats; rcli info cpu; } | tr -d '\r' | python3 -c '
import sys, re
calls = ev = evus = cpu = 0.0
for l in sys.stdin:
    m = re.match(r"cmdstat_(\w+):calls=(\d+),usec=(\d+)", l)
    if m:
        calls += int(m.group(2))
        if m.group(1) in ("evalsha", "eval"):
            ev += int(m.group(2)); evus += int(m.group(3))
    m = re.match(r"used_cpu_(sys|user):([\d.]+)", l)
    if m:
        cpu += float(m.group(2))
print(int(calls), int(ev), int(evus), cpu)'
}

# h2load at RATE requests/s in total over the nodes, for STEP seconds; per-request log.
h2() { # name rate path [cookie]
  local name=$1 rate=$2 path=$3 cookie=${4:-} n per c hdr=()
  [ -n "$cookie" ] && hdr=(-H "Cookie: $cookie")
  per=$(( (rate + NODES - 1) / NODES ))
  [ "$per" -ge 1 ] || return 0
  # Whole requests per second per connection, as many connections as that takes
  # (about $CONNS): c × rps is within rps of the rate asked.
  local rps=$(( per / CONNS ))
  [ "$rps" -ge 1 ] || rps=1
  c=$(( per / rps ))
  for n in $(seq 1 "$NODES"); do
    h2load --h1 -c "$c" --rps "$rps" -D "$STEP" \
      -H 'Accept: text/html' "${hdr[@]}" --log-file "$TMP/$name.n$n.log" \
      "http://${ADDRS[n - 1]}$path" >"$TMP/$name.n$n.out" 2>&1 &
    H2PIDS+=($!)
  done
}
# p99 (ms), requests, non-2xx of one kind's logs.
stats() { # name
  cat "$TMP/$1".n*.log 2>/dev/null | python3 -c '
import sys
lat = []; bad = 0
for l in sys.stdin:
    f = l.split()
    if len(f) < 3: continue
    lat.append(int(f[2])); bad += not f[1].startswith("2")
lat.sort()
p = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000 if lat else float("nan")
print(f"{p:.1f} {len(lat)} {bad}")'
}

SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
say "bench/fleet.sh $(date -u '+%Y-%m-%d %H:%M UTC'), $NODES nodes, $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
say "mix per arrival: $POLLS polls, $ADMITTED admitted requests; steps of ${STEP}s from $START arrivals/s ×$FACTOR"

# What the nodes cost Redis with no traffic (their syncs): subtracted below, so the
# figures per arrival are the arrivals' own.
idle0=$(redis_counters)
sleep "$STEP"
idle1=$(redis_counters)
echo "$idle0 $idle1 $STEP" >"$OUT/idle.redis"
say "Redis with the nodes idle (syncs only): $(python3 -c "
b = '$idle0'.split(); a = '$idle1'.split()
d = [(float(a[i]) - float(b[i])) / $STEP for i in range(4)]
print(f'{d[0]:.0f} commands/s, {d[1]:.0f} EVALSHA/s, {d[3] * 1000:.1f} ms CPU/s')")"

declare -A BEST
for profile in $PROFILES; do
  say ""
  say "profile $profile: arrivals/s asked | made | p99 ms | errors | polls/s | admitted/s | Redis cmds/1k arr | EVALSHA us/call | Redis CPU ms/1k arr | load"
  rate=$START
  BEST[$profile]=0
  for step in $(seq 1 "$MAX_STEPS"); do
    rm -f "$TMP"/*.log "$TMP"/*.out
    before=$(redis_counters)
    H2PIDS=()
    h2 arr "$rate" /
    if [ "$profile" = mix ]; then
      h2 poll $((rate * POLLS)) "/.ecluse/queue/status?room=ent" "$WAITING"
      h2 adm $((rate * ADMITTED)) /pages/7 "$INSIDE"
    fi
    wait "${H2PIDS[@]}" || true
    after=$(redis_counters)
    read -r p99 narr bad <<<"$(stats arr)"
    read -r _ npoll pbad <<<"$(stats poll)"
    read -r _ nadm abad <<<"$(stats adm)"
    line=$(python3 -c "
b = '$before'.split(); a = '$after'.split()
calls, ev, evus, cpu = (float(a[i]) - float(b[i]) for i in range(4))
n = max(1, $narr)
print(f'{$rate} | {$narr / $STEP:.0f} | $p99 | $bad/$pbad/$abad | {$npoll / $STEP:.0f} | {$nadm / $STEP:.0f} | {calls * 1000 / n:.0f} | {evus / max(ev, 1):.1f} | {cpu * 1e6 / n:.1f}')")
    say "  $line | $(cut -d' ' -f1 /proc/loadavg)"
    echo "$before $after $narr" >"$OUT/$profile.$rate.redis"
    cat "$TMP"/arr.n1.out >"$OUT/$profile.$rate.h2load.txt" 2>/dev/null || true
    ok=$(python3 -c "print(1 if ($p99 == $p99 and $p99 <= $P99_MS and '$bad' == '0' and $narr >= 0.9 * $rate * $STEP) else 0)")
    [ "$ok" = 1 ] || break
    BEST[$profile]=$(python3 -c "print(round($narr / $STEP))")
    rate=$(python3 -c "print(int($rate * $FACTOR))")
  done
done

# Polls per node, closed loop: wrk on every node at once.
say ""
WRKPIDS=()
for n in $(seq 1 "$NODES"); do
  wrk -t1 -c32 -d"${POLL_SECONDS}s" -H "Cookie: $WAITING" \
    "http://${ADDRS[n - 1]}/.ecluse/queue/status?room=ent" >"$OUT/polls.n$n.wrk" 2>&1 &
  WRKPIDS+=($!)
done
wait "${WRKPIDS[@]}" || true
POLLS_PER_NODE=$(cat "$OUT"/polls.n*.wrk | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' |
  awk -v n="$NODES" '{s += $1} END {printf "%.0f", s / n}')

say "summary"
for profile in $PROFILES; do
  say "  arrivals/s into one room, p99 <= ${P99_MS} ms ($profile): ${BEST[$profile]}"
done
say "  queue-status polls/s per node ($NODES nodes at once, wrk -t1 -c32 each): $POLLS_PER_NODE"
# Redis' own cost of one arrival: the arrivals-only step with the most arrivals (the
# fewest syncs per arrival), else the mix's.
STEP=$STEP python3 - "$OUT" <<'PY' | tee -a "$SUMMARY"
import glob, os, sys
out = sys.argv[1]
files = sorted(glob.glob(os.path.join(out, "arrivals.*.redis"))) or sorted(glob.glob(os.path.join(out, "mix.*.redis")))
best = None
for f in files:
    v = [float(x) for x in open(f).read().split()]
    calls, ev, evus, cpu = (v[4 + i] - v[i] for i in range(4))
    n = v[8]
    if n > 0 and (best is None or n > best[4]):
        best = (calls, ev, evus, cpu, n, os.path.basename(f))
i = [float(x) for x in open(os.path.join(out, "idle.redis")).read().split()]
step = float(os.environ.get("STEP", "8"))
idle = [(i[4 + k] - i[k]) / i[8] * step for k in range(4)]
if best:
    calls, ev, evus, cpu, n, name = best
    print(f"  Redis per 1,000 arrivals ({name}), gross: {calls * 1000 / n:.0f} commands (scripts'"
          f" inner calls included), {ev * 1000 / n:.0f} EVALSHA, {cpu * 1e6 / n:.1f} ms of Redis CPU")
    calls, ev, evus, cpu = (calls - idle[0], ev - idle[1], evus - idle[2], cpu - idle[3])
    print(f"  Redis per 1,000 arrivals, net of the idle syncs: {calls * 1000 / n:.0f} commands,"
          f" {ev * 1000 / n:.0f} EVALSHA, {evus / n:.1f} us of script time per arrival,"
          f" {cpu * 1e6 / n:.1f} ms of Redis CPU")
    if cpu > 0 and evus > 0:
        print(f"  one Redis core at that cost: ~{n / cpu:.0f} arrivals/s (Redis CPU per arrival),"
              f" ~{1e6 * n / evus:.0f} arrivals/s (script time alone)")
PY
say "raw output: $OUT"
