#!/usr/bin/env bash
# Fuzz ecluse's hostile-input parsers with cargo-fuzz (libFuzzer + AddressSanitizer, debug
# assertions and overflow checks on):
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# runs every target in fuzz/fuzz_targets (or only the TARGETs named) for SECONDS each
# (default 60), one after the other on one core, and prints per target the executions,
# exec/s, coverage (edges `cov`, features `ft`), corpus size and crashes. Installs
# cargo-fuzz and the nightly toolchain when they are missing.
#
# Seeds are in fuzz/corpus/<target>/seed-*; what the fuzzer adds next to them is kept
# between runs (and ignored by git). A crash stops its target and leaves the input in
# fuzz/artifacts/<target>/; reproduce it with
#   cargo +nightly fuzz run -O -a <target> fuzz/artifacts/<target>/crash-...
# and shrink it with `cargo +nightly fuzz tmin -O -a <target> <file>`.
# Exit status: 0 when no target crashed, 1 otherwise.
set -euo pipefail

cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
if ! [[ "$secs" =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
  exit 2
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "== installing the nightly toolchain (libFuzzer needs -Zsanitizer)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# -O: optimised; -a: debug assertions and overflow checks (an overflow is a crash).
flags=(-O -a)
echo "== building ${#targets[@]} fuzz targets"
cargo +nightly fuzz build "${flags[@]}"

logdir="fuzz/target/logs"
mkdir -p "$logdir"
summary=()
failed=0
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  extra=()
  if [ -f "fuzz/dict/$t.dict" ]; then
    extra+=("-dict=fuzz/dict/$t.dict")
  fi
  log="$logdir/$t.log"
  echo "== $t: ${secs}s (log: $log)"
  # One process on one core; -timeout turns a hang into a reported failure.
  set +e
  cargo +nightly fuzz run "${flags[@]}" "$t" "$corpus" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${extra[@]}" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$last")
  if [ "$rc" -eq 0 ]; then
    crash="0"
  else
    failed=1
    artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -1)
    crash="1 (${artifact:-see $log})"
    grep -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)|SUMMARY" "$log" | head -5 || true
  fi
  line=$(printf '%-16s runs=%-10s exec/s=%-7s cov=%-6s ft=%-7s corpus=%-12s rss=%sMB crashes=%s' \
    "$t" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$crash")
  echo "$line"
  summary+=("$line")
done

echo
echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
