#!/usr/bin/env bash
# The hf tests again on the oldest transformers that pyproject.toml allows (its
# `transformers>=X.Y` bound, read from the file so the two cannot drift apart). A second
# venv reuses the CI venv's packages through a .pth file (torch, accelerate, pytest: no second
# download) and holds only that transformers and what it pins (tokenizers, huggingface-hub).
# Run from .ci/run with the CI venv active; one to two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

oldest=$(python - <<'EOF'
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["optional-dependencies"]["hf"]
print(next(m.group(1) for d in deps if (m := re.fullmatch(r"transformers>=([\d.]+)", d.replace(" ", "")))))
EOF
)
base=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

python -m venv .venv-ci-oldest
site=$(.venv-ci-oldest/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# after the venv's own site-packages: its transformers wins, everything else comes from CI's
printf '%s\n%s\n' "$base" "$PWD" >"$site/_ci_venv.pth"
.venv-ci-oldest/bin/python -m pip install -q "transformers==${oldest}.*"
got=$(.venv-ci-oldest/bin/python -c "import transformers; print(transformers.__version__)")
echo "transformers $got (pyproject's lower bound: >=$oldest)"
case "$got" in
  "$oldest".*) ;;
  *) echo "expected transformers $oldest.*, got $got" >&2; exit 1 ;;
esac
# the hf backend, its KV cache adapters and batching, and the real instruct model on it
# (the slow ones, `transformers serve` and --gguf-file, run on the newest only)
.venv-ci-oldest/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not gpu" \
  tests/test_hf_batching.py tests/test_hf_memory.py tests/test_real_model.py
