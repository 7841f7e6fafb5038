#!/usr/bin/env bash
# Several checkpoints on Slurm: one generation array and its reduce/judge/report job per model
# (slurm/submit.sh, once per line of MODELS_FILE), then one `job leaderboard` job that starts
# when every model's chain has ended, failed ones included (afterany).
#
#   export JOB_BENCH=mt_bench JOB_JUDGE_MODEL=openai/gpt-4o-2024-08-06
#   export JOB_OUTPUT=s3://runs/exp1 JOB_PUBLISH=s3://runs/board
#   slurm/submit_models.sh models.txt            # models.txt: SPEC [NAME] per line, # comments
#   slurm/submit_models.sh --dry-run models.txt  # print the sbatch commands, submit nothing
#
# Per model: JOB_MODEL=SPEC, JOB_MODEL_NAME=NAME (default: the spec's last path part),
# JOB_OUTPUT=<JOB_OUTPUT>/<NAME> (its own run root, so the reports never meet), and
# JOB_REPORT_PUBLISH=<JOB_PUBLISH>: the report is published there; the leaderboard reads the
# checkpoint step from NAME (`job leaderboard --step-pattern`, default step-123/checkpoint-123/ckpt123).
# Every other setting of slurm/submit.sh (JOB_NUM_SHARDS, JOB_GPUS, JOB_SBATCH_ARGS, ...)
# applies to every model. Re-submitting after a failure redoes only what is missing: every
# stage resumes (committed shards, stored judgments) in the model's own JOB_OUTPUT.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dry=()
if [ "${1:-}" = --dry-run ]; then dry=(--dry-run); shift; fi
file=${1:?usage: slurm/submit_models.sh [--dry-run] MODELS_FILE (one SPEC [NAME] per line)}
: "${JOB_BENCH:?set JOB_BENCH (e.g. mt_bench)}"
: "${JOB_PUBLISH:?set JOB_PUBLISH (a directory or s3://) for the reports and the leaderboard}"
root=${JOB_OUTPUT:-./runs}

ids=()
n=0
while IFS= read -r line || [ -n "$line" ]; do
  n=$((n + 1))
  read -r spec name rest <<<"${line%%#*}" || true
  [ -n "${spec:-}" ] || continue
  if [ -n "${rest:-}" ]; then
    echo "submit_models.sh: $file:$n: expected SPEC [NAME], got more fields" >&2
    exit 2
  fi
  name=${name:-$(basename "$spec" | tr -c 'A-Za-z0-9._+=@\n-' '-')}
  echo "submit_models.sh: $name ($spec) -> $root/$name" >&2
  out=$(JOB_MODEL=$spec JOB_MODEL_NAME=$name JOB_OUTPUT=$root/$name JOB_REPORT_PUBLISH=$JOB_PUBLISH \
    "$here/submit.sh" "${dry[@]}")
  echo "$out"
  if [ ${#dry[@]} -eq 0 ]; then
    ids+=("$(sed -n 's/^REDUCE_JOB_ID=//p' <<<"$out")")
  else
    ids+=("<REDUCE_JOB_ID of $name>")
  fi
done <"$file"
if [ ${#ids[@]} -eq 0 ]; then
  echo "submit_models.sh: $file: no models (one SPEC [NAME] per line)" >&2
  exit 2
fi

dep="afterany$(printf ':%s' "${ids[@]}")"
wrap="${JOB_VENV:+. $JOB_VENV/bin/activate && }${JOB_LAUNCHER:-} job leaderboard $JOB_PUBLISH"
read -r -a common <<<"${JOB_SBATCH_ARGS:-}"
if [ ${#dry[@]} -gt 0 ]; then
  echo "sbatch --parsable --job-name=mtb-leaderboard --dependency=$dep ${common[*]} --wrap=\"$wrap\""
  exit 0
fi
lb=$(sbatch --parsable --job-name=mtb-leaderboard --dependency="$dep" "${common[@]}" --wrap="$wrap")
echo "LEADERBOARD_JOB_ID=${lb%%;*}"
