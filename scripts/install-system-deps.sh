#!/usr/bin/env bash
# Install the system tools the deploy tests need, only when they are missing (idempotent).
#   promtool, prometheus  <- Debian package "prometheus"
#   docker-compose        <- Debian package "docker-compose" (validates docker-compose.yml)
#   nginx                 <- Debian package "nginx" (the load balancer of the two-replica test)
#   chromium, chromedriver <- Debian packages "chromium", "chromium-driver" (the /ui browser test)
# Usage: scripts/install-system-deps.sh   (as root, or with sudo available)
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-system-deps: prometheus, promtool, docker-compose, nginx, chromium and chromedriver already present"
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

# The Debian packages start their own prometheus and nginx services where an init system runs;
# the tests start their own servers on free loopback ports and need nothing from them.
export PATH="$PATH:/usr/sbin"
for tool in promtool prometheus docker-compose nginx chromium chromedriver; do
    command -v "$tool" >/dev/null 2>&1 || { echo "install-system-deps: $tool still missing" >&2; exit 1; }
done
promtool --version 2>&1 | head -n 1
docker-compose version 2>&1 | head -n 1
nginx -v 2>&1 | head -n 1
chromium --version 2>&1 | head -n 1
chromedriver --version 2>&1 | head -n 1
