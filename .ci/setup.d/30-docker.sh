#!/usr/bin/env bash
# CI: a real Docker daemon (Debian docker.io, no systemd) and debootstrap, for tests/docker.
# Idempotent: installs only what is missing and starts dockerd only when no daemon answers.
# No Docker Hub here: tests/docker builds its base image from debootstrap instead.
# Recipe and pitfalls: ../shared/reference/infra_slurm_containers.md.
#
# Env: DOCKER_CI_LOG  dockerd log file (default /var/log/mtbench-dockerd.log)
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -n -E bash "$0" "$@"; fi
  echo "30-docker.sh: must run as root (dockerd)" >&2
  exit 1
fi

LOG=${DOCKER_CI_LOG:-/var/log/mtbench-dockerd.log}
log() { echo "30-docker: $*"; }

# 1. packages (about 15 s on a fresh machine); no Recommends (needrestart, apparmor)
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing docker.io and debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
fi

# 2. daemon: already answering (ours from an earlier run, or the machine's own)?
if docker info >/dev/null 2>&1; then
  log "docker daemon already running"
  exit 0
fi

# no systemd here; no bridge/iptables (the VM has no netfilter setup): builds and
# runs use --network host or --network none
log "starting dockerd (log: $LOG)"
setsid dockerd --bridge=none --iptables=false --ip6tables=false >>"$LOG" 2>&1 </dev/null &

# 3. bounded wait (answers after about 0.3 s)
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    log "docker daemon is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    exit 0
  fi
  sleep 0.25
done
echo "30-docker.sh: dockerd did not answer within 30 s" >&2
tail -n 30 "$LOG" >&2 || true
exit 1
