"""Reuse keys of generation (and of a judge's inputs): a stored shard or judgment is reused
exactly when it was made with the same outputs-deciding inputs. Checkpoints here are fake
folders (config + weight bytes): the fingerprint reads files only, and the answers come
from mock backends, so every test runs in-process in well under a second."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from job.backends import load_backend
from job.backends.fingerprint import endpoint_of
from job.errors import JobError
from job.generate import GenerateConfig, ShardPlan, generate_shard, pending_shards, plan
from job.generate.plan import backend_options, print_plan
from job.judge.plan import JudgeConfig, make_plan
from job.provenance import stable_hash
from job.records import Answer, parse_records
from job.reduce import ReduceConfig
from job.reduce import run as reduce_run
from job.storage import open_storage

SHARD = "mt_bench/shards/m/shard-00000-of-00001"


def _ckpt(path: Path, weights: bytes = b"\x01" * 64, **extra: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(weights)
    for name, data in extra.items():
        (path / name.replace("_", ".")).write_bytes(data)
    return path


def _plan(
    bench_data: Path, out: Path | str, model: str, n: int = 1, **options: Any
) -> tuple[GenerateConfig, ShardPlan]:
    cfg = GenerateConfig(
        bench="mt_bench", model=model, model_name="m", first_n=2, output=str(out),
        bench_data=str(bench_data), num_shards=n, backend_options=options,
    )  # fmt: skip
    return cfg, plan(cfg)


def _generate(cfg: GenerateConfig, p: ShardPlan, backend: str = "mock/echo") -> None:
    storage = open_storage(cfg.output)
    for i in pending_shards(cfg, p, storage)[0]:
        generate_shard(cfg, p, i, storage, load_backend(backend))


def _reduced(out: Path | str) -> set[str]:
    reduce_run(ReduceConfig("mt_bench", ["m"], output=str(out)))
    data = open_storage(str(out)).read_bytes("mt_bench/model_answer/m.jsonl")
    answers = parse_records(data, Answer, "answers")
    return {t for a in answers for c in a.choices for t in c.turns}


# --- item 1: every output-changing backend option is part of the run ---


def test_a_changed_gguf_file_is_another_run(shared_bench_data: Path, tmp_path: Path) -> None:
    ckpt = _ckpt(tmp_path / "ck", q4_gguf=b"GGUF-q4", q8_gguf=b"GGUF-q8")
    out = tmp_path / "runs"
    cfg, q4 = _plan(shared_bench_data, out, f"hf/{ckpt}", gguf_file="q4.gguf")
    _generate(cfg, q4)
    cfg8, q8 = _plan(shared_bench_data, out, f"hf/{ckpt}", gguf_file="q8.gguf")
    assert q8.run_config["backend"] == {"gguf_file": "q8.gguf"}
    with pytest.raises(JobError, match=r"different run .*backend.*q4\.gguf.*q8\.gguf"):
        pending_shards(cfg8, q8, open_storage(str(out)))
    # the fingerprint covers the selected file only: the other quantization is not this model
    (ckpt / "q8.gguf").write_bytes(b"GGUF-q8, requantized")
    assert _plan(shared_bench_data, out, f"hf/{ckpt}", gguf_file="q4.gguf")[1].config_hash == q4.config_hash
    (ckpt / "q4.gguf").write_bytes(b"GGUF-q4, requantized")
    assert _plan(shared_bench_data, out, f"hf/{ckpt}", gguf_file="q4.gguf")[1].config_hash != q4.config_hash


def test_loading_options_that_change_answers_enter_the_hash(shared_bench_data: Path, tmp_path: Path) -> None:
    ckpt = _ckpt(tmp_path / "ck")
    base = _plan(shared_bench_data, tmp_path, f"vllm/{ckpt}")[1]
    assert "backend" not in base.run_config, "unset options leave the hash of older runs as it was"
    hashes = {
        _plan(shared_bench_data, tmp_path, f"vllm/{ckpt}", **opt)[1].config_hash
        for opt in (
            {"tokenizer_mode": "mistral"}, {"trust_remote_code": True}, {"dtype": "float16"}, {"max_model_len": 512},
        )
    }  # fmt: skip
    assert len(hashes | {base.config_hash}) == 5
    # options that only change speed do not
    fast = _plan(shared_bench_data, tmp_path, f"vllm/{ckpt}", batch_size=3, gpu_memory_utilization=0.5)[1]
    assert fast.config_hash == base.config_hash


# --- item 6: the endpoint of an API model ---


def test_the_base_url_is_recorded_not_part_of_the_run_and_no_secret_is_recorded(
    make_openai_server: Any,
    shared_bench_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    one, two = make_openai_server(), make_openai_server()
    out = tmp_path / "runs"
    cfg, p = _plan(shared_bench_data, out, "openai/test-model", base_url=one.url)
    generate_shard(cfg, p, 0, open_storage(str(out)), load_backend(cfg.model, **backend_options(cfg)))
    assert one.requests and not two.requests
    # the same server restarted on another port (a requeue onto another node): the same run
    cfg2, p2 = _plan(shared_bench_data, out, "openai/test-model", base_url=two.url)
    assert p2.config_hash == p.config_hash and "backend" not in p2.run_config
    todo, done = pending_shards(cfg2, p2, open_storage(str(out)))
    assert 0 not in todo and [m.shard_index for m in done] == [0]
    manifest = json.loads(next((out / "mt_bench" / "shards").rglob("*.manifest.json")).read_text())
    assert manifest["endpoint"] == one.url  # recorded where it was generated
    port = two.url.split(":")[2].split("/")[0]
    secret = f"http://user:hunter2@127.0.0.1:{port}/v1/?api_key=sk-hunter3#frag"
    cfg3, p3 = _plan(shared_bench_data, out, "openai/test-model", base_url=secret)
    assert "hunter" not in json.dumps(p3.run_config)
    assert (
        endpoint_of("openai", {"base_url": secret}) == f"http://127.0.0.1:{port}/v1"
    )  # what a manifest records
    print_plan(cfg3, p3, open_storage(str(out)))
    assert "hunter" not in capsys.readouterr().out


def _answers_for_judge(out: Path) -> None:
    cfg = GenerateConfig(bench="smoke", model="mock/echo", model_name="m", output=str(out), first_n=1)
    storage = open_storage(str(out))
    p = plan(cfg)
    generate_shard(cfg, p, 0, storage, load_backend("mock/echo"))
    reduce_run(ReduceConfig("smoke", ["m"], output=str(out)))


def _judge_inputs(out: Path, model: str, **options: Any) -> set[str]:
    cfg = JudgeConfig(bench="smoke", judge_model=model, output=str(out), first_n=1, backend_options=options)
    return set(make_plan(cfg, None, "j").inputs.values())


def test_judge_inputs_cover_loading_options_not_the_endpoint_or_the_checkpoints_place(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    _answers_for_judge(out)
    a = _judge_inputs(out, "openai/judge", base_url="http://127.0.0.1:8001/v1")
    assert a == _judge_inputs(out, "openai/judge", base_url="http://127.0.0.1:8002/v1")  # a restarted server
    assert _judge_inputs(out, "openai/judge") == a
    cfg = JudgeConfig(bench="smoke", judge_model="openai/judge", output=str(out), first_n=1,
                      backend_options={"base_url": "http://u:pw@127.0.0.1:8002/v1?key=s"})  # fmt: skip
    assert make_plan(cfg, None, "j").provenance["judge_endpoint"] == "http://127.0.0.1:8002/v1"
    ckpt = _ckpt(tmp_path / "judge", q4_gguf=b"q4", q8_gguf=b"q8")
    q4 = _judge_inputs(out, f"hf/{ckpt}", gguf_file="q4.gguf")
    assert q4 != _judge_inputs(out, f"hf/{ckpt}", gguf_file="q8.gguf")
    assert q4 != _judge_inputs(out, f"hf/{ckpt}", gguf_file="q4.gguf", trust_remote_code=True)
    copy = tmp_path / "scratch" / "judge"
    shutil.copytree(ckpt, copy, copy_function=shutil.copy)  # new mtimes, another path
    assert _judge_inputs(out, f"hf/{copy}", gguf_file="q4.gguf") == q4


# --- item 2: a hub revision that the cache learns after the first download ---


def _hub_plan(
    bench_data: Path, out: Path, refs: Path, commit: str | None, n: int = 1
) -> tuple[GenerateConfig, ShardPlan]:
    if commit:
        refs.mkdir(parents=True, exist_ok=True)
        (refs / "main").write_text(commit)
    cfg, p = _plan(bench_data, out, "hf/org/chat", n)
    assert p.run_config["model_fingerprint"]["revision"] == commit
    return cfg, p


def test_an_unknown_hub_revision_matches_the_one_learnt_later(
    shared_bench_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    refs, out = tmp_path / "hub/models--org--chat/refs", tmp_path / "runs"
    cfg, p = _hub_plan(shared_bench_data, out, refs, None, n=2)
    storage = open_storage(str(out))
    generate_shard(cfg, p, 0, storage, load_backend("mock/echo"))  # the cache was empty then
    cfg, p = _hub_plan(shared_bench_data, out, refs, "a" * 40, n=2)  # a requeued task, after the download
    assert pending_shards(cfg, p, storage)[0] == [1], "shard 0 is reused, not regenerated"
    generate_shard(cfg, p, 1, storage, load_backend("mock/echo"))
    assert all(t.startswith("echo: ") for t in _reduced(out)), "reduce takes None and the commit as one run"
    # two known commits are two models: the shard of the other is regenerated, reduce refuses a mix
    cfg, p = _hub_plan(shared_bench_data, out, refs, "b" * 40, n=2)
    todo, _ = pending_shards(cfg, p, storage)
    assert todo == [1]  # shard 0 has no commit: it may be either
    generate_shard(cfg, p, 1, storage, load_backend("mock/echo"))
    cfg, p = _hub_plan(shared_bench_data, out, refs, "a" * 40, n=2)
    assert pending_shards(cfg, p, storage)[0] == [1]


def test_reduce_refuses_shards_of_two_known_revisions(
    shared_bench_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    refs, out = tmp_path / "hub/models--org--chat/refs", tmp_path / "runs"
    storage = open_storage(str(out))
    for i, commit in enumerate(("a" * 40, "b" * 40)):
        cfg, p = _hub_plan(shared_bench_data, out, refs, commit, n=2)
        generate_shard(cfg, p, i, storage, load_backend("mock/echo"))
    with pytest.raises(JobError, match="different runs"):
        _reduced(out)


# --- item 7: a copy of the checkpoint is the same model ---


def test_a_checkpoint_copied_to_node_scratch_is_the_same_model(
    shared_bench_data: Path, tmp_path: Path
) -> None:
    ckpt, out = _ckpt(tmp_path / "shared/ck"), tmp_path / "runs"
    cfg, p = _plan(shared_bench_data, out, f"hf/{ckpt}", n=2)
    storage = open_storage(str(out))
    generate_shard(cfg, p, 0, storage, load_backend("mock/echo"))
    scratch = tmp_path / "tmpdir-task1/ck"
    shutil.copytree(ckpt, scratch, copy_function=shutil.copy)  # another path, new mtimes
    cfg1, p1 = _plan(shared_bench_data, out, f"hf/{scratch}", n=2)
    assert p1.config_hash == p.config_hash
    assert p1.run_config["model_fingerprint"]["path"] == str(scratch.resolve()), "kept for display"
    assert pending_shards(cfg1, p1, storage)[0] == [1]
    generate_shard(cfg1, p1, 1, storage, load_backend("mock/echo"))
    assert _reduced(out)
    # other weights of the same size are another model
    (scratch / "model.safetensors").write_bytes(b"\x02" * 64)
    assert _plan(shared_bench_data, out, f"hf/{scratch}", n=2)[1].config_hash != p.config_hash


# --- item 8: the old shard stays valid until the new one is committed ---


@pytest.fixture(params=["local", "s3"])
def out_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "runs")
    return str(request.getfixturevalue("s3").uri("runs"))


def test_a_failed_regeneration_keeps_the_old_shard(
    shared_bench_data: Path, tmp_path: Path, out_uri: str
) -> None:
    ckpt, out = _ckpt(tmp_path / "ck"), out_uri
    cfg, p = _plan(shared_bench_data, out, f"hf/{ckpt}")
    _generate(cfg, p, "mock/fixed:old")
    (ckpt / "model.safetensors").write_bytes(b"\x03" * 64)  # the next training step
    cfg, p = _plan(shared_bench_data, out, f"hf/{ckpt}")
    storage = open_storage(str(out))
    assert pending_shards(cfg, p, storage)[0] == [0]
    with pytest.raises(JobError, match="conversations failed"):
        generate_shard(cfg, p, 0, storage, load_backend("mock/fail"))
    assert _reduced(out) == {"old"}, "the old shard is still committed"
    generate_shard(cfg, p, 0, storage, load_backend("mock/fixed:new"))
    assert _reduced(out) == {"new"}
    left = storage.list("mt_bench/shards/m/")
    assert len(left) == 2 and f"{SHARD}.manifest.json" in left, "the replaced answers are deleted"
    assert pending_shards(cfg, p, storage)[0] == []


# --- item 14: shards of older versions resume ---


def _as_written_by_3eea5b8(out: Path) -> None:
    """The manifest as 3eea5b8 wrote it: no model_fingerprint, dedupe_greedy, data_file."""
    path = out / f"{SHARD}.manifest.json"
    m = json.loads(path.read_text())
    for key in ("model_fingerprint", "dedupe_greedy"):
        m["sampling"].pop(key)
    m.pop("data_file")
    m["config_hash"] = stable_hash(m["sampling"])
    path.write_text(json.dumps(m))


def test_a_shard_of_an_older_version_is_reused(shared_bench_data: Path, tmp_path: Path) -> None:
    ckpt, out = _ckpt(tmp_path / "ck"), tmp_path / "runs"
    cfg, p = _plan(shared_bench_data, out, f"hf/{ckpt}")
    _generate(cfg, p)
    _as_written_by_3eea5b8(out)
    assert pending_shards(cfg, p, open_storage(str(out)))[0] == []
    assert _reduced(out)
    # the old default (greedy answers copied) is not the API default: that stays another run
    api, ap = _plan(shared_bench_data, tmp_path / "api", "openai/test-model")
    _generate(api, ap)
    _as_written_by_3eea5b8(tmp_path / "api")
    with pytest.raises(JobError, match="dedupe_greedy true -> false"):
        pending_shards(api, ap, open_storage(str(tmp_path / "api")))


# --- item 15: an unreadable checkpoint folder ---


def test_an_unreadable_checkpoint_is_a_one_line_error(
    shared_bench_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = _ckpt(tmp_path / "ck")

    def denied(self: Path) -> Any:  # as for a non-root user after chmod 000 (tests run as root)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(JobError, match=rf"^{ckpt}: cannot read the model checkpoint \(Permission denied\)"):
        _plan(shared_bench_data, tmp_path, f"hf/{ckpt}")
