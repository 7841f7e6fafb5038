"""SIGKILL `job generate`, `job judge` and `job reduce` at seeded random points (no cleanup
can run), then re-run: no duplicate, missing or partial record in shard files, manifests,
the merged answer file or the judgment file, and nothing stored is asked for again.

A random point of an API run: the test server answers a seeded number of requests and
holds the rest (hold_after), the kill comes a seeded moment later, while the replies
already sent are being recorded, and the run cannot have finished before it, however
loaded the machine is."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from servers.openai_server import OpenAIServer

from faults.jobproc import (
    API_ENV,
    RERUN_ENV,
    RERUN_KEY,
    Shards,
    asked_by,
    check_answers,
    check_judgments,
    check_shards,
    distinct_answers,
    jsonl,
    judgment_key,
    kill,
    many_shards_fixture,  # noqa: F401 - the many_shards fixture
    reduce_under_signal,
    seeded_reply,
    spawn,
    wait_held,
    wait_until,
)

MakeServer = Any
# JOB_TEST_FAULT_SEEDS=20 for a longer soak of the same tests
SEEDS = list(range(int(os.environ.get("JOB_TEST_FAULT_SEEDS", "3"))))


def _gen_args(out: Path, url: str, *extra: str) -> list[str]:
    return ["generate", "--bench", "smoke", "--model", "openai/test-model", "--base-url", url,
            "--num-choices", "2", "--num-shards", "4", "--no-dedupe-greedy", "--concurrency", "2",
            "--output", str(out), *extra]  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_generate_then_rerun(
    seed: int, make_openai_server: MakeServer, run_job: Any, job_env: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(seed)
    # 4 shards, 18 conversations x 2 turns: kill after 0..35 replies (a shard boundary is at 12)
    m = rng.randint(0, 35)
    srv: OpenAIServer = make_openai_server(reply=seeded_reply, latency=0.05, hold_after=m)
    out = tmp_path / "runs"
    env = {**job_env, **API_ENV}
    log = tmp_path / "gen.log"
    proc = spawn(_gen_args(out, srv.url), env, log)
    wait_held(srv, m, 1, proc, log)
    wait_until(lambda: False, rng.uniform(0.0, 0.2), proc)
    kill(proc)
    assert proc.returncode == -signal.SIGKILL
    committed, orphans = check_shards(out, "smoke", "test-model")
    srv.release()
    r = run_job(*_gen_args(out, srv.url), env=RERUN_ENV)
    assert r.returncode == 0, r.stderr
    done, orphans = check_shards(out, "smoke", "test-model")
    assert done == {0, 1, 2, 3} and not orphans
    # committed shards were kept, not regenerated: the re-run asked only for the others
    manifests = {i: (out / f"smoke/shards/test-model/shard-{i:05d}-of-00004.manifest.json") for i in done}
    todo_items = sum(len(jsonl(manifests[i].with_name(manifests[i].name.replace(".manifest.json", ".jsonl"))))
                     for i in done - committed)  # fmt: skip
    assert asked_by(srv, RERUN_KEY) == 2 * todo_items
    r = run_job("reduce", "--bench", "smoke", "--output", str(out))
    assert r.returncode == 0, r.stderr
    rows = check_answers(out, "smoke", "test-model", 9, 2)
    assert all(len(c["turns"]) == 2 and all(c["turns"]) for a in rows for c in a["choices"])


def _games(rec: dict[str, Any]) -> int:
    return 2 if "model_1" in rec else 1


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("seed", "mode"), [(s, "pairwise-all" if s % 3 == 1 else "single") for s in SEEDS])
def test_sigkill_judge_twice_then_rerun(
    seed: int,
    mode: str,
    make_openai_server: MakeServer,
    run_job: Any,
    job_env: dict[str, str],
    tmp_path: Path,
) -> None:
    rng = random.Random(seed)
    out = tmp_path / "runs"
    gen = make_openai_server(reply=seeded_reply)
    distinct_answers(run_job, out, gen.url, "model-a")
    if mode != "single":
        distinct_answers(run_job, out, gen.url, "model-b")
    expected = 36  # single: 9 q x 2 turns x 2 choices; pairwise-all (2 models): as many pairs
    srv = make_openai_server(reply=lambda b: "[[A]] Rating: [[7]]", latency=0.1, jitter=0.05, seed=seed)
    args = ["judge", "--bench", "smoke", "--output", str(out), "--judge-model", "openai/test-model",
            "--base-url", srv.url, "--mode", mode, "--batch-size", str(rng.choice([1, 3, 8])),
            "--concurrency", "4"]  # fmt: skip
    name = "single" if mode == "single" else "pair"
    path = out / "smoke" / "model_judgment" / f"test-model_{name}.jsonl"
    env = {**job_env, **API_ENV}
    for attempt in range(2):  # two kills at random points, the second one resuming the first
        # at most 2 x 12 of the 36+ calls answered: each run is held before it could finish
        m, before = rng.randint(0, 12), len(srv.chat_requests)
        srv.release()  # the killed run's held requests
        srv.hold(after=before + m)
        log = tmp_path / f"judge{attempt}.log"
        proc = spawn(args, env, log)
        wait_held(srv, m, 1, proc, log, since=before)
        wait_until(lambda: False, rng.uniform(0.0, 0.3), proc)
        kill(proc)
        assert proc.returncode == -signal.SIGKILL
        check_judgments(path, expected, "partial")
    stored = check_judgments(path, expected, "partial") if path.exists() else []
    stored_games = sum(_games(x) for x in stored)
    kept = path.read_bytes() if path.exists() else b""
    srv.release()
    r = run_job(*args, env=RERUN_ENV)
    assert r.returncode == 0, r.stderr
    rows = check_judgments(path, expected, "final")
    assert path.read_bytes().startswith(kept[: kept.rfind(b"\n") + 1])  # nothing stored was lost
    assert len(rows) == expected  # no duplicate rows at all (no faults: every stored row is final)
    total_games = sum(_games(x) for x in rows)
    assert asked_by(srv, RERUN_KEY) == total_games - stored_games  # stored games not asked again
    assert Counter(judgment_key(x) for x in rows).most_common(1)[0][1] == 1


@pytest.mark.timeout(120)
def test_sigkill_reduce_then_rerun(
    many_shards: Shards, job_env: dict[str, str], run_job: Any, tmp_path: Path
) -> None:
    codes = [
        reduce_under_signal(signal.SIGKILL, seed, many_shards, job_env, run_job, tmp_path / str(seed))[0]
        for seed in SEEDS
    ]
    assert -signal.SIGKILL in codes  # at least one kill landed inside a reduce's run
