#!/usr/bin/env bash
# CI: what tests/ray needs beyond pip (ray itself comes with the `test` extra):
# `unshare` (util-linux) and `ip` (iproute2) to run Ray in a private network namespace,
# so all its traffic stays on 127.0.0.1 (Ray will not bind to loopback otherwise).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -n -E bash "$0" "$@"; fi
  echo "40-ray.sh: must run as root (apt, network namespaces)" >&2
  exit 1
fi

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "40-ray: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# fail here, with the reason, rather than in the middle of the test run
if ! unshare -n sh -c 'ip link set lo up' 2>/tmp/40-ray.err; then
  echo "40-ray: cannot create a network namespace (unshare -n): $(cat /tmp/40-ray.err)" >&2
  echo "40-ray: the container needs CAP_SYS_ADMIN (e.g. docker run --privileged or --cap-add SYS_ADMIN)" >&2
  exit 1
fi
echo "40-ray: network namespaces work (unshare -n + lo up)"
