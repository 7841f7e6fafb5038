"""End to end on a real Slurm: the project's own slurm/ scripts, the tiny hf model, the
real japanese_mt_bench (first 4 questions x 2 choices), `srun --gpus=1` inside an
allocation, the afterok dependency chain, and a failing shard that must cancel the reducer."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from slurm_helpers import job_records, logs, wait_for_end

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SUBMIT = str(REPO / "slurm" / "submit.sh")
BENCH = "japanese_mt_bench"
FIRST_N, CHOICES = 4, 2


def first_question_ids(bench_data: Path, n: int) -> list[int]:
    lines = (bench_data / BENCH / "question.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["question_id"] for line in lines if line.strip()][:n]


def parse_ids(stdout: str) -> tuple[str, str]:
    ids = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    return ids["GENERATE_JOB_ID"], ids["REDUCE_JOB_ID"]


def check_answer_file(path: Path, qids: list[int]) -> None:
    """Every (question, choice) exactly once, each with both turns answered."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert Counter(r["question_id"] for r in rows) == Counter(qids)
    for r in rows:
        assert sorted(c["index"] for c in r["choices"]) == list(range(CHOICES)), r["question_id"]
        for c in r["choices"]:
            assert len(c["turns"]) == 2 and all(isinstance(t, str) for t in c["turns"])


def shard_items(shard_dir: Path) -> Counter[tuple[int, int]]:
    items: Counter[tuple[int, int]] = Counter()
    for f in sorted(shard_dir.glob("shard-*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            items[(rec["question_id"], rec["choice"])] += 1
    return items


def judge_available() -> bool:
    from job.cli import COMMANDS

    return "judge" in COMMANDS and "report" in COMMANDS


@pytest.mark.slow  # a Slurm array, its reducer and an allocation: ~35 s loaded
@pytest.mark.timeout(240)
def test_array_reduce_chain_and_srun_in_allocation(run_cmd, tmp_path, tiny_model, shared_bench_data):
    qids = first_question_ids(shared_bench_data, FIRST_N)
    expected = Counter((q, c) for q in qids for c in range(CHOICES))
    env = {
        "JOB_MODEL": f"hf/{tiny_model}",
        "JOB_MODEL_NAME": "tiny",
        "JOB_BENCH": BENCH,
        "JOB_BENCH_DATA": str(shared_bench_data),
        "JOB_NUM_CHOICES": str(CHOICES),
        "JOB_GENERATE_FIRST_N": str(FIRST_N),
        "JOB_GENERATE_MAX_NEW_TOKENS": "8",
        "JOB_GENERATE_DEVICE": "cpu",  # the GPUs are fake (gres on /dev/null)
    }
    judged = judge_available()
    if judged:
        # judge/report exist: the reducer job runs them too (mock judge, no API)
        env["JOB_JUDGE_MODEL"] = "mock/fixed:Rating: [[7]]"
        env["JOB_JUDGE_FIRST_N"] = str(FIRST_N)

    # 1. the array (3 shards, 1 GPU each) + the reducer, via the project's submit script
    t0 = time.monotonic()
    out = tmp_path / "runs"
    sub = run_cmd([SUBMIT], env=dict(env, JOB_OUTPUT=str(out), JOB_NUM_SHARDS="3"), timeout=60)
    assert sub.returncode == 0, sub.stderr
    gen_id, red_id = parse_ids(sub.stdout)

    # 2. meanwhile, the README's used-by line in an allocation of its own (queued behind
    # the array on the 2-CPU node): one process, all shards, into a separate run root
    srun_out = tmp_path / "srun-runs"
    alloc = run_cmd(
        [
            "salloc",
            "--gpus=1",
            "bash",
            "-c",
            f"srun --gpus=1 job generate --bench {BENCH} --num-choices {CHOICES}"
            " && srun --gpus=1 printenv CUDA_VISIBLE_DEVICES",
        ],
        env=dict(env, JOB_OUTPUT=str(srun_out)),
        timeout=180,
    )
    assert alloc.returncode == 0, alloc.stderr[-3000:]
    assert alloc.stdout.strip().splitlines()[-1] in {"0", "1"}, alloc.stdout  # the step got a GPU

    # 3. the chain ends with every task and the reducer COMPLETED
    gen = wait_for_end(gen_id, timeout=150)
    red = wait_for_end(red_id, timeout=60)
    elapsed = time.monotonic() - t0
    assert [r["JobState"] for r in gen] == ["COMPLETED"] * 3, logs(tmp_path)
    assert red[0]["JobState"] == "COMPLETED", logs(tmp_path)
    assert all(r["TresPerJob"] == "gres:gpu:1" for r in gen)
    gen_logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("mtb-generate-*"))
    for i in range(3):
        assert f"shard {i} of 3" in gen_logs
    assert "gpus=none" not in gen_logs

    # 4. every (question, choice) generated exactly once over the shards, and reduced
    assert shard_items(out / BENCH / "shards" / "tiny") == expected
    check_answer_file(out / BENCH / "model_answer" / "tiny.jsonl", qids)
    assert shard_items(srun_out / BENCH / "shards" / "tiny") == expected
    if judged:
        reports = list((out / BENCH / "reports").rglob("*"))
        assert any(p.is_file() for p in reports), logs(tmp_path)
    else:
        assert "skipping judge and report" in logs(tmp_path)
    print(f"submit -> reducer COMPLETED (plus the salloc/srun run): {elapsed:.1f}s")


@pytest.mark.timeout(150)
def test_failed_shard_cancels_reducer(run_cmd, tmp_path, shared_bench_data):
    env = {
        "JOB_MODEL": "mock/echo",
        "JOB_BENCH": BENCH,
        "JOB_BENCH_DATA": str(shared_bench_data),
        "JOB_NUM_CHOICES": str(CHOICES),
        "JOB_GENERATE_FIRST_N": str(FIRST_N),
        "JOB_OUTPUT": str(tmp_path / "runs"),
        "JOB_NUM_SHARDS": "2",
        "JOB_GPUS": "0",
        # documented test hook of slurm/generate.sbatch: task 1 exits 3 before running job
        "JOB_TEST_FAIL_TASK_IDS": "1",
        "JOB_WAIT_TIMEOUT": "100",
    }
    t0 = time.monotonic()
    sub = run_cmd([SUBMIT, "--wait"], env=env, timeout=130)
    elapsed = time.monotonic() - t0
    gen_id, red_id = parse_ids(sub.stdout)
    assert sub.returncode == 1, sub.stderr
    # the wrapper says what happened and which task failed
    assert f"reducer {red_id} ended CANCELLED" in sub.stderr
    assert f"{gen_id}_1 FAILED exit=3:0" in sub.stderr
    assert "DependencyNeverSatisfied" in sub.stderr

    # Slurm's own view: the good shard completed, the bad one failed, the reducer was cancelled
    tasks = {r["ArrayTaskId"]: r for r in wait_for_end(gen_id, timeout=30)}
    assert tasks["0"]["JobState"] == "COMPLETED" and tasks["1"]["JobState"] == "FAILED"
    (red,) = job_records(red_id)
    assert red["JobState"] == "CANCELLED", red
    assert not (tmp_path / "runs" / BENCH / "model_answer").exists()
    assert (tmp_path / "runs" / BENCH / "shards" / "echo").is_dir()  # shard 0 kept for a re-run
    print(f"submit -> reducer CANCELLED: {elapsed:.1f}s")
