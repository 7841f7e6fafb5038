#!/usr/bin/env bash
# Submit the generation array and the reduce/judge/report job that depends on it,
# print both job ids (GENERATE_JOB_ID=.. / REDUCE_JOB_ID=.., eval-able), and with
# --wait block until the reducer has ended, failing with the reason if it did not complete.
#
#   export JOB_MODEL=hf/./ckpt JOB_BENCH=japanese_mt_bench JOB_NUM_CHOICES=5 JOB_OUTPUT=./runs
#   slurm/submit.sh                      # 8 shards, 1 GPU each
#   JOB_NUM_SHARDS=16 JOB_GPUS=2 JOB_SBATCH_ARGS="-p gpu -A myproj -t 4:00:00" slurm/submit.sh
#   slurm/submit.sh --wait -- --max-new-tokens 512   # args after -- go to `job generate`
#
# Options: --wait      wait for the reducer; exit 0 only if it COMPLETED
#          --dry-run   print the sbatch commands, submit nothing
# Environment:
#   JOB_MODEL, JOB_BENCH (required), JOB_OUTPUT, JOB_NUM_CHOICES, JOB_MODEL_NAME, JOB_JUDGE_MODEL,
#                 JOB_VENV, JOB_LAUNCHER ... : passed to the jobs (see slurm/*.sbatch)
#   JOB_NUM_SHARDS            array size = shard count (default 8)
#   JOB_ARRAY_PARALLEL        at most this many array tasks at once (sbatch --array=...%N)
#   JOB_GPUS                  GPUs per generation task (default: the script's 1; 0 = none)
#   JOB_SBATCH_ARGS           extra sbatch args for both jobs (partition, account, time, ...)
#   JOB_GENERATE_SBATCH_ARGS  extra sbatch args for the array only (e.g. --mem=64G)
#   JOB_REDUCE_SBATCH_ARGS    extra sbatch args for the reducer only (e.g. --gpus=1 for a local judge)
#   JOB_LOG_DIR               directory for the jobs' stdout/stderr (default: sbatch's, the cwd)
#   JOB_WAIT_TIMEOUT          seconds --wait waits at most (default 0 = no limit)
#   JOB_WAIT_POLL             seconds between --wait polls (default 5)
# The sbatch scripts are found next to this file; nothing site-specific is hard-coded.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
wait_for_end=0
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wait) wait_for_end=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "submit.sh: unknown option $1 (arguments for job generate go after --)" >&2; exit 2 ;;
  esac
  shift
done

: "${JOB_MODEL:?set JOB_MODEL (e.g. hf/./ckpt)}"
: "${JOB_BENCH:?set JOB_BENCH (e.g. japanese_mt_bench)}"
shards=${JOB_NUM_SHARDS:-8}
case "$shards" in '' | *[!0-9]* | 0) echo "submit.sh: JOB_NUM_SHARDS must be a positive integer, got '$shards'" >&2; exit 2 ;; esac
export JOB_MODEL JOB_BENCH JOB_NUM_SHARDS="$shards"

array="0-$((shards - 1))${JOB_ARRAY_PARALLEL:+%$JOB_ARRAY_PARALLEL}"
# split the *_SBATCH_ARGS strings into words on purpose (they are option lists)
read -r -a common <<<"${JOB_SBATCH_ARGS:-}"
read -r -a gen_extra <<<"${JOB_GENERATE_SBATCH_ARGS:-}"
read -r -a red_extra <<<"${JOB_REDUCE_SBATCH_ARGS:-}"
gen_args=(--parsable --array="$array" "${common[@]}")
red_args=(--parsable --kill-on-invalid-dep=yes "${common[@]}")
if [ -n "${JOB_GPUS:-}" ]; then gen_args+=(--gpus="$JOB_GPUS"); fi
if [ -n "${JOB_LOG_DIR:-}" ]; then
  mkdir -p "$JOB_LOG_DIR"
  gen_args+=(--output="$JOB_LOG_DIR/%x-%A_%a.out")
  red_args+=(--output="$JOB_LOG_DIR/%x-%j.out")
fi
gen_args+=("${gen_extra[@]}")
red_args+=("${red_extra[@]}")

if [ "$dry_run" = 1 ]; then
  echo "sbatch ${gen_args[*]} $here/generate.sbatch $*"
  echo "sbatch ${red_args[*]} --dependency=afterok:<GENERATE_JOB_ID> $here/reduce_judge.sbatch"
  exit 0
fi

gen_id=$(sbatch "${gen_args[@]}" "$here/generate.sbatch" "$@")
gen_id=${gen_id%%;*}
red_id=$(sbatch "${red_args[@]}" --dependency="afterok:$gen_id" "$here/reduce_judge.sbatch")
red_id=${red_id%%;*}
echo "submit.sh: generation array $gen_id ($shards tasks, --array=$array), reducer $red_id (afterok:$gen_id)" >&2
echo "GENERATE_JOB_ID=$gen_id"
echo "REDUCE_JOB_ID=$red_id"
[ "$wait_for_end" = 1 ] || exit 0

# --wait: poll the reducer's state (accounting may be off, so scontrol, not sacct)
field() { sed -nE "s/.*(^| )$1=([^ ]*).*/\\2/p" <<<"$2" | head -n 1; }
timeout=${JOB_WAIT_TIMEOUT:-0}
poll=${JOB_WAIT_POLL:-5}
start=$SECONDS
while :; do
  rec=$(scontrol show job -o "$red_id" 2>/dev/null || true)
  state=$(field JobState "$rec")
  case "$state" in
    PENDING | RUNNING | CONFIGURING | COMPLETING | SUSPENDED | REQUEUED | RESIZING | "") ;;
    *) break ;;
  esac
  if [ -z "$rec" ]; then
    echo "submit.sh: reducer $red_id is no longer known to slurmctld; check its log" >&2
    exit 1
  fi
  if [ "$timeout" != 0 ] && [ $((SECONDS - start)) -ge "$timeout" ]; then
    echo "submit.sh: reducer $red_id still $state after ${timeout}s (JOB_WAIT_TIMEOUT); jobs left running" >&2
    exit 1
  fi
  sleep "$poll"
done

if [ "$state" = COMPLETED ]; then
  echo "submit.sh: reducer $red_id COMPLETED" >&2
  exit 0
fi
failed=""
while IFS= read -r line; do
  s=$(field JobState "$line")
  case "$s" in
    COMPLETED | PENDING | RUNNING | "") ;;
    *) failed="${failed:+$failed, }${gen_id}_$(field ArrayTaskId "$line") $s exit=$(field ExitCode "$line")" ;;
  esac
done < <(scontrol show job -o "$gen_id" 2>/dev/null || true)
echo "submit.sh: error: reducer $red_id ended $state (reason: $(field Reason "$rec")," \
  "exit $(field ExitCode "$rec")); failed generation tasks: ${failed:-none found}; see the jobs' logs" >&2
exit 1
