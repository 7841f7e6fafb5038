"""The slurm/ scripts' own logic, run with bash and a scheduler-like environment (no Slurm
needed): shard arguments for plain and stepped arrays, guards, submit.sh's commands, and
the rule that nothing site-specific is hard-coded."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

SLURM = Path(__file__).resolve().parents[2] / "slurm"
SCRIPTS = sorted(p for p in SLURM.iterdir() if p.suffix in {".sh", ".sbatch"})


def run_script(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "SLURM_", "SBATCH_"))}
    return subprocess.run(
        ["bash", str(SLURM / script), *args],
        env=dict(base, **env),
        capture_output=True,
        text=True,
        timeout=30,
    )


ARRAY_ENV = {
    "JOB_MODEL": "mock/echo",
    "JOB_BENCH": "smoke",
    "JOB_LAUNCHER": "echo",
    "SLURM_ARRAY_JOB_ID": "7",
}


@pytest.mark.parametrize(
    ("task", "task_min", "step", "count", "shard"),
    [
        ("0", "0", "1", "4", "0"),
        ("3", "0", "1", "4", "3"),
        ("5", "2", "1", "4", "3"),  # --array=2-5
        ("6", "0", "2", "4", "3"),  # --array=0-6:2 gives ids 0,2,4,6
    ],
)
def test_generate_passes_the_array_position_as_shard(task, task_min, step, count, shard):
    env = dict(
        ARRAY_ENV,
        SLURM_ARRAY_TASK_ID=task,
        SLURM_ARRAY_TASK_MIN=task_min,
        SLURM_ARRAY_TASK_STEP=step,
        SLURM_ARRAY_TASK_COUNT=count,
    )
    r = run_script("generate.sbatch", env, "--first-n", "2")
    assert r.returncode == 0, r.stderr
    # JOB_LAUNCHER=echo prints the command instead of running it
    assert r.stdout.splitlines()[-1] == f"job generate --shard-index {shard} --num-shards {count} --first-n 2"


def test_generate_rejects_a_shard_count_that_is_not_the_array_size():
    env = dict(ARRAY_ENV, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="4", JOB_NUM_SHARDS="8")
    r = run_script("generate.sbatch", env)
    assert r.returncode == 2
    assert "JOB_NUM_SHARDS=8 but the array has 4 tasks" in r.stderr


@pytest.mark.parametrize(
    ("drop", "message"),
    [("JOB_MODEL", "set JOB_MODEL"), ("JOB_BENCH", "set JOB_BENCH"), ("SLURM_ARRAY_TASK_ID", "array job")],
)
def test_generate_names_what_is_missing(drop, message):
    env = dict(ARRAY_ENV, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="1")
    del env[drop]
    r = run_script("generate.sbatch", env)
    assert r.returncode != 0 and message in r.stderr


def test_test_hook_fails_only_the_named_tasks():
    env = dict(ARRAY_ENV, SLURM_ARRAY_TASK_COUNT="3", JOB_TEST_FAIL_TASK_IDS="1,11")
    rcs = [run_script("generate.sbatch", dict(env, SLURM_ARRAY_TASK_ID=str(i))).returncode for i in range(3)]
    assert rcs == [0, 3, 0]


def test_reduce_runs_judge_and_report_only_with_a_judge_model():
    env = {"JOB_BENCH": "smoke", "JOB_LAUNCHER": "echo", "JOB_MODEL_NAME": "m1"}
    r = run_script("reduce_judge.sbatch", env)
    assert r.returncode == 0, r.stderr
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("job ")] == ["job reduce"]
    r = run_script("reduce_judge.sbatch", dict(env, JOB_JUDGE_MODEL="mock/fixed:[[5]]"))
    assert r.returncode == 0, r.stderr
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("job ")] == [
        "job reduce",
        "job judge --model-list m1",
        "job report",
    ]


def test_submit_dry_run_builds_the_dependency_chain():
    env = {
        "JOB_MODEL": "mock/echo",
        "JOB_BENCH": "smoke",
        "JOB_NUM_SHARDS": "16",
        "JOB_ARRAY_PARALLEL": "4",
        "JOB_GPUS": "2",
        "JOB_SBATCH_ARGS": "-p gpu -A proj",
    }
    r = run_script("submit.sh", env, "--dry-run", "--", "--max-new-tokens", "512")
    assert r.returncode == 0, r.stderr
    gen, red = r.stdout.splitlines()
    assert gen.startswith("sbatch --parsable --array=0-15%4 -p gpu -A proj --gpus=2 ")
    assert gen.endswith("slurm/generate.sbatch --max-new-tokens 512")
    assert "--kill-on-invalid-dep=yes -p gpu -A proj" in red
    assert "--dependency=afterok:<GENERATE_JOB_ID>" in red and red.endswith("slurm/reduce_judge.sbatch")


def test_reducer_is_cancelled_by_a_failed_dependency_even_when_submitted_by_hand():
    assert "#SBATCH --kill-on-invalid-dep=yes" in (SLURM / "reduce_judge.sbatch").read_text()


def test_submit_rejects_a_bad_shard_count():
    r = run_script("submit.sh", {"JOB_MODEL": "m", "JOB_BENCH": "b", "JOB_NUM_SHARDS": "0"}, "--dry-run")
    assert r.returncode == 2 and "JOB_NUM_SHARDS must be a positive integer" in r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_nothing_site_specific_is_hard_coded(script: Path):
    text = script.read_text()
    directives = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    for d in directives:
        assert not re.search(r"\s(-p|-A|-q|--partition|--account|--qos|--mem|--time|-t)\b", d), d
    code = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")] + directives
    for ln in code:
        # an absolute path starts after a space, quote or '='; /dev/null is everywhere
        assert not re.search(r"""(^|[\s"'=])/(?!dev/null)[A-Za-z]""", ln), f"{script.name}: {ln}"
