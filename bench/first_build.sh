#!/usr/bin/env bash
# bench/first_build.sh: a newcomer's first build, timed per profile from a clean clone
# (issue #25): `make demo` builds the `demo` profile (thin LTO, 16 codegen units),
# packages and benchmarks the `release` one (fat LTO, one codegen unit).
#
# For each profile in $PROFILES, in order: a fresh `git clone` of this checkout's HEAD
# (or $SRC) into a scratch dir, then `cargo build --profile P --bin ecluse` there, timed
# with /usr/bin/time: wall clock, and CPU time (user + system of cargo and every compiler
# it ran). The crates are already in cargo's download cache (~/.cargo/registry), so the
# downloads a real first build makes are not counted. Prints a table with the ratio of
# each profile to the first, the load average before and after each build (the machine
# may be shared: compare ratios measured in one run, and the CPU times, which move less
# with load than the wall clock).
#
# Knobs: PROFILES="release demo dev" SRC=<repo to clone, default this checkout>
#   PARALLEL=1 (build all the profiles at once rather than one after the other)
#   KEEP=1 (keep the clones; each takes 1-4 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PROFILES=${PROFILES:-"release demo dev"}
SRC=${SRC:-$ROOT}
log() { printf '== %s\n' "$*" >&2; }

OUT="$ROOT/bench/out/first-build-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/ecluse-first-build.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$TMP"' EXIT
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR

build() { # profile: clean clone, timed build
  local p=$1
  git clone -q "$SRC" "$TMP/$p"
  cut -d' ' -f1-3 /proc/loadavg >"$OUT/$p.load-before"
  ( cd "$TMP/$p" && /usr/bin/time -f '%e %U %S' -o "$OUT/$p.time" \
      cargo build --profile "$p" --bin ecluse >"$OUT/$p.log" 2>&1 ) ||
    { tail -20 "$OUT/$p.log" >&2; return 1; }
  cut -d' ' -f1-3 /proc/loadavg >"$OUT/$p.load-after"
  log "$p: $(cat "$OUT/$p.time") (wall, user, system seconds)"
  [ -n "${KEEP:-}" ] || rm -rf "$TMP/$p"
}
if [ -n "${PARALLEL:-}" ]; then
  # All profiles at once: on a machine shared with other work, each build sees the same
  # load for as long as they overlap (the ratio is then the one to read; the first to
  # finish leaves the others more CPU).
  log "clean clones of $SRC, then cargo build --profile P --bin ecluse for $PROFILES, all at once"
  bpids=()
  for p in $PROFILES; do build "$p" & bpids+=($!); done
  for b in "${bpids[@]}"; do wait "$b"; done
else
  for p in $PROFILES; do
    log "clean clone of $SRC, then cargo build --profile $p --bin ecluse"
    build "$p"
  done
fi

python3 - "$OUT" "$PROFILES" "$(git -C "$SRC" rev-parse --short HEAD)" "$(nproc)" <<'PY' | tee "$OUT/table.txt"
import sys
out, profiles, rev, ncpu = sys.argv[1:]
profiles = profiles.split()
rows = {}
for p in profiles:
    wall, user, sys_ = map(float, open(f"{out}/{p}.time").read().split())
    rows[p] = (wall, user + sys_, open(f"{out}/{p}.load-before").read().strip(),
               open(f"{out}/{p}.load-after").read().strip())
base = profiles[0]
print()
print(f"first build from a clean clone ({rev}), cargo build --profile P --bin ecluse, {ncpu} cores")
print(f"{'profile':9} {'wall':>8} {'CPU':>8} {'wall/' + base:>13} {'CPU/' + base:>12}   load average before / after")
for p in profiles:
    w, c, lb, la = rows[p]
    print(f"{p:9} {w / 60:7.1f}m {c / 60:7.1f}m {w / rows[base][0]:12.2f}x {c / rows[base][1]:11.2f}x   {lb} / {la}")
print(f"raw outputs: {out}")
PY
