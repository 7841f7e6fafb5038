"""Issue 12 (generate side): shards are reused only for the same model, failures are never
answers, sampled hf answers do not depend on their batch, truncation stays visible."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from job.backends import load_backend
from job.errors import JobError
from job.generate import GenerateConfig, generate_shard, pending_shards, plan
from job.records import Answer, parse_records
from job.reduce import ReduceConfig
from job.reduce import run as reduce_run
from job.storage import Storage, open_storage

REPO = Path(__file__).resolve().parent.parent


def test_transformers_lower_bound_matches_what_the_code_calls() -> None:
    from job.backends.hf import MIN_TRANSFORMERS, check_transformers

    found = re.search(r'"transformers>=([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert found, "pyproject.toml gives transformers no lower bound"
    bound = found.group(1)
    assert bound == MIN_TRANSFORMERS, "pyproject's bound and the version the code needs differ"
    check_transformers(MIN_TRANSFORMERS)
    with pytest.raises(JobError, match=r"pip install 'transformers>=4\.56'"):
        check_transformers("4.45.2")  # from_pretrained(dtype=) does not exist there


# --- a task that loses the manifest race never overwrites the winner's shard data ---


def _race_plan(uri: str, bench_data: Path) -> tuple[GenerateConfig, dict[str, Any], Storage]:
    cfg = GenerateConfig(
        bench="mt_bench", model="mock/echo", model_name="m", first_n=3, output=uri, bench_data=str(bench_data)
    )
    return cfg, plan(cfg), open_storage(uri)


def _texts(storage: Storage) -> set[str]:
    reduce_run(ReduceConfig("mt_bench", ["m"], output=storage.root))
    answers = parse_records(storage.read_bytes("mt_bench/model_answer/m.jsonl"), Answer, "answers")
    return {t for a in answers for c in a.choices for t in c.turns}


@pytest.fixture(params=["local", "s3"])
def race_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "runs")
    s3 = request.getfixturevalue("s3")
    return str(s3.uri("race"))


def test_the_loser_of_the_manifest_race_keeps_the_winners_data(
    race_uri: str, shared_bench_data: Path
) -> None:
    cfg, p, storage = _race_plan(race_uri, shared_bench_data)
    generate_shard(cfg, p, 0, storage, load_backend("mock/echo"))
    # a second task for the same shard (a Slurm requeue) that checked before the first committed
    assert not pending_shards(cfg, p, storage)[0]
    generate_shard(cfg, p, 0, storage, load_backend("mock/fixed:late"))
    texts = _texts(storage)
    assert "late" not in texts and all(t.startswith("echo: ") for t in texts)
    # the loser removed only its own copy: the winner's answers and manifest are all that is left
    assert storage.list("mt_bench/shards/m/") == [
        "mt_bench/shards/m/shard-00000-of-00001.jsonl",
        "mt_bench/shards/m/shard-00000-of-00001.manifest.json",
    ]


def test_a_task_that_commits_between_anothers_data_and_manifest_wins(
    race_uri: str, shared_bench_data: Path
) -> None:
    cfg, p, storage = _race_plan(race_uri, shared_bench_data)
    real_write = storage.write_bytes
    calls: list[str] = []

    def write(key: str, data: bytes, *, if_absent: bool = False) -> bool:
        calls.append(key)
        if key.endswith(".manifest.json") and len(calls) == 2:  # the first task wrote its answers
            generate_shard(cfg, p, 0, storage, load_backend("mock/fixed:second"))
        return real_write(key, data, if_absent=if_absent)

    storage.write_bytes = write  # type: ignore[method-assign]
    generate_shard(cfg, p, 0, storage, load_backend("mock/echo"))
    assert _texts(storage) == {"second"}, "the committed manifest describes the second task's answers"
    manifests = [k for k in storage.list("mt_bench/shards/m/") if k.endswith(".manifest.json")]
    assert len(storage.list("mt_bench/shards/m/")) == 2 and len(manifests) == 1
