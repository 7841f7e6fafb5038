#!/usr/bin/env bash
# One prepared check for a machine with one GPU, torch and transformers (no internet, no vllm):
#
#   benchmarks/gpu_check.sh [--bench-data DIR] [--shapes 1b,7b] [--hbm-tbps 4.8] [...]
#   benchmarks/gpu_check.sh --tiny        # CPU, tiny model, a minute or two (CI runs this)
#
# Runs `pytest -m gpu` (the hf parts), then our hf backend on mt_bench (every question x 2 turns
# x 5 choices) against FastChat's loop on a sample, on random-initialised Llama shapes built on
# the spot; prints a table (benchmarks/gpu_check.py says what it measures). Writes
# gpu_check.md, gpu_check.json and gpu_check.log to $OUT when set. Exits non-zero on any
# failure, or when it runs past --time-limit seconds (default 480).
# Other options go to gpu_check.py (--help lists them). PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

limit=480
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time-limit) limit="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
py="${PYTHON:-python3}"
out="${OUT:-}"
if [ -n "$out" ]; then
  mkdir -p "$out" || exit 1
  log="$out/gpu_check.log"
  args+=(--out "$out")
else
  log="$(mktemp -t gpu_check.XXXXXX.log)"
fi

missing="$("$py" -c 'import importlib.util as u; print(" ".join(m for m in ("torch", "transformers", "pydantic", "jinja2", "tqdm") if u.find_spec(m) is None))')" || exit 1
if [ -n "$missing" ]; then
  echo "gpu_check: $py lacks the Python package(s): $missing" | tee "$log" >&2
  exit 1
fi

timeout --kill-after=30 "$limit" "$py" benchmarks/gpu_check.py "${args[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "gpu_check: FAILED: ran past the time limit of ${limit} s" | tee -a "$log" >&2
fi
echo "gpu_check: exit $rc (log: $log)"
exit "$rc"
