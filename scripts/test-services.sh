#!/usr/bin/env bash
# Installs the servers the tests start themselves (they bind 127.0.0.1 only):
# Redis, nginx, Chromium and Prometheus (prometheus, promtool) from Debian.
# SecantusDB comes from PyPI via setup.cfg.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v nginx >/dev/null || need+=(nginx)
command -v chromium >/dev/null || need+=(chromium)
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test-services: need ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts services on install; the tests run their own instances.
for svc in redis-server nginx prometheus; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" 2>/dev/null || true; fi
  service "$svc" stop >/dev/null 2>&1 || true
done
