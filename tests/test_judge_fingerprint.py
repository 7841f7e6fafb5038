"""A local judge checkpoint that is overwritten is another judge (issue 12 follow-up): the
model fingerprint is part of every judgment's inputs_sha256, so `hf/<dir>` judged again
after a new save into <dir> re-asks every game; an unchanged re-run asks nothing.
(The random tiny model writes 2048 unparsable tokens per reply: ~25 s a judge run here.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_judge_cli import _jsonl, smoke_answers

ARGS = ["--bench", "smoke", "--first-n", "1", "--judge-name", "local"]


def _plan(run_job: Any, out: Path, spec: str) -> str:
    r = run_job("judge", *ARGS, "--output", str(out), "--judge-model", spec, "--dry-run")
    assert r.returncode == 0, r.stderr
    return str(r.stdout)


@pytest.mark.slow  # three local-judge runs of 2048-token replies: ~3 min on a loaded 2-core machine
@pytest.mark.timeout(240)
def test_an_overwritten_local_judge_checkpoint_judges_again(
    run_job: Any, tmp_path: Path, tiny_model: Path
) -> None:
    out = smoke_answers(run_job, tmp_path)
    judge = tmp_path / "judge-ckpt"
    shutil.copytree(tiny_model, judge)
    spec = f"hf/{judge}"
    first = run_job("judge", *ARGS, "--output", str(out), "--judge-model", spec)
    # a random model's replies are unparsable: a failed run, its rows stored as final parse_errors
    assert first.returncode != 0 and "no [[rating]]" in first.stderr, first.stderr
    rows = _jsonl(out / "smoke" / "model_judgment" / "local_single.jsonl")
    n = len(rows)
    assert n and {r["status"] for r in rows} == {"parse_error"}
    plan = _plan(run_job, out, spec)
    assert f"0 calls to send ({n} already stored)" in plan, plan
    assert f"judge model fingerprint: {judge.resolve()} " in plan
    manifest = json.loads((out / "smoke" / "model_judgment" / "local_single.manifest.json").read_text())
    assert manifest["judge_fingerprint"]["kind"] == "local"

    # a training job saves its next step over the same directory: same names, new weights
    weights = judge / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4] ^= 1  # one mantissa bit of the last tensor (the fingerprint digests both ends)
    weights.write_bytes(bytes(data))
    assert f"{n} calls to send (0 already stored)" in _plan(run_job, out, spec)
    again = run_job("judge", *ARGS, "--output", str(out), "--judge-model", spec)
    assert again.returncode != 0 and f"all {n}" in again.stderr.strip().splitlines()[-1], again.stderr
    assert f"0 calls to send ({n} already stored)" in _plan(run_job, out, spec)


def test_only_a_local_judge_has_a_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id's cached revision appears only once a run has downloaded it: were it hashed,
    the second run would judge everything again. API judges have none either."""
    from job.judge.runner import judge_fingerprint

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    fp = judge_fingerprint(f"hf/{ckpt}")
    assert fp is not None and fp["kind"] == "local"
    assert judge_fingerprint(f"vllm/{ckpt}") == fp
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert judge_fingerprint("hf/org/judge") is None
    refs = tmp_path / "hub" / "models--org--judge" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)  # the first run downloaded it
    assert judge_fingerprint("hf/org/judge") is None
    assert judge_fingerprint("openai/gpt-4") is None and judge_fingerprint("mock/echo") is None
