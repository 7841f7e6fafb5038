#!/usr/bin/env bash
# Evaluate one checkpoint on the cluster and gate on a baseline; used by
# .github/workflows/checkpoint-eval.yml (over ssh on a login node, or on a self-hosted
# runner) and by the GitLab CI example in the README. Nothing site-specific is hard-coded.
#
# Exit code = `job run`'s: 0 pass, 3 regression, 2 bad input, 1 any other failure.
# The last line of $RESULT_DIR/summary.txt is the one-line gate summary.
#
# Environment:
#   CKPT_MODEL    model spec, e.g. vllm//shared/ckpts/step-12000 (required)
#   CKPT_NAME     answer-file / report name (default: last part of the path)
#   JOB_BENCH     bench (default mt_bench); JOB_JUDGE_MODEL judge spec (required)
#   JOB_OUTPUT    run root, local or s3:// (default ./runs); JOB_NUM_CHOICES (default 1)
#   BASELINE      report.json or latest/<bench>/<model>.json pointer (optional)
#   MAX_DROP      allowed drop of the average in points (default 0.3; used with BASELINE)
#   PUBLISH       DIR or s3://... to publish the report to (optional)
#   RESULT_DIR    where gate.xml, summary.txt and job-run.log go (default ./ckpt-eval)
#   JOB_VENV      virtualenv to activate first (optional)
#   LAUNCHER      command prefix that gets a GPU (default: "srun --gpus=1" when srun exists;
#                 set it empty on a GPU runner); EXTRA_ARGS more `job run` arguments
set -euo pipefail

: "${CKPT_MODEL:?set CKPT_MODEL to the model spec of the checkpoint, e.g. vllm//shared/ckpts/step-1000}"
: "${JOB_JUDGE_MODEL:?set JOB_JUDGE_MODEL, e.g. openai/gpt-4o-2024-08-06}"
RESULT_DIR=${RESULT_DIR:-./ckpt-eval}
mkdir -p "$RESULT_DIR"
if [ -n "${JOB_VENV:-}" ]; then
  # shellcheck disable=SC1091
  . "$JOB_VENV/bin/activate"
fi
if [ -z "${LAUNCHER+set}" ]; then
  if command -v srun >/dev/null 2>&1; then LAUNCHER="srun --gpus=1"; else LAUNCHER=""; fi
fi

args=(run --bench "${JOB_BENCH:-mt_bench}" --model "$CKPT_MODEL" --judge-model "$JOB_JUDGE_MODEL"
  --num-choices "${JOB_NUM_CHOICES:-1}" --output "${JOB_OUTPUT:-./runs}" --junit-xml "$RESULT_DIR/gate.xml")
[ -n "${CKPT_NAME:-}" ] && args+=(--model-name "$CKPT_NAME")
[ -n "${BASELINE:-}" ] && args+=(--baseline "$BASELINE" --max-drop "${MAX_DROP:-0.3}")
[ -n "${PUBLISH:-}" ] && args+=(--publish "$PUBLISH")
if [ -n "${EXTRA_ARGS:-}" ]; then
  read -r -a extra <<<"$EXTRA_ARGS"
  args+=("${extra[@]}")
fi

echo "checkpoint-eval: ${LAUNCHER:-(local)} job ${args[*]}" >&2
set +e
# shellcheck disable=SC2086  # LAUNCHER is a command prefix with its own arguments
$LAUNCHER job "${args[@]}" | tee "$RESULT_DIR/job-run.log"
rc=${PIPESTATUS[0]}
set -e
tail -n 1 "$RESULT_DIR/job-run.log" >"$RESULT_DIR/summary.txt" || true
echo "checkpoint-eval: exit $rc: $(cat "$RESULT_DIR/summary.txt")" >&2
exit "$rc"
