"""End to end through the real CLI: `job generate` as 3 shards + `job reduce`, on the real
mt_bench and japanese_mt_bench questions, with the tiny hf model and the mock backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from job.backends.mock import conversation_digest
from job.records import Answer, Question, ShardItem, ShardManifest, parse_records

N_QUESTIONS = 8


def _questions(shared: Path, bench: str) -> list[Question]:
    return parse_records((shared / bench / "question.jsonl").read_bytes(), Question, "q")[:N_QUESTIONS]


def _answers(out: Path, bench: str, model: str) -> list[Answer]:
    path = out / bench / "model_answer" / f"{model}.jsonl"
    return parse_records(path.read_bytes(), Answer, str(path))


@pytest.mark.parametrize("bench", ["mt_bench", "japanese_mt_bench"])
def test_three_shards_then_reduce_with_tiny_hf_model(
    run_job, tiny_model: Path, shared_bench_data: Path, tmp_path: Path, bench: str
) -> None:
    out = tmp_path / "runs"
    common = [
        "--bench",
        bench,
        "--bench-data",
        str(shared_bench_data),
        "--model",
        f"hf/{tiny_model}",
        "--model-name",
        "tiny",
        "--first-n",
        str(N_QUESTIONS),
        "--num-choices",
        "2",
        "--max-new-tokens",
        "12",
        "--output",
        str(out),
        "--num-shards",
        "3",
    ]
    for i in range(3):
        res = run_job("generate", *common, "--shard-index", str(i))
        assert res.returncode == 0, res.stderr
        assert f"shard {i + 1}/3" in res.stderr
    res = run_job("reduce", "--bench", bench, "--output", str(out))
    assert res.returncode == 0, res.stderr

    answers = _answers(out, bench, "tiny")
    questions = _questions(shared_bench_data, bench)
    assert [a.question_id for a in answers] == sorted(q.question_id for q in questions)
    for a in answers:
        assert len(a.answer_id) == 22 and a.model_id == "tiny" and a.tstamp > 0
        assert [c.index for c in a.choices] == [0, 1]
        assert all(len(c.turns) == 2 and all(isinstance(t, str) for t in c.turns) for c in a.choices)
        # FastChat's format exactly: no status fields on successful choices
        raw = a.model_dump(mode="json", exclude_none=True)
        assert set(raw) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    # greedy categories give identical choices (one generation copied, as Swallow-instruct does)
    cats = {q.question_id: q.category for q in questions}
    for a in answers:
        if cats[a.question_id] in ("math", "coding", "reasoning", "extraction"):
            assert a.choices[0].turns == a.choices[1].turns

    manifests = sorted((out / bench / "shards" / "tiny").glob("*.manifest.json"))
    assert len(manifests) == 3
    ms = [ShardManifest.model_validate_json(p.read_bytes()) for p in manifests]
    assert sum(m.num_items for m in ms) == N_QUESTIONS * 2
    assert {m.config_hash for m in ms} == {ms[0].config_hash}
    assert all(m.tokens_generated > 0 and m.package_version and m.bench_data_sha256 for m in ms)
    assert ms[0].sampling["max_new_tokens"] == 12

    # reduce is deterministic: same ids and bytes apart from nothing
    before = (out / bench / "model_answer" / "tiny.jsonl").read_bytes()
    assert run_job("reduce", "--bench", bench, "--output", str(out)).returncode == 0
    assert (out / bench / "model_answer" / "tiny.jsonl").read_bytes() == before


def test_japanese_text_survives_byte_exact(run_job, shared_bench_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    res = run_job(
        "generate",
        "--bench",
        "japanese_mt_bench",
        "--bench-data",
        str(shared_bench_data),
        "--model",
        "mock/echo",
        "--first-n",
        "5",
        "--output",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert run_job("reduce", "--bench", "japanese_mt_bench", "--output", str(out)).returncode == 0
    raw = (out / "japanese_mt_bench/model_answer/echo.jsonl").read_bytes()
    raw.decode("utf-8")  # valid UTF-8
    questions = _questions(shared_bench_data, "japanese_mt_bench")[:5]
    for q in questions:
        # written unescaped (no \\uXXXX): the exact UTF-8 bytes of the JSON-quoted text
        assert json.dumps(q.turns[0], ensure_ascii=False)[1:-1].encode("utf-8") in raw
    for a, q in zip(_answers(out, "japanese_mt_bench", "echo"), questions, strict=True):
        assert a.choices[0].turns == [f"echo: {q.turns[0]}", f"echo: {q.turns[1]}"]


def test_turn_two_carries_each_conversations_own_turn_one(
    run_job, shared_bench_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    res = run_job(
        "generate",
        "--bench",
        "mt_bench",
        "--bench-data",
        str(shared_bench_data),
        "--model",
        "mock/digest",
        "--first-n",
        "3",
        "--num-choices",
        "2",
        "--output",
        str(out),
        "--system-prompt",
        "Be brief.",
    )
    assert res.returncode == 0, res.stderr
    assert run_job("reduce", "--bench", "mt_bench", "--output", str(out)).returncode == 0
    for a, q in zip(
        _answers(out, "mt_bench", "digest"), _questions(shared_bench_data, "mt_bench"), strict=False
    ):
        for c in a.choices:
            t1 = conversation_digest([{"role": "user", "content": q.turns[0]}])
            assert c.turns[0] == t1
            assert c.turns[1] == conversation_digest(
                [
                    {"role": "user", "content": q.turns[0]},
                    {"role": "assistant", "content": t1},
                    {"role": "user", "content": q.turns[1]},
                ]
            )


def test_shard_from_env_and_rerun_is_a_noop(run_job, shared_bench_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    base = [
        "generate",
        "--bench",
        "mt_bench",
        "--bench-data",
        str(shared_bench_data),
        "--first-n",
        "5",
        "--output",
        str(out),
    ]
    # Slurm array task 1 of 2 (array started at 1), model from JOB_MODEL
    env = {
        "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_COUNT": "2",
        "JOB_MODEL": "mock/echo",
    }
    res = run_job(*base, env=env)
    assert res.returncode == 0, res.stderr
    shard = out / "mt_bench/shards/echo/shard-00001-of-00002.jsonl"
    assert shard.is_file() and not (out / "mt_bench/shards/echo/shard-00000-of-00002.jsonl").exists()
    items = parse_records(shard.read_bytes(), ShardItem, str(shard))
    assert [i.question_id for i in items] == [84, 85]  # 5 items: shard 0 gets 3, shard 1 gets 2
    mtime = shard.stat().st_mtime_ns
    res = run_job(*base, env=env)
    assert res.returncode == 0 and "already complete" in res.stderr
    assert shard.stat().st_mtime_ns == mtime
    # reduce names the missing shard 0 and its items
    res = run_job("reduce", "--bench", "mt_bench", "--output", str(out))
    assert res.returncode == 2
    assert "shards 0 of 2 not committed" in res.stderr and "81/choice 0" in res.stderr
    assert not (out / "mt_bench/model_answer/echo.jsonl").exists()
    # Kubernetes Indexed Job pod 0 completes the set
    res = run_job(*base, env={"JOB_COMPLETION_INDEX": "0", "JOB_NUM_SHARDS": "2", "JOB_MODEL": "mock/echo"})
    assert res.returncode == 0, res.stderr
    assert run_job("reduce", "--bench", "mt_bench", "--output", str(out)).returncode == 0
    assert len(_answers(out, "mt_bench", "echo")) == 5


def test_crashed_shard_without_manifest_is_regenerated(
    run_job, shared_bench_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    args = [
        "generate",
        "--bench",
        "mt_bench",
        "--bench-data",
        str(shared_bench_data),
        "--first-n",
        "2",
        "--model",
        "mock/echo",
        "--output",
        str(out),
    ]
    shard = out / "mt_bench/shards/echo/shard-00000-of-00001.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_text('{"question_id": 81, "choice": 0, "turns": ["partial', "utf-8")  # a torn write
    assert (
        run_job("reduce", "--bench", "mt_bench", "--output", str(out)).returncode == 2
    )  # no manifest: not committed
    assert run_job(*args).returncode == 0
    assert run_job("reduce", "--bench", "mt_bench", "--output", str(out)).returncode == 0
    assert len(_answers(out, "mt_bench", "echo")) == 2


def test_sampled_choices_are_deterministic_per_seed(
    run_job, tiny_model: Path, shared_bench_data: Path, tmp_path: Path
) -> None:
    def gen(out: Path) -> list[Answer]:
        res = run_job(
            "generate",
            "--bench",
            "mt_bench",
            "--bench-data",
            str(shared_bench_data),
            "--model",
            f"hf/{tiny_model}",
            "--model-name",
            "t",
            "--question-ids",
            "81,82",
            "--num-choices",
            "3",
            "--max-new-tokens",
            "8",
            "--output",
            str(out),
        )
        assert res.returncode == 0, res.stderr
        assert run_job("reduce", "--bench", "mt_bench", "--output", str(out)).returncode == 0
        return _answers(out, "mt_bench", "t")

    a, b = gen(tmp_path / "a"), gen(tmp_path / "b")
    assert [x.choices for x in a] == [x.choices for x in b]
    # writing is sampled at T=0.7: choices differ from each other
    assert len({tuple(c.turns) for c in a[0].choices}) > 1


def test_failed_conversations_are_recorded_not_answered(
    run_job, shared_bench_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    script = tmp_path / "replies.json"
    # calls in order: 81 turn 1 ok, 82 turn 1 fails, 81 turn 2 ok
    script.write_text(json.dumps(["first", {"error": "upstream 500"}, "second"]))
    res = run_job(
        "generate",
        "--bench",
        "mt_bench",
        "--bench-data",
        str(shared_bench_data),
        "--first-n",
        "2",
        "--model",
        f"mock/script:{script}",
        "--model-name",
        "fail",
        "--output",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "mt_bench/shards/fail/shard-00000-of-00001.manifest.json").read_text())
    assert manifest["num_failed"] == 1
    res = run_job("reduce", "--bench", "mt_bench", "--output", str(out))
    assert res.returncode == 2 and "1 conversations failed" in res.stderr and "--allow-failed" in res.stderr
    res = run_job("reduce", "--bench", "mt_bench", "--output", str(out), "--allow-failed")
    assert res.returncode == 0
    a = _answers(out, "mt_bench", "fail")
    assert a[0].choices[0].status is None and a[0].choices[0].turns == ["first", "second"]
    assert a[1].choices[0].status == "api_error" and a[1].choices[0].turns == []


def test_a_shard_where_every_request_failed_exits_non_zero_and_writes_nothing(
    run_job, shared_bench_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    args = ["--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--first-n", "2"]
    res = run_job("generate", *args, "--model", "mock/fail", "--output", str(out))
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: shard 1/1: all 2 conversations failed") and "mock/fail" in last
    assert not (out / "mt_bench/shards/fail").exists() or not list((out / "mt_bench/shards/fail").iterdir())


def test_dry_run_prints_plan_and_loads_nothing(run_job, shared_bench_data: Path, tmp_path: Path) -> None:
    res = run_job(
        "generate",
        "--bench",
        "japanese_mt_bench",
        "--bench-data",
        str(shared_bench_data),
        "--model",
        "hf/./does-not-exist",
        "--num-choices",
        "5",
        "--num-shards",
        "4",
        "--dry-run",
        "--output",
        str(tmp_path / "o"),
    )
    assert res.returncode == 0, res.stderr
    assert "80 questions x 5 choices = 400 conversations" in res.stdout
    assert "model fingerprint: ./does-not-exist; greedy dedupe on" in res.stdout
    assert res.stdout.count("conversations [") == 4 and "shard 4/4 (index 3): 100 conversations" in res.stdout
    assert not (tmp_path / "o").exists()
