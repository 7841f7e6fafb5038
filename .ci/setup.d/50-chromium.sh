#!/usr/bin/env bash
# CI: headless Chromium for tests/test_report_html.py (renders report.html to a PNG).
# Idempotent and quiet: installs the Debian package only when no chromium is on PATH.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "50-chromium.sh: need root (or sudo) to apt-get install chromium" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "50-chromium: $(chromium --version 2>/dev/null | head -1)"
