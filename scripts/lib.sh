# Shared helpers for runvm's scripts. Sourced, not run.
# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are for the scripts that source this
set -euo pipefail

RUNVM_PREFIX="${RUNVM_PREFIX:-/usr/local}"
RUNVM_LIBEXEC="$RUNVM_PREFIX/lib/runvm"
RUNVM_DATA="${RUNVM_DATA_DIR:-/var/lib/runvm}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/runvm-dockerd.log}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "this step needs root (it installs packages and talks to dockerd): run it with sudo"
}

# apt-get install only what is missing; `apt-get update` once, only if needed.
APT_UPDATED=""
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        APT_UPDATED=1
    fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

docker_ok() { docker info >/dev/null 2>&1; }
