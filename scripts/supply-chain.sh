#!/usr/bin/env bash
# Supply-chain checks, run by `make lint`: `scripts/supply-chain.sh`.
#
#   cargo deny check   licences (deny.toml allow-list), bans (duplicate versions, wildcards),
#                      sources (default Cargo registry only) and RustSec advisories
#   cargo audit        RustSec advisories and yanked crates (.cargo/audit.toml)
#
# Installs cargo-deny and cargo-audit with `cargo install --locked` when they are missing.
#
# The RustSec advisory database lives on GitHub. When it cannot be reached this script
# says so plainly, still runs the checks that need no database (licences, bans, sources),
# and checks advisories against a local copy of the database when there is one:
#   ECLUSE_ADVISORY_DB=/path/to/advisory-db   a clone (or bare mirror) of rustsec/advisory-db
#   otherwise ~/.cargo/advisory-db, left by an earlier online `cargo audit`, if present.
# Its date is printed: advisories published after it are not known to it.
# With none, it prints "ADVISORIES NOT CHECKED" and exits 0 (the offline checks passed);
# ECLUSE_SUPPLY_CHAIN_STRICT=1 makes that case fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
DB_URL=https://github.com/rustsec/advisory-db
STRICT=${ECLUSE_SUPPLY_CHAIN_STRICT:-0}

# deny.toml is written for cargo-deny 0.20 and .cargo/audit.toml for cargo-audit 0.22.
need() { # subcommand crate version-requirement
  if ! "$CARGO" "$1" --version >/dev/null 2>&1; then
    echo "== $2 is missing: installing it (cargo install --locked $2 --version '$3'; a few minutes, once)"
    "$CARGO" install --locked "$2" --version "$3"
  fi
}
need deny cargo-deny '^0.20'
need audit cargo-audit '^0.22'

echo "== cargo deny check bans licenses sources"
"$CARGO" deny check bans licenses sources

echo "== is the RustSec advisory database reachable? (git ls-remote $DB_URL)"
if GIT_TERMINAL_PROMPT=0 timeout 30 git ls-remote --exit-code "$DB_URL" HEAD >/dev/null 2>&1; then
  echo "   yes: fetching the current database"
  echo "== cargo deny check advisories"
  "$CARGO" deny check advisories
  echo "== cargo audit"
  "$CARGO" audit
  echo "supply chain: licences, bans, sources ok; advisories ok against today's RustSec database"
  exit 0
fi

cat <<EOF

   *** The RustSec advisory database at $DB_URL cannot be reached
   *** (no network to GitHub from this machine). Licences, bans and sources were
   *** checked above; advisories can only be checked against a local copy.

EOF

db=""
if [ -n "${ECLUSE_ADVISORY_DB:-}" ]; then
  db=$ECLUSE_ADVISORY_DB
  [ -d "$db" ] || { echo "ECLUSE_ADVISORY_DB=$db is not a directory" >&2; exit 1; }
elif [ -d "${CARGO_HOME:-$HOME/.cargo}/advisory-db/crates" ]; then
  db=${CARGO_HOME:-$HOME/.cargo}/advisory-db
fi

if [ -z "$db" ]; then
  echo "   *** ADVISORIES NOT CHECKED: no local copy of the advisory database either."
  echo "   *** Run this on a machine that reaches GitHub, or set ECLUSE_ADVISORY_DB to a clone."
  if [ "$STRICT" = 1 ]; then
    echo "supply chain: FAILED (ECLUSE_SUPPLY_CHAIN_STRICT=1 and advisories could not be checked)" >&2
    exit 1
  fi
  echo "supply chain: licences, bans, sources ok; advisories NOT CHECKED (database unreachable)"
  exit 0
fi

shown=$db
# A bare mirror has no work tree: read it through a throw-away clone.
if [ ! -d "$db/crates" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  git clone --quiet "$db" "$tmp/advisory-db"
  db=$tmp/advisory-db
fi
commit_time=$(git -C "$db" log -1 --format=%ct 2>/dev/null || echo 0)
if [ "$commit_time" -gt 0 ]; then
  age_days=$(( ($(date +%s) - commit_time) / 86400 ))
  when="$(date -u -d "@$commit_time" +%F) ($age_days days old)"
else
  when="of unknown date"
fi
echo "== cargo audit against the LOCAL advisory database $shown, last updated $when"
echo "   (advisories published since then are not known to it)"
"$CARGO" audit --db "$db" --no-fetch --stale
echo "supply chain: licences, bans, sources ok; advisories ok against a local copy of the database dated $when, not today's"
