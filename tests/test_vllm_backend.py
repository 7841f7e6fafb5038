"""vLLM backend against a fake `vllm` module that records every engine call, plus a
real-vLLM test for machines with a GPU (marked `gpu`, excluded from CI)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from job.backends import load_backend
from job.backends.base import GenRequest, SamplingParams
from job.backends.smoke_model import CHAT_TEMPLATE
from job.errors import JobError
from job.generate import GenerateConfig, run

FAKES = Path(__file__).parent / "fakes"


def use_fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Put tests/fakes first on sys.path so `import vllm` finds the recording fake."""

    def ours() -> list[str]:
        return [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]

    for name in ours():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "job.backends.vllm", raising=False)
    monkeypatch.syspath_prepend(str(FAKES))
    import vllm

    assert getattr(vllm, "FAKE", False)
    vllm.CALLS.clear()
    yield vllm
    # forget the fake, so a later test (the gpu one) imports the real vllm
    for name in ours():
        del sys.modules[name]


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    yield from use_fake_vllm(monkeypatch)


def _generate_calls(vllm: Any) -> list[dict[str, Any]]:
    return [c for c in vllm.CALLS if c["event"] == "generate"]


def test_engine_args_are_passed_exactly(fake_vllm: Any, tiny_model: Path) -> None:
    load_backend(
        f"vllm/{tiny_model}",
        tensor_parallel_size=2,
        dtype="bfloat16",
        max_model_len=2048,
        gpu_memory_utilization=0.5,
        enforce_eager=True,
        device="cuda",  # an hf option: ignored
    )
    init = fake_vllm.CALLS[0]
    assert init == {
        "event": "init",
        "model": str(tiny_model),
        "tensor_parallel_size": 2,
        "dtype": "bfloat16",
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.5,
        "enforce_eager": True,
        "trust_remote_code": False,
    }


def test_defaults_leave_context_to_model_and_remote_code_off(fake_vllm: Any, tiny_model: Path) -> None:
    load_backend(f"vllm/{tiny_model}")
    init = fake_vllm.CALLS[0]
    assert "max_model_len" not in init
    assert init["trust_remote_code"] is False
    assert init["enforce_eager"] is False
    assert init["gpu_memory_utilization"] == 0.9


def test_one_engine_call_per_wave_with_per_request_sampling(
    fake_vllm: Any, tiny_model: Path, shared_bench_data: Path, tmp_path: Path
) -> None:
    # questions 81.. cover writing (0.7) and, further on, math (0.0): take a mixed set
    cfg = GenerateConfig(
        bench="mt_bench",
        model=f"vllm/{tiny_model}",
        model_name="m",
        num_choices=2,
        max_new_tokens=8,
        question_ids=["81", "111", "131"],
        output=str(tmp_path / "runs"),
        bench_data=str(shared_bench_data),
    )
    (manifest,) = run(cfg)
    calls = _generate_calls(fake_vllm)
    assert len(calls) == 2, "one engine call for turn 1 and one for turn 2"
    questions = {
        str(q["question_id"]): q
        for q in map(json.loads, (shared_bench_data / "mt_bench/question.jsonl").read_text().splitlines())
    }
    temps = {
        qid: (0.7 if questions[qid]["category"] in ("writing", "roleplay") else None) for qid in questions
    }
    for call in calls:
        sampled = [s for s in call["sampling"] if s["temperature"] > 0]
        greedy = [s for s in call["sampling"] if s["temperature"] == 0.0]
        assert all(s["max_tokens"] == 8 for s in call["sampling"])
        assert all("seed" not in s for s in greedy), "greedy requests need no seed"
        # question 81 is writing: its two choices sample with seeds 0 and 1
        assert sorted(s["seed"] for s in sampled) == [0, 1]
        assert all(s["temperature"] == 0.7 for s in sampled)
        # greedy choices of the same question are deduplicated before the engine
        assert len(call["sampling"]) == 2 + sum(1 for q in ("111", "131") if temps[q] is None)
    # prompts are the chat template of the conversation; turn 2 carries the turn-1 answer
    t1 = calls[0]["texts"]
    assert any(
        t == f"<s><|im_start|>user\n{questions['81']['turns'][0]}<|im_end|>\n<|im_start|>assistant\n"
        for t in t1
    )
    shard = (tmp_path / "runs/mt_bench/shards/m/shard-00000-of-00001.jsonl").read_text().splitlines()
    items = [json.loads(line) for line in shard]
    assert len(items) == 6 and all(i["status"] == "ok" for i in items)
    for item in items:
        first = item["turns"][0]
        assert first.startswith("fake-")
        turn2_prompts = [t for t in calls[1]["texts"] if first in t]
        assert turn2_prompts, "turn 2 must include the conversation's own turn-1 answer"
        assert set(item["finish_reasons"]) <= {"stop", "length"}
        # a deduplicated greedy copy costs no tokens; the first choice always does
        assert item["num_tokens"] > 0 or item["choice"] > 0
    assert manifest.tokens_generated == sum(i["num_tokens"] for i in items)


