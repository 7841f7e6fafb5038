#!/usr/bin/env bash
# CI: FastChat's real compute_agreement.py (fschat, pinned, --no-deps) for the parity test in
# tests/test_agreement.py, in a folder of its own (never site-packages: nothing imports
# `fastchat`; the test loads that one file). Cached: pip's cache, and a marker that makes a
# re-run a no-op. A failure here fails CI with pip's reason; the test fails (not skips) in CI
# when the file is missing.
#
#   bash .ci/setup.d/70-fschat.sh [TARGET]     # default: .venv-ci/fschat-$FSCHAT_VERSION
set -euo pipefail
cd "$(dirname "$0")/../.."

FSCHAT_VERSION=0.2.36  # = tests/test_agreement.py FSCHAT_VERSION
TARGET="${1:-.venv-ci/fschat-$FSCHAT_VERSION}"
stamp="$TARGET/.installed-$FSCHAT_VERSION"
if [ -e "$stamp" ]; then
  echo "fschat $FSCHAT_VERSION already in $TARGET"
  exit 0
fi
rm -rf "$TARGET"
# bounded: a stuck index fails here, with the reason, not as a hung CI job
timeout 600 python -m pip install -q --no-deps --target "$TARGET" "fschat==$FSCHAT_VERSION"
test -f "$TARGET/fastchat/llm_judge/compute_agreement.py"
touch "$stamp"
echo "fschat $FSCHAT_VERSION installed in $TARGET"
