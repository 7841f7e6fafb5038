#!/usr/bin/env bash
# The hf tests again on the oldest transformers, accelerate and tokenizers that pyproject.toml
# allows (the `>=X.Y` bounds of its hf extra, read from the file so they cannot drift apart).
# A second venv reuses the CI venv's packages through a .pth file (torch, pytest: no second
# download) and holds only those three at their bounds (and what they pin: huggingface-hub).
# Run from .ci/run with the CI venv active; one to two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

# e.g. transformers==4.56.* accelerate==0.30.* tokenizers==0.22.*
mapfile -t pins < <(python - <<'PY'
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["optional-dependencies"]["hf"]
for d in deps:
    m = re.fullmatch(r"(transformers|accelerate|tokenizers)>=([\d.]+)", d.replace(" ", ""))
    if m:
        print(f"{m.group(1)}=={m.group(2)}.*")
PY
)
if [ "${#pins[@]}" -ne 3 ]; then
  echo "expected 3 lower bounds in pyproject's hf extra, got: ${pins[*]}" >&2
  exit 1
fi
base=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

python -m venv .venv-ci-oldest
site=$(.venv-ci-oldest/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# after the venv's own site-packages: its pinned packages win, everything else comes from CI's
printf '%s\n%s\n' "$base" "$PWD" >"$site/_ci_venv.pth"
.venv-ci-oldest/bin/python -m pip install -q "${pins[@]}"
# each version in use must be the pinned X.Y (the venv's own, not the CI venv's newer one)
.venv-ci-oldest/bin/python - "${pins[@]}" <<'PY'
import importlib
import sys

for pin in sys.argv[1:]:
    name, want = pin.split("==")
    got = importlib.import_module(name).__version__
    print(f"{name} {got} (pyproject's lower bound: >={want[:-2]})")
    if not got.startswith(want[:-1]):
        sys.exit(f"expected {name} {want}, got {got}")
PY
# the hf backend, its KV cache adapters and batching, and the real instruct model on it
# (the slow ones, `transformers serve` and --gguf-file, run on the newest only)
.venv-ci-oldest/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not gpu" \
  tests/test_hf_batching.py tests/test_hf_memory.py tests/test_hf_refill.py tests/test_hf_prefill.py \
  tests/test_real_model.py