def test_finish_reasons_and_token_counts(fake_vllm: Any, tiny_model: Path) -> None:
    backend = load_backend(f"vllm/{tiny_model}")
    reqs = [
        GenRequest([{"role": "user", "content": f"question {i}"}], SamplingParams(0.0, max_new_tokens=6))
        for i in range(40)
    ]
    results = backend.generate(reqs)
    assert {r.finish_reason for r in results} == {"stop", "length"}
    for r in results:
        n = int(r.text.split("(")[1].split()[0])
        assert r.num_tokens == n
        assert (r.finish_reason == "length") == (n == 6)


def test_judge_requests_system_and_user(fake_vllm: Any, tiny_model: Path) -> None:
    backend = load_backend(f"vllm/{tiny_model}", system_prompt="ignored when the request has one")
    req = GenRequest(
        [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": "Rate this."}],
        SamplingParams(temperature=0.0, max_new_tokens=2048),
    )
    (res,) = backend.generate([req])
    assert res.ok and res.text.startswith("fake-")
    (call,) = _generate_calls(fake_vllm)
    assert call["sampling"] == [{"max_tokens": 2048, "temperature": 0.0}]
    assert call["texts"][0] == (
        "<s><|im_start|>system\nYou are a judge.<|im_end|>\n<|im_start|>user\nRate this.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_system_prompt_option_is_prepended(fake_vllm: Any, tiny_model: Path) -> None:
    backend = load_backend(f"vllm/{tiny_model}", system_prompt="Be brief.")
    backend.generate([GenRequest([{"role": "user", "content": "hi"}])])
    (call,) = _generate_calls(fake_vllm)
    assert call["texts"][0].startswith("<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi")


def test_missing_chat_template_is_a_clear_error(fake_vllm: Any, tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(JobError, match="no chat template; pass --chat-template"):
        load_backend(f"vllm/{bare}")
    # a template file fixes it, and is what renders the prompt
    tpl = tmp_path / "t.jinja"
    tpl.write_text(CHAT_TEMPLATE.replace("<|im_start|>", "[").replace("<|im_end|>", "]"))
    backend = load_backend(f"vllm/{bare}", chat_template=str(tpl))
    backend.generate([GenRequest([{"role": "user", "content": "hello"}])])
    assert _generate_calls(fake_vllm)[0]["texts"][0] == "<s>[user\nhello]\n[assistant\n"


def test_too_long_prompt_fails_alone(fake_vllm: Any, tiny_model: Path) -> None:
    backend = load_backend(f"vllm/{tiny_model}", max_model_len=40)
    reqs = [
        GenRequest([{"role": "user", "content": "short"}]),
        GenRequest([{"role": "user", "content": "long " * 200}]),
    ]
    ok, bad = backend.generate(reqs)
    assert ok.ok
    assert bad.status == "error" and "context is 40" in (bad.error or "")
    (call,) = _generate_calls(fake_vllm)
    assert len(call["prompts"]) == 1


def test_engine_failure_is_recorded_not_raised(
    fake_vllm: Any, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_RAISE", "1")
    backend = load_backend(f"vllm/{tiny_model}")
    results = backend.generate(
        [
            GenRequest([{"role": "user", "content": "fine"}]),
            GenRequest([{"role": "user", "content": "RAISE"}]),
        ]
    )
    assert [r.status for r in results] == ["error", "error"]
    assert all("out of memory" in (r.error or "") and r.text == "" for r in results)


def test_min_new_tokens_is_passed_as_min_tokens(fake_vllm: Any, tiny_model: Path) -> None:
    backend = load_backend(f"vllm/{tiny_model}", min_new_tokens=16)
    (res,) = backend.generate(
        [GenRequest([{"role": "user", "content": "x"}], SamplingParams(0.7, 16, seed=3))]
    )
    (call,) = _generate_calls(fake_vllm)
    assert call["sampling"] == [{"max_tokens": 16, "temperature": 0.7, "seed": 3, "min_tokens": 16}]
    assert res.num_tokens == 16 and res.finish_reason == "length"


def test_cli_passes_vllm_options(
    run_job: Any, tiny_model: Path, shared_bench_data: Path, tmp_path: Path
) -> None:
    log = tmp_path / "vllm.jsonl"
    r = run_job(
        "generate",
        "--bench", "mt_bench",
        "--bench-data", str(shared_bench_data),
        "--model", f"vllm/{tiny_model}",
        "--model-name", "v",
        "--first-n", "3",
        "--max-new-tokens", "4",
        "--output", str(tmp_path / "runs"),
        "--tensor-parallel-size", "2",
        "--max-model-len", "1024",
        "--gpu-memory-utilization", "0.6",
        "--enforce-eager",
        "--dtype", "float16",
        env={"PYTHONPATH": str(FAKES), "FAKE_VLLM_LOG": str(log)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[0] == {
        "event": "init",
        "model": str(tiny_model),
        "tensor_parallel_size": 2,
        "dtype": "float16",
        "max_model_len": 1024,
        "gpu_memory_utilization": 0.6,
        "enforce_eager": True,
        "trust_remote_code": False,
    }
    assert [e["event"] for e in events] == ["init", "generate", "generate"]
    assert len(events[1]["prompts"]) == 3


def test_judge_cli_passes_vllm_options_and_stores_every_game(
    run_job: Any, tiny_model: Path, tmp_path: Path
) -> None:
    """An open judge model on vLLM: engine options reach LLM(), one engine call per batch."""
    out, log = tmp_path / "runs", tmp_path / "vllm.jsonl"
    for stage in (("generate", "--model", "mock/echo"), ("reduce", "--model-name", "echo")):
        r = run_job(*stage, "--bench", "smoke", "--output", str(out))
        assert r.returncode == 0, r.stderr
    r = run_job(
        "judge", "--bench", "smoke", "--output", str(out),
        "--judge-model", f"vllm/{tiny_model}", "--judge-name", "vj",
        "--tensor-parallel-size", "2", "--max-model-len", "2048", "--dtype", "bfloat16",
        "--batch-size", "10",
        env={"PYTHONPATH": str(FAKES), "FAKE_VLLM_LOG": str(log)},
    )  # fmt: skip
    # every judgment failed (no rating): non-zero, yet each one is stored with its status
    assert r.returncode == 2 and "all 18 judgments" in r.stderr, r.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    init = events[0]
    assert (init["event"], init["tensor_parallel_size"], init["max_model_len"], init["dtype"]) == (
        "init", 2, 2048, "bfloat16",
    )  # fmt: skip
    assert init["trust_remote_code"] is False
    gens = [e for e in events if e["event"] == "generate"]
    rows = [json.loads(x) for x in (out / "smoke/model_judgment/vj_single.jsonl").read_text().splitlines()]
    # smoke: 9 questions x 2 turns, one game each; batches of at most 10 calls
    assert sum(len(g["prompts"]) for g in gens) == len(rows) == 18
    assert len(gens) == 2 and all(len(g["prompts"]) <= 10 for g in gens)
    # the fake's replies carry no [[rating]]: recorded as parse errors, never scores
    assert {x["status"] for x in rows} == {"parse_error"} and {x["score"] for x in rows} == {-1}


@pytest.mark.gpu
@pytest.mark.timeout(900)
def test_real_vllm_tiny_model(tmp_path: Path) -> None:
    """Real vLLM on a GPU: a tiny Llama (head dim 64, which every attention backend supports)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    real = pytest.importorskip("vllm")
    assert not getattr(real, "FAKE", False)
    from job.backends.smoke_model import build

    model = build(tmp_path / "tiny256", hidden=256)
    backend = load_backend(
        f"vllm/{model}", max_model_len=2048, gpu_memory_utilization=0.3, enforce_eager=True
    )
    try:
        reqs = [
            GenRequest([{"role": "user", "content": f"Tell me about number {i}."}], SamplingParams(0.0, 12))
            for i in range(8)
        ] + [
            GenRequest([{"role": "user", "content": "Write."}], SamplingParams(0.7, 12, seed=s))
            for s in (0, 0, 1)
        ]
        results = backend.generate(reqs)
        again = backend.generate(reqs)
    finally:
        backend.close()
    assert all(r.ok and 0 < r.num_tokens <= 12 for r in results)
    assert all(r.finish_reason in ("stop", "length") for r in results)
    # vLLM guarantees each seeded request its own random stream, not batch invariance: the same
    # request in another batch row or another call may differ unless VLLM_BATCH_INVARIANT=1
    if os.environ.get("VLLM_BATCH_INVARIANT") == "1":
        assert [r.text for r in results] == [r.text for r in again], "batch-invariant: reproducible"
        assert results[8].text == results[9].text


def test_model_sampling_defaults_apply_like_vllm_serve(
    fake_vllm: Any, tiny_model: Path, tmp_path: Path
) -> None:
    """The set vllm serve merges into a request giving only temperature and max_tokens
    (test_vllm_contract.py checks it against the real to_sampling_params)."""
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    gen = json.loads((model / "generation_config.json").read_text())
    gen.update(MODEL_DEFAULTS)
    (model / "generation_config.json").write_text(json.dumps(gen))
    backend = load_backend(f"vllm/{model}")
    backend.generate([_chat("a", 0.7, seed=1), _chat("b", 0.0)])
    sampled, greedy = _generate_calls(fake_vllm)[0]["sampling"]
    # the request's temperature and max_tokens win over the model's; the rest come from the model
    served = {"top_p": 0.9, "top_k": 20, "repetition_penalty": 1.1, "presence_penalty": 0.5,
              "frequency_penalty": 0.25, "skip_special_tokens": True}  # fmt: skip
    assert sampled == {"max_tokens": 8, **served, "temperature": 0.7, "seed": 1}
    # greedy too, as vllm serve: vLLM then drops top_p/top_k itself, the penalties stay
    assert greedy == {"max_tokens": 8, **served, "temperature": 0.0}


MODEL_DEFAULTS = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.1,
                  "presence_penalty": 0.5, "frequency_penalty": 0.25, "max_new_tokens": 256,
                  "skip_special_tokens": True}  # fmt: skip
"""A generation_config.json setting every field vLLM's get_diff_sampling_param reads."""


def _chat(text: str, temperature: float, seed: int | None = None) -> GenRequest:
    return GenRequest([{"role": "user", "content": text}], SamplingParams(temperature, 8, seed))


def test_missing_model_dir_is_a_job_error(fake_vllm: Any, tmp_path: Path) -> None:
    with pytest.raises(JobError, match="does not exist"):
        load_backend(f"vllm/{tmp_path}/nope")
    with pytest.raises(JobError, match="cannot start vLLM for model 'org/unknown'"):
        load_backend("vllm/org/unknown")


def _no_system_role(model: Path, dst: Path) -> Path:
    """A copy of the tiny model whose chat template rejects a system message (as Gemma's)."""
    import shutil

    shutil.copytree(model, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    reject = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    cfg["chat_template"] = reject + CHAT_TEMPLATE
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


def test_per_request_failures_are_failed_results_never_empty_ok(
    fake_vllm: Any, tiny_model: Path, tmp_path: Path
) -> None:
    """Each way one request fails comes back failed with its reason; the others are fine."""
    backend = load_backend(f"vllm/{_no_system_role(tiny_model, tmp_path / 'm')}", max_model_len=60)
    user = [{"role": "user", "content": "fine"}]
    cases = {
        "chat template: System role not supported": [{"role": "system", "content": "judge"}, *user],
        "the model's context is 60": [{"role": "user", "content": "long " * 100}],
        "finish_reason 'error'": [{"role": "user", "content": "<fake:finish-error>"}],
    }
    empty = [{"role": "user", "content": "<fake:empty>"}]
    results = backend.generate([GenRequest(m) for m in [*cases.values(), empty, user]])
    for (why, _), r in zip(cases.items(), results, strict=False):
        assert (r.status, r.text) == ("error", "") and why in (r.error or ""), (why, r)
    # EOS at once is an empty answer, not a failure (FastChat judges it)
    assert (results[-2].status, results[-2].text, results[-2].finish_reason) == ("ok", "", "stop")
    assert results[-1].ok and results[-1].text.startswith("fake-")


def test_engine_death_raises_backend_dead(
    fake_vllm: Any, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from job.errors import BackendDead

    backend = load_backend(f"vllm/{tiny_model}")
    req = [GenRequest([{"role": "user", "content": "hi"}])]
    assert backend.generate(req)[0].ok
    monkeypatch.setenv("FAKE_VLLM_DIE_AT", "2")
    with pytest.raises(BackendDead, match="EngineDeadError"):
        backend.generate(req)


def test_error_after_which_the_engine_refuses_calls_is_engine_death(
    fake_vllm: Any, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RuntimeError (poisoned CUDA context) whose probe call fails too: BackendDead, while
    a RuntimeError the engine survives (a CUDA OOM) fails only that wave's requests."""
    from job.errors import BackendDead

    backend = load_backend(f"vllm/{tiny_model}")
    monkeypatch.setenv("FAKE_VLLM_RAISE", "1")
    (oom,) = backend.generate([GenRequest([{"role": "user", "content": "RAISE"}])])
    assert oom.status == "error" and "out of memory" in (oom.error or "")
    monkeypatch.setenv("FAKE_VLLM_DIE_AT", "1")
    monkeypatch.setenv("FAKE_VLLM_DIE_AS", "runtime")
    with pytest.raises(BackendDead, match="illegal memory access"):
        backend.generate([GenRequest([{"role": "user", "content": "hi"}])])


def _shards(out: Path, model: str) -> list[str]:
    return sorted(p.name for p in (out / "mt_bench/shards" / model).glob("*.manifest.json"))


def test_engine_death_mid_run_exits_nonzero_commits_nothing_in_flight_and_rerun_completes(
    run_job: Any, tiny_model: Path, shared_bench_data: Path, tmp_path: Path
) -> None:
    out, log = tmp_path / "runs", tmp_path / "vllm.jsonl"
    args = (
        "generate", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--model", f"vllm/{tiny_model}",
        "--model-name", "v", "--first-n", "4", "--max-new-tokens", "4", "--num-shards", "2", "--output", str(out),
    )  # fmt: skip
    env = {"PYTHONPATH": str(FAKES), "FAKE_VLLM_LOG": str(log)}
    # shard 1 takes engine calls 1-2 (turn 1, turn 2); the engine dies at shard 2's turn 2
    r = run_job(*args, env={**env, "FAKE_VLLM_DIE_AT": "4"})
    assert r.returncode == 75, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: vLLM engine for vllm/"), r.stderr
    assert "EngineDeadError" in r.stderr and "Traceback" not in r.stderr
    assert _shards(out, "v") == ["shard-00000-of-00002.manifest.json"], "shard 2 was in flight: nothing of it"
    assert not list((out / "mt_bench/shards/v").glob("shard-00001-of-00002*"))
    log.unlink()
    r = run_job(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert len(_shards(out, "v")) == 2
    assert [json.loads(x)["event"] for x in log.read_text().splitlines()] == ["init", "generate", "generate"]


def test_judge_engine_death_exits_nonzero_keeps_stored_batches(
    run_job: Any, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    for stage in (("generate", "--model", "mock/echo"), ("reduce", "--model-name", "echo")):
        assert run_job(*stage, "--bench", "smoke", "--output", str(out)).returncode == 0
    judge = ("judge", "--bench", "smoke", "--output", str(out), "--judge-model", f"vllm/{tiny_model}",
             "--judge-name", "vj", "--batch-size", "10")  # fmt: skip
    env = {"PYTHONPATH": str(FAKES), "FAKE_VLLM_APPEND": "Rating: [[5]]"}
    r = run_job(*judge, env={**env, "FAKE_VLLM_DIE_AT": "2"})
    assert r.returncode == 75 and "EngineDeadError" in r.stderr.strip().splitlines()[-1], r.stderr
    rows = (out / "smoke/model_judgment/vj_single.jsonl").read_text().splitlines()
    assert len(rows) == 10, "the first batch was stored; the one in flight was not"
    r = run_job(*judge, env=env)
    assert r.returncode == 0, r.stderr
    assert len((out / "smoke/model_judgment/vj_single.jsonl").read_text().splitlines()) == 18


SAMPLING_CASES = (
    [{"temperature": t} for t in (-0.1, 0.0, 0.7, 2.0, 2.01, float("nan"), float("inf"))]
    + [{"max_new_tokens": n} for n in (-5, 0, 1)]
    + [{"top_p": p} for p in (0.0, 0.5, 1.0, 1.5, float("nan"))]
    + [{"top_k": k} for k in (-2, -1, 0, 5, 2.5)]
    + [{"min_p": p} for p in (-0.1, 0.0, 1.0, 1.1)]
    + [{"repetition_penalty": r} for r in (-1.0, 0.0, 1.1)]
)


@pytest.mark.parametrize("case", SAMPLING_CASES, ids=lambda c: f"{next(iter(c))}={next(iter(c.values()))}")
def test_sampling_check_rejects_exactly_what_vllm_rejects(fake_vllm: Any, case: dict[str, Any]) -> None:
    """One rule set (job.backends.base.check_sampling) for every backend, the same as vLLM
    0.33's SamplingParams (mirrored by the fake; test_fake_vllm_matches_the_real_wheel pins it)."""
    from job.backends.base import check_sampling

    values = {"temperature": 0.5, "max_new_tokens": 8, **case}
    vllm_kw = {("max_tokens" if k == "max_new_tokens" else k): v for k, v in values.items()}
    try:
        fake_vllm.SamplingParams(**vllm_kw)
        engine_ok = True
    except fake_vllm.exceptions.VLLMValidationError:
        engine_ok = False
    try:
        check_sampling(**values)
        ours_ok = True
    except JobError as e:
        ours_ok = False
        assert "\n" not in str(e) and next(iter(case)).split("_")[0] in str(e).replace(" ", "_")
    assert ours_ok is engine_ok


@pytest.mark.parametrize(
    ("option", "shown"),
    [(("--temperature", "-1"), "got -1.0"), (("--temperature", "nan"), "got nan"),
     (("--category-temperature", "writing=2.5"), "got 2.5")],
)  # fmt: skip
def test_invalid_sampling_value_is_one_line_error_before_the_model_loads(
    run_job: Any,
    tiny_model: Path,
    shared_bench_data: Path,
    tmp_path: Path,
    option: tuple[str, str],
    shown: str,
) -> None:
    log = tmp_path / "vllm.jsonl"
    r = run_job(
        "generate", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--model", f"vllm/{tiny_model}",
        "--first-n", "3", "--output", str(tmp_path / "runs"), *option,
        env={"PYTHONPATH": str(FAKES), "FAKE_VLLM_LOG": str(log)},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: question 81 (writing): temperature must be") and shown in last, r.stderr
    assert "--temperature, --category-temperature" in last and "Traceback" not in r.stderr
    assert not log.exists(), "no engine was started"


def test_invalid_model_sampling_defaults_fail_at_load_naming_the_file(
    fake_vllm: Any, tiny_model: Path, tmp_path: Path
) -> None:
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    gen = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**gen, "top_p": 0.0}))
    with pytest.raises(JobError, match=r"generation_config.json: top_p must be in \(0, 1\], got 0.0"):
        load_backend(f"vllm/{model}")


PENALTY_CASES = [{"presence_penalty": v} for v in (-2.5, -2.0, 0.0, 2.0, 2.5)] + [
    {"frequency_penalty": v} for v in (-3, 1.5, 2.01)
]
"""generation_config.json penalties; test_vllm_contract checks the real class agrees."""


@pytest.mark.parametrize("case", PENALTY_CASES, ids=lambda c: f"{next(iter(c))}={next(iter(c.values()))}")
def test_model_penalty_defaults_are_checked_at_load(
    fake_vllm: Any, tiny_model: Path, tmp_path: Path, case: dict[str, float]
) -> None:
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    gen = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**gen, **case}))
    ((name, value),) = case.items()
    if -2.0 <= value <= 2.0:
        backend = load_backend(f"vllm/{model}")
        assert backend.model_defaults[name] == value
    else:
        with pytest.raises(JobError, match=rf"generation_config.json: {name} must be in \[-2, 2\]"):
            load_backend(f"vllm/{model}")


def _with_named_templates(model: Path, dst: Path, default: bool = True) -> Path:
    """A copy of the tiny model whose tokenizer has named chat templates (a dict once loaded)."""
    import shutil

    shutil.copytree(model, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [
        {"name": "default" if default else "chat", "template": CHAT_TEMPLATE},
        {"name": "tool_use", "template": "TOOLS " + CHAT_TEMPLATE},
    ]
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


def test_named_chat_templates_use_the_default_as_vllm_does(
    fake_vllm: Any, tiny_model: Path, tmp_path: Path
) -> None:
    backend = load_backend(f"vllm/{_with_named_templates(tiny_model, tmp_path / 'm')}")
    (res,) = backend.generate([GenRequest([{"role": "user", "content": "hi"}])])
    assert res.ok, res.error
    (call,) = _generate_calls(fake_vllm)
    assert call["texts"] == ["<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]
    with pytest.raises(
        JobError, match=r"named chat templates \(chat, tool_use\), none 'default'; pass --chat"
    ):
        load_backend(f"vllm/{_with_named_templates(tiny_model, tmp_path / 'n', default=False)}")


def _mistral_folder(model: Path, dst: Path, tokenizer_file: str = "tekken.json") -> Path:
    """The tiny model laid out as a Mistral-format checkpoint (consolidated weights + tekken)."""
    import shutil

    shutil.copytree(model, dst)
    (dst / "model.safetensors").rename(dst / "consolidated.safetensors")
    (dst / tokenizer_file).write_text("{}")
    return dst


def test_mistral_format_renders_through_the_mistral_tokenizer(
    fake_vllm: Any, tiny_model: Path, tmp_path: Path
) -> None:
    """vLLM loads it with its Mistral tokenizer, which renders chats to ids itself: encoding
    its rendered text would turn the control tokens into plain characters."""
    backend = load_backend(f"vllm/{_mistral_folder(tiny_model, tmp_path / 'm')}")
    (res,) = backend.generate([GenRequest([{"role": "user", "content": "hi"}])])
    assert res.ok, res.error
    (call,) = _generate_calls(fake_vllm)
    tok = backend.tokenizer
    assert call["prompts"] == [tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)]
    assert call["texts"] == ["<s>[INST]hi[/INST]"]


@pytest.mark.parametrize("layout", ["tekken.json", "tokenizer.model.v3"])
def test_chat_template_with_a_mistral_tokenizer_is_refused_before_the_engine_starts(
    fake_vllm: Any, tiny_model: Path, tmp_path: Path, layout: str
) -> None:
    model = _mistral_folder(tiny_model, tmp_path / "m", layout)
    tpl = tmp_path / "t.jinja"
    tpl.write_text(CHAT_TEMPLATE)
    with pytest.raises(JobError, match="Mistral tokenizer.*--tokenizer-mode hf") as e:
        load_backend(f"vllm/{model}", chat_template=str(tpl))
    assert "\n" not in str(e.value) and not fake_vllm.CALLS, "refused before any engine start"
    # --tokenizer-mode hf: the folder's HF tokenizer and the template, passed through to LLM()
    backend = load_backend(f"vllm/{model}", chat_template=str(tpl), tokenizer_mode="hf")
    assert fake_vllm.CALLS[0]["tokenizer_mode"] == "hf" and not backend.mistral
    backend.generate([GenRequest([{"role": "user", "content": "hi"}])])
    assert _generate_calls(fake_vllm)[0]["texts"][0].startswith("<s><|im_start|>user\nhi")


def test_tokenizer_mode_mistral_on_a_hub_id_refuses_the_template_too(
    fake_vllm: Any, tiny_model: Path, tmp_path: Path
) -> None:
    tpl = tmp_path / "t.jinja"
    tpl.write_text(CHAT_TEMPLATE)
    with pytest.raises(JobError, match="takes no chat template"):
        load_backend(f"vllm/{tiny_model}", chat_template=str(tpl), tokenizer_mode="mistral")


def test_stop_token_is_not_counted_as_in_the_hf_backend(fake_vllm: Any, tiny_model: Path) -> None:
    """vLLM's token_ids end with the EOS id of a "stop" completion; hf counts without it."""
    backend = load_backend(f"vllm/{tiny_model}")
    results = backend.generate([_chat(f"q{i}", 0.0) for i in range(20)])
    stops = [r for r in results if r.finish_reason == "stop"]
    assert stops, "some completions end on EOS"
    for r in results:
        assert r.num_tokens == int(r.text.split("(")[1].split()[0])


@pytest.mark.parametrize(
    ("option", "model"),
    [(("--chat-template", "t.jinja"), "openai/gpt-4o"), (("--chat-template", "t.jinja"), "mock/echo"),
     (("--tokenizer-mode", "mistral"), "mock/echo")],
)  # fmt: skip
def test_prompt_options_are_never_ignored_silently(
    run_job: Any, tmp_path: Path, option: tuple[str, str], model: str
) -> None:
    (tmp_path / "t.jinja").write_text(CHAT_TEMPLATE)
    r = run_job("generate", "--bench", "smoke", "--model", model, "--output", str(tmp_path / "runs"), *option,
                env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})  # fmt: skip
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {option[0]} applies to") and "drop it" in last, r.stderr


def test_cli_passes_tokenizer_mode(run_job: Any, tiny_model: Path, tmp_path: Path) -> None:
    log = tmp_path / "vllm.jsonl"
    r = run_job(
        "generate", "--bench", "smoke", "--model", f"vllm/{tiny_model}", "--output", str(tmp_path / "runs"),
        "--max-new-tokens", "4", "--tokenizer-mode", "slow",
        env={"PYTHONPATH": str(FAKES), "FAKE_VLLM_LOG": str(log)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(log.read_text().splitlines()[0])["tokenizer_mode"] == "slow"
