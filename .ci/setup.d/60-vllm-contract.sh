#!/usr/bin/env bash
# CI: the real vllm wheel (pinned, --no-deps, CPU-side modules only) for the `vllm_contract`
# tests, in .venv-ci/vllm-<pin>/ beside the CI venv (never in its site-packages: the tests
# import the fake vllm). Cached: pip's cache, and a marker that makes a re-run a no-op;
# bounded by the installer's timeouts. A failure here fails CI with pip's reason, and the
# tests themselves fail (not skip) in CI when the wheel is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
pin=$(sed -n 's/^VLLM_VERSION=\([^ ]*\).*/\1/p' tests/real_vllm/install.sh)
bash tests/real_vllm/install.sh ".venv-ci/vllm-$pin"
