#!/usr/bin/env bash
# Install the system tools the deploy tests need, only when they are missing (idempotent).
#   promtool, prometheus  <- Debian package "prometheus"
#   docker-compose        <- Debian package "docker-compose" (validates docker-compose.yml)
# Usage: scripts/install-system-deps.sh   (as root, or with sudo available)
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-system-deps: prometheus, promtool and docker-compose already present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-system-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"

# The Debian package starts its own prometheus service where an init system runs; the tests
# start their own server on a free port and need nothing from it.
for tool in promtool prometheus docker-compose; do
    command -v "$tool" >/dev/null 2>&1 || { echo "install-system-deps: $tool still missing" >&2; exit 1; }
done
promtool --version 2>&1 | head -n 1
docker-compose version 2>&1 | head -n 1
