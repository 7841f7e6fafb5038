#!/usr/bin/env bash
# Build a local stand-in base image from debootstrap (Debian bookworm minbase), for
# machines that cannot reach Docker Hub. Usage: make_base_image.sh IMAGE [CACHE_DIR]
# The rootfs tarball is cached in CACHE_DIR (debootstrap takes ~40 s, the import ~3 s);
# an IMAGE already in the daemon is reused as is.
set -euo pipefail

IMAGE=${1:?usage: make_base_image.sh IMAGE [CACHE_DIR]}
CACHE=${2:-${XDG_CACHE_HOME:-$HOME/.cache}/mtbench-job-ci}
SUITE=bookworm

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "make_base_image: $IMAGE already present"
  exit 0
fi

mkdir -p "$CACHE"
tarball="$CACHE/debian-$SUITE-minbase.tar"
if [ ! -s "$tarball" ]; then
  # the machine's own Debian mirror (apt over http works where Docker Hub does not)
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  echo "make_base_image: debootstrap $SUITE from $mirror"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 || {
    tail -n 30 "$CACHE/debootstrap.log" >&2
    exit 1
  }
  # extra CAs of this machine (an egress proxy): without them pip in the image fails
  # with CERTIFICATE_VERIFY_FAILED; ca-certificates in the image picks them up
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi

echo "make_base_image: importing $tarball as $IMAGE"
docker import -c 'CMD ["/bin/bash"]' "$tarball" "$IMAGE" >/dev/null
