"""The pipeline the storage fault tests break: generate (3 shards) -> reduce -> judge ->
report of the packaged smoke bench with mock backends, and how to compare its outputs."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

SMOKE = ["--bench", "smoke"]
GEN = ["generate", *SMOKE, "--model", "mock/echo", "--num-choices", "2", "--num-shards", "3"]
REDUCE = ["reduce", *SMOKE]
JUDGE = ["judge", *SMOKE, "--judge-model", "mock/judge", "--batch-size", "4"]
REPORT = ["report", *SMOKE, "--no-html"]
STEPS = (GEN, REDUCE, JUDGE, REPORT)
ANSWERS = "smoke/model_answer/echo.jsonl"
JUDGMENTS = "smoke/model_judgment/judge_single.jsonl"
SCORES = "smoke/reports/scores.csv"


def lines(data: bytes, drop: tuple[str, ...] = ("tstamp",)) -> list[dict[str, Any]]:
    """JSONL records without the fields that differ between identical runs."""
    out = []
    for line in data.decode("utf-8").splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if k not in drop})
    return out


def canon_judgments(data: bytes) -> list[str]:
    """Judgment rows in a stable order; fails on a duplicate (question, model, turn, choice)."""
    recs = lines(data)
    keys = [(r["question_id"], r["model"], r["turn"], r.get("choice")) for r in recs]
    assert len(keys) == len(set(keys)), "duplicate judgment rows"
    return sorted(json.dumps(r, sort_keys=True) for r in recs)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "AWS_", "SLURM_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(extra or {}))
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, fsize: int | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real `job` CLI in a subprocess; `fsize` caps every file it writes (RLIMIT_FSIZE:
    writes past it fail with EFBIG, as Python ignores SIGXFSZ)."""

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-c", "from job.cli import main; main()", *args],
        capture_output=True, text=True, env=env or clean_env(), timeout=timeout, preexec_fn=limit, cwd="/",
    )  # fmt: skip


def build_reference(root: Path) -> dict[str, Any]:
    """The pipeline on a healthy local directory: what every faulted-then-resumed run must equal."""
    out = root / "runs"
    for args in STEPS:
        r = run_cli(*args, "--output", str(out))
        assert r.returncode == 0, r.stderr
    return {
        "answers": lines((out / ANSWERS).read_bytes()),
        "judgments": canon_judgments((out / JUDGMENTS).read_bytes()),
        "scores": (out / SCORES).read_bytes(),
    }


def error_line(res: subprocess.CompletedProcess[str]) -> str:
    """A failed command: exit 2, no traceback, its last stderr line `error: ...`."""
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), res.stderr
    return line
