#!/usr/bin/env bash
# Make sure system tools are installed: `scripts/need.sh cmake nginx wrk`.
# Each argument is a command; when it is missing, its Debian package is installed with
# apt-get (as root, or through sudo), saying what it does. Cargo fetches everything else.
set -euo pipefail

pkg_for() {
  case "$1" in
    cmake) echo cmake ;;
    nginx) echo nginx ;;
    wrk) echo wrk ;;
    redis-server) echo redis-server ;;
    prometheus|promtool) echo prometheus ;;
    chromium) echo chromium ;;
    chromedriver) echo chromium-driver ;;
    hyperfine) echo hyperfine ;;
    h2load) echo nghttp2-client ;;
    haproxy) echo haproxy ;;
    perf) echo linux-perf ;;
    taskset) echo util-linux ;;
    systemd-analyze) echo systemd ;;
    dpkg-deb) echo dpkg ;;
    npm) echo npm ;;
    *) echo "$1" ;;
  esac
}

missing=()
for cmd in "$@"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then
    missing+=("$(pkg_for "$cmd")")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

# Deduplicate package names.
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "ecluse: installing missing system packages with apt-get: ${pkgs[*]}" >&2
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "ecluse: cannot install ${pkgs[*]}: not root and no sudo. Install them and retry." >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
echo "ecluse: installed ${pkgs[*]}" >&2
