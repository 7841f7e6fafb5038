"""Issue 12 (generate side): shards are reused only for the same model, failures are never
answers, sampled hf answers do not depend on their batch, truncation stays visible."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from job.backends import load_backend
from job.errors import JobError
from job.generate import GenerateConfig, ShardPlan, generate_shard, pending_shards, plan
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


def _race_plan(uri: str, bench_data: Path) -> tuple[GenerateConfig, ShardPlan, Storage]:
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


# --- the shard config hash includes the model's identity ---


def _gen_args(shared: Path, out: Path, model: str, *extra: str, qid: str = "81") -> list[str]:
    """81 is a writing question (T=0.7), 101 a reasoning one (greedy)."""
    return [
        "generate", "--bench", "mt_bench", "--bench-data", str(shared), "--model", model,
        "--model-name", "m", "--question-ids", qid, "--max-new-tokens", "4", "--output", str(out), *extra,
    ]  # fmt: skip


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "mt_bench/shards/m/shard-00000-of-00001.manifest.json").read_text())


def test_an_overwritten_checkpoint_is_generated_again(
    run_job, tiny_model: Path, shared_bench_data: Path, tmp_path: Path
) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "runs"
    shutil.copytree(tiny_model, ckpt)
    args = _gen_args(shared_bench_data, out, f"hf/{ckpt}")
    assert run_job(*args).returncode == 0
    first = _manifest(out)["sampling"]["model_fingerprint"]
    assert first["kind"] == "local" and first["path"] == str(ckpt.resolve()) and first["files"] >= 4
    again = run_job(*args)
    assert again.returncode == 0 and "already complete" in again.stderr, "same inputs: reused"
    # a byte-identical copy with a new mtime (re-copied to node scratch) is the same model
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes())
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert "already complete" in run_job(*args).stderr
    # the next training step saved over the same directory (new weights, same size, same spec):
    # one mantissa bit of the last tensor's data (the digest reads the first and last MiB)
    data = bytearray(weights.read_bytes())
    data[-4] ^= 1
    weights.write_bytes(bytes(data))
    res = run_job(*args)
    assert res.returncode == 0, res.stderr
    assert "already complete" not in res.stderr
    line = next(x for x in res.stderr.splitlines() if "regenerating" in x)
    second = _manifest(out)["sampling"]["model_fingerprint"]
    assert "the model changed" in line and first["sha256"] in line and second["sha256"] in line
    assert second["sha256"] != first["sha256"]
    # a changed chat template in the checkpoint is another model too
    cfg = ckpt / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace("<|im_start|>", "<|im_start|> "))
    assert "regenerating" in run_job(*args).stderr


def test_a_hub_model_is_identified_by_its_cached_revision(
    tmp_path: Path, shared_bench_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    refs = tmp_path / "hub/models--org--chat/refs"
    refs.mkdir(parents=True)

    def config_hash(commit: str) -> tuple[str, dict[str, Any]]:
        (refs / "main").write_text(commit)
        cfg = GenerateConfig(
            bench="mt_bench",
            model="hf/org/chat",
            first_n=1,
            output=str(tmp_path),
            bench_data=str(shared_bench_data),
        )
        p = plan(cfg)
        return p.config_hash, p.run_config["model_fingerprint"]

    h1, fp = config_hash("a" * 40)
    assert fp == {"kind": "hub", "id": "org/chat", "revision": "a" * 40}
    h2, _ = config_hash("b" * 40)
    assert h1 != h2, "a new push to the hub id is another model"
    assert config_hash("a" * 40)[0] == h1


# --- greedy dedupe only where it is exact ---


def test_greedy_dedupe_is_off_for_api_models_and_on_for_local_ones(
    make_openai_server, run_job, shared_bench_data: Path, tmp_path: Path
) -> None:
    srv = make_openai_server()
    base = ["--num-choices", "3", "--base-url", srv.url]
    env = {"OPENAI_API_KEY": "sk-test"}
    res = run_job(
        *_gen_args(shared_bench_data, tmp_path / "a", "openai/test-model", *base, qid="101"), env=env
    )
    assert res.returncode == 0, res.stderr
    assert len(srv.requests) == 3 * 2, "every choice asks the API: its temperature-0 replies vary"
    assert _manifest(tmp_path / "a")["sampling"]["dedupe_greedy"] is False
    forced = [*base, "--dedupe-greedy"]
    res = run_job(
        *_gen_args(shared_bench_data, tmp_path / "b", "openai/test-model", *forced, qid="101"), env=env
    )
    assert res.returncode == 0, res.stderr
    assert len(srv.requests) == 6 + 2 and _manifest(tmp_path / "b")["sampling"]["dedupe_greedy"] is True
    local = run_job(*_gen_args(shared_bench_data, tmp_path / "c", "mock/echo", qid="101"))
    assert local.returncode == 0 and _manifest(tmp_path / "c")["sampling"]["dedupe_greedy"] is True
    # the choice is part of the config hash: a shard made with the other setting is not reused
    other = run_job(
        *_gen_args(shared_bench_data, tmp_path / "c", "mock/echo", "--no-dedupe-greedy", qid="101")
    )
    assert other.returncode == 2 and "different run" in other.stderr


# --- truncation is visible ---


def test_finish_reasons_survive_reduce_and_truncation_is_warned(
    run_job, tiny_model: Path, shared_bench_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    assert (
        run_job(*_gen_args(shared_bench_data, out, f"hf/{tiny_model}", "--num-choices", "2")).returncode == 0
    )
    res = run_job("reduce", "--bench", "mt_bench", "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert "m: 4 of 4 turns (100%) stopped at --max-new-tokens" in res.stderr
    raw = [json.loads(x) for x in (out / "mt_bench/model_answer/m.jsonl").read_text().splitlines()]
    assert [c["finish_reasons"] for c in raw[0]["choices"]] == [["length", "length"]] * 2
    summary = json.loads((out / "mt_bench/model_answer/m.manifest.json").read_text())
    assert (summary["turns_truncated"], summary["turns_with_finish_reason"]) == (4, 4)
    # answers that end on their own: no warning
    echo = tmp_path / "echo"
    assert run_job(*_gen_args(shared_bench_data, echo, "mock/echo")).returncode == 0
    res = run_job("reduce", "--bench", "mt_bench", "--output", str(echo))
    assert res.returncode == 0 and "max-new-tokens" not in res.stderr


# --- per-item reproducibility and failures of the hf backend, through the CLI ---


@pytest.mark.slow  # several hf generate runs: ~50 s loaded
def test_sampled_hf_answers_are_the_same_for_any_shard_count_or_batch_size(
    run_job, tiny_model: Path, shared_bench_data: Path, tmp_path: Path
) -> None:
    def answers(name: str, *extra: str) -> list[Answer]:
        out = tmp_path / name
        args = _gen_args(
            shared_bench_data, out, f"hf/{tiny_model}", "--num-choices", "2", *extra, qid="81-83,101"
        )
        res = run_job(*args)
        assert res.returncode == 0, res.stderr
        assert run_job("reduce", "--bench", "mt_bench", "--output", str(out)).returncode == 0
        path = out / "mt_bench/model_answer/m.jsonl"
        return parse_records(path.read_bytes(), Answer, str(path))

    one = answers("one")
    assert len({tuple(c.turns) for c in one[0].choices}) == 2, "writing is sampled: the choices differ"
    for name, extra in [
        ("three", ["--num-shards", "3"]),
        ("b1", ["--batch-size", "1"]),
        ("tb", ["--token-budget", "64"]),
    ]:
        assert [a.choices for a in answers(name, *extra)] == [a.choices for a in one], name


def test_an_hf_run_whose_every_request_fails_exits_non_zero(
    run_job, tiny_model: Path, shared_bench_data: Path, tmp_path: Path
) -> None:
    template = tmp_path / "no-system.jinja"
    template.write_text(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "<|im_start|>assistant\n"
    )
    out = tmp_path / "runs"
    extra = ["--chat-template", str(template), "--system-prompt", "Be brief."]
    res = run_job(*_gen_args(shared_bench_data, out, f"hf/{tiny_model}", *extra))
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert "all 1 conversations failed" in last and "System role not supported" in last
    assert not list(out.glob("mt_bench/shards/m/*"))


def test_an_api_run_whose_every_request_fails_exits_non_zero(
    make_openai_server, run_job, shared_bench_data: Path, tmp_path: Path
) -> None:
    srv = make_openai_server(faults=lambda body, n: "500")
    out = tmp_path / "runs"
    args = _gen_args(shared_bench_data, out, "openai/test-model", "--base-url", srv.url, "--max-retries", "0")
    res = run_job(*args, env={"OPENAI_API_KEY": "sk-test"})
    assert res.returncode == 2, res.stderr
    assert "all 1 conversations failed" in res.stderr.strip().splitlines()[-1]
    assert srv.requests and not list(out.glob("mt_bench/shards/m/*"))
