#!/usr/bin/env bash
# Make sure what the full test suite needs is present and running:
# Debian's Chromium for the browser tests, PostgreSQL and Redis for the
# topology tests, NATS with JetStream for the stream in; with --bench, wrk
# for the benchmarks. Safe to run again; it only acts on what is missing.
set -euo pipefail

log() { echo "[services] $*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
  if [ "$(id -u)" != "0" ]; then SUDO=sudo; else SUDO=; fi
  if [ -z "${APT_UPDATED:-}" ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ "${1:-}" = "--bench" ] && ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk (Debian), the HTTP load generator of bench/ingestion.py"
  apt_install wrk
fi

if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium (Debian) for the browser tests"
  apt_install chromium fonts-noto-color-emoji
fi

if ! port_open 5432; then
  if ! ls /etc/postgresql >/dev/null 2>&1; then
    log "installing postgresql"
    apt_install postgresql
  fi
  log "starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
fi

if ! port_open 6379; then
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis"
    apt_install redis-server
  fi
  log "starting redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi

# NATS with JetStream, for the event stream in (ingest/) and its tests.
if ! port_open 4222; then
  if ! command -v nats-server >/dev/null 2>&1; then
    log "installing nats-server"
    apt_install nats-server
  fi
  log "starting nats-server with JetStream"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
fi

for _ in $(seq 1 50); do
  if port_open 5432 && port_open 6379 && port_open 4222; then
    log "postgresql, redis and nats are up; chromium is $(command -v chromium)"
    exit 0
  fi
  sleep 0.2
done
log "postgresql, redis or nats did not come up" >&2
exit 1
