"""`vllm_contract`: our vLLM path held to the REAL vllm package (the pinned wheel, CPU only).

`pytest -m vllm_contract` runs exactly these. The wheel comes from tests/real_vllm/install.sh
(CI: .ci/setup.d/60-vllm-contract.sh); without it they skip locally and FAIL in CI.

Our backend runs against the recording fake (tests/fakes/vllm) in this process; what it
handed the engine is then run through the real package in a second process
(tests/real_vllm/probe.py): the real SamplingParams, the real prompt parser, vLLM's own chat
path (resolve_chat_template + safe_apply_chat_template with the tokenizer vLLM's loader
returns), the real get_diff_sampling_param / to_sampling_params of `vllm serve` and the real
tokenizer-mode resolution. What cannot run on CPU: the engine (scheduling, the model), and
ModelConfig itself (it probes the platform and the weights): a stand-in with the fields
resolve_chat_template reads replaces it, and the processor (multimodal) template lookup finds
nothing for these text models, as it does for any text model. The fake's own signatures are
compared with the real source (AST) so the fake cannot accept what the engine rejects.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import real_vllm
from test_reasoning import THINK_TEMPLATE
from test_vllm_backend import (
    FAKES,
    MODEL_DEFAULTS,
    PENALTY_CASES,
    SAMPLING_CASES,
    _generate_calls,
    _with_named_templates,
    use_fake_vllm,
)

from job.backends import load_backend
from job.backends.base import GenRequest, SamplingParams, check_sampling
from job.backends.smoke_model import CHAT_TEMPLATE
from job.errors import JobError
from job.generate import GenerateConfig, run

pytestmark = [pytest.mark.vllm_contract, pytest.mark.slow]  # the real vllm wheel: ~1 min loaded

REPO = real_vllm.REPO
ENGINE_ARGS_WE_PASS = ("tensor_parallel_size", "dtype", "gpu_memory_utilization", "enforce_eager",
                       "trust_remote_code", "max_model_len", "revision", "tokenizer_mode")  # fmt: skip
"""What job/backends/vllm.py hands LLM(); see test_engine_args_are_passed_exactly."""


@pytest.fixture(scope="module")
def real() -> Path:
    return real_vllm.require()


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    yield from use_fake_vllm(monkeypatch)


def _tree(root: Path, rel: str) -> ast.Module:
    return ast.parse((root / "vllm" / rel).read_text("utf-8"))


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}


def _default(node: ast.expr | None) -> Any:
    if node is None:
        return inspect.Parameter.empty
    if isinstance(node, ast.Attribute):  # RequestOutputKind.CUMULATIVE -> "CUMULATIVE"
        return node.attr
    return ast.literal_eval(node)


def _params(fn: ast.FunctionDef) -> list[tuple[str, str, Any]]:
    """(name, kind, default) of each parameter after self, as inspect names them."""
    a, out = fn.args, []
    positional = a.posonlyargs + a.args
    pos_defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for arg, d in zip(positional, pos_defaults, strict=True):
        out.append((arg.arg, "POSITIONAL_OR_KEYWORD", _default(d)))
    out += [
        (arg.arg, "KEYWORD_ONLY", _default(d)) for arg, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)
    ]
    if a.kwarg:
        out.append((a.kwarg.arg, "VAR_KEYWORD", inspect.Parameter.empty))
    return out[1:]


def _fake_params(fn: Any) -> list[tuple[str, str, Any]]:
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()][1:]


def test_fake_vllm_matches_the_real_wheel(fake_vllm: Any, real: Path) -> None:
    llm = _methods(_class(_tree(real, "entrypoints/llm.py"), "LLM"))
    for name in ("generate", "chat"):
        assert _fake_params(getattr(fake_vllm.LLM, name)) == _params(llm[name]), f"LLM.{name}"
    # every engine argument we pass is a real LLM() keyword or an EngineArgs field
    init = {p[0] for p in _params(llm["__init__"])}
    engine_args = {n.target.id for n in _class(_tree(real, "engine/arg_utils.py"), "EngineArgs").body
                   if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}  # fmt: skip
    assert set(ENGINE_ARGS_WE_PASS) <= init | engine_args
    fields = [(n.target.id, _default(n.value)) for n in _class(_tree(real, "sampling_params.py"), "SamplingParams").body
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and not n.target.id.startswith("_")]  # fmt: skip
    assert list(fake_vllm.SAMPLING_FIELDS.items()) == fields
    dead = _class(_tree(real, "v1/engine/exceptions.py"), "EngineDeadError")
    assert [ast.unparse(b) for b in dead.bases] == ["VLLMServerError"]
    # the fake Mistral tokenizer: the real one's call signatures
    from vllm.tokenizers.mistral import MistralTokenizer

    mistral = _methods(_class(_tree(real, "tokenizers/mistral.py"), "MistralTokenizer"))
    for name in ("apply_chat_template", "encode"):
        assert _fake_params(getattr(MistralTokenizer, name)) == _params(mistral[name]), name
    # the fake's generation_config keys: those of the real get_diff_sampling_param
    src = ast.unparse(
        _methods(_class(_tree(real, "config/model.py"), "ModelConfig"))["get_diff_sampling_param"]
    )
    listed = re.search(r"available_params = \[(.*?)\]", src, re.S)
    assert listed and ast.literal_eval(f"({listed.group(1)},)") == fake_vllm.DIFF_SAMPLING_KEYS


def test_sampling_values_are_rejected_exactly_as_the_real_class_does(fake_vllm: Any, real: Path) -> None:
    """The real SamplingParams, our check_sampling (which runs before any model loads) and the
    fake agree on every case: nothing the engine rejects gets past us or the fake."""
    kws = [{("max_tokens" if k == "max_new_tokens" else k): v for k, v in {"temperature": 0.5, **c}.items()}
           for c in SAMPLING_CASES]  # fmt: skip
    penalties = [{"temperature": 0.5, **c} for c in PENALTY_CASES]
    verdicts = real_vllm.probe(real, [{"sampling": kw} for kw in kws + penalties])
    verdicts, penalty_verdicts = verdicts[: len(kws)], verdicts[len(kws) :]
    wrong = []
    for case, kw, verdict in zip(SAMPLING_CASES, kws, verdicts, strict=True):
        ours = _accepts(check_sampling, JobError, **{"temperature": 0.5, "max_new_tokens": 8, **case})
        fake = _accepts(fake_vllm.SamplingParams, fake_vllm.exceptions.VLLMValidationError, **kw)
        if not ours is fake is verdict["ok"]:
            wrong.append((case, verdict, ours, fake))
    assert not wrong, wrong
    # the model-default penalties we check at load (test_model_penalty_defaults_are_checked_at_load)
    assert [v["ok"] for v in penalty_verdicts] == [
        -2.0 <= next(iter(c.values())) <= 2.0 for c in PENALTY_CASES
    ]


def _accepts(fn: Any, error: type[Exception], **kw: Any) -> bool:
    try:
        fn(**kw)
    except error:
        return False
    return True


def _model_with_defaults(tiny: Path, dst: Path) -> Path:
    shutil.copytree(tiny, dst)
    gen = json.loads((dst / "generation_config.json").read_text())
    (dst / "generation_config.json").write_text(json.dumps({**gen, **MODEL_DEFAULTS}))
    return dst


def test_every_request_we_send_passes_the_real_sampling_and_prompt_checks(
    fake_vllm: Any, real: Path, tiny_model: Path, shared_bench_data: Path, tmp_path: Path, run_job: Any
) -> None:
    """All of mt_bench and japanese_mt_bench (every category: greedy and sampled), 3 choices
    with seeds, model defaults from generation_config.json, forced lengths (benchmarks) and
    the judge's requests: each SamplingParams and each prompt the engine got."""
    model = _model_with_defaults(tiny_model, tmp_path / "m")
    for bench in ("mt_bench", "japanese_mt_bench"):
        cfg = GenerateConfig(
            bench=bench, model=f"vllm/{model}", model_name=bench, num_choices=3, seed=7, max_new_tokens=64,
            output=str(tmp_path / "runs"), bench_data=str(shared_bench_data),
            backend_options={"min_new_tokens": 16} if bench == "japanese_mt_bench" else {},
        )  # fmt: skip
        run(cfg)
    calls = _generate_calls(fake_vllm)
    out = ("--bench", "mt_bench", "--output", str(tmp_path / "runs"))
    assert run_job("reduce", *out, "--model-name", "mt_bench").returncode == 0
    log = tmp_path / "judge.jsonl"
    r = run_job("judge", *out, "--bench-data", str(shared_bench_data), "--model-list", "mt_bench", "--judge-model", f"vllm/{model}",
                "--judge-name", "vj", "--question-ids", "81,101,111,131",
                env={"PYTHONPATH": str(FAKES), "FAKE_VLLM_LOG": str(log), "FAKE_VLLM_APPEND": "[[5]]"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    judged = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "generate"]
    assert judged, "the judge made engine calls"
    sampling = {json.dumps(s, sort_keys=True) for c in [*calls, *judged] for s in c["sampling"]}
    prompts = [p for c in [*calls, *judged] for p in c["prompts"]]
    temps = {json.loads(s)["temperature"] for s in sampling}
    assert {0.0, 0.7} <= temps and len(sampling) > 5, sampling
    tasks = [{"sampling": json.loads(s)} for s in sorted(sampling)]
    tasks += [{"prompt": {"prompt_token_ids": p}} for p in prompts]
    results = real_vllm.probe(real, tasks)
    refused = [(t, v) for t, v in zip(tasks, results, strict=True) if "sampling" in t and not v["ok"]]
    assert not refused, refused
    parsed = [v for t, v in zip(tasks, results, strict=True) if "prompt" in t]
    assert [v.get("parsed") for v in parsed] == [{"prompt_token_ids": p} for p in prompts]


CONVERSATIONS = [
    [{"role": "user", "content": "Compose a travel blog post about Hawaii."}],
    [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": "Rate this: [[A]]"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "Now double it."}],
    [{"role": "user", "content": "日本の首都はどこですか？"}],
]  # fmt: skip


def _template_cases(tiny: Path, tmp: Path) -> list[tuple[str, Path, str | None, dict[str, Any] | None]]:
    """(name, model, --chat-template file, --chat-template-kwargs): the tokenizer's template,
    named templates, a file, a file reading a kwarg (tests/test_reasoning.py)."""
    tpl = tmp / "t.jinja"
    tpl.write_text(
        "{{ bos_token }}" + CHAT_TEMPLATE.replace("{{ bos_token }}", "").replace("<|im_start|>", "[[")
    )
    think = tmp / "think.jinja"
    think.write_text(THINK_TEMPLATE)
    return [("own", tiny, None, None), ("named", _with_named_templates(tiny, tmp / "named"), None, None),
            ("file", tiny, str(tpl), None), ("kwargs", tiny, str(think), {"enable_thinking": False})]  # fmt: skip


def test_prompt_ids_equal_vllms_own_chat_path(
    fake_vllm: Any, real: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Our ids (template rendered once, encoded without a second BOS) are exactly what
    LLM.chat would render for the same messages with the same template."""
    ours, tasks = [], []
    for name, model, tpl, kwargs in _template_cases(tiny_model, tmp_path):
        backend = load_backend(f"vllm/{model}", chat_template=tpl, chat_template_kwargs=kwargs)
        template = Path(tpl).read_text() if tpl else None
        for conv in CONVERSATIONS:
            ours.append((name, backend.encode(GenRequest(conv, SamplingParams(0.0, 8)))))
            tasks.append({"render": str(model), "messages": conv, "chat_template": template,
                          "chat_template_kwargs": kwargs})  # fmt: skip
    results = real_vllm.probe(real, tasks)
    bos = backend.tokenizer.bos_token_id
    for (name, ids), theirs in zip(ours, results, strict=True):
        # ours with the fake's tokenizer, and ours with the tokenizer vLLM loads
        assert theirs.get("ids") == ids == theirs.get("ours"), (name, theirs)
        assert ids.count(bos) == 1 and ids[0] == bos, (name, ids[:5])


def test_mistral_format_prompt_ids_are_the_mistral_renderers(real: Path, tmp_path: Path) -> None:
    """A Mistral-format folder (consolidated weights + a real tekken.json): vLLM loads its
    Mistral tokenizer, and our ids are MistralRenderer's (rendering to text and encoding it
    would spell [INST] out as plain text tokens; tests/fakes/vllm mimics that)."""
    tekken = next((real / "mistral_common/data").glob("tekken_*.json"))
    shutil.copy(tekken, tmp_path / "tekken.json")
    (tmp_path / "consolidated.safetensors").write_bytes(b"")
    tasks = [{"render": str(tmp_path), "messages": conv} for conv in CONVERSATIONS[:1] + CONVERSATIONS[2:]]
    for result in real_vllm.probe(real, tasks):
        assert result.get("tokenizer") == "MistralTokenizer", result
        assert result["ours"] == result["ids"] and result["ids"][0] == 1, result


def test_model_defaults_are_the_ones_vllm_serve_applies(
    fake_vllm: Any, real: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """The fake's get_diff_sampling_param is the real one's; the SamplingParams we build for
    a request equals what `vllm serve` builds for FastChat's request (temperature, max_tokens,
    seed) on the same model, field by field."""
    backend = load_backend(f"vllm/{_model_with_defaults(tiny_model, tmp_path / 'm')}")
    defaults = backend.llm.llm_engine.model_config.get_diff_sampling_param()
    requests = [SamplingParams(0.7, 64, seed=3), SamplingParams(0.0, 1024), SamplingParams(1.0, 5, seed=0)]
    tasks: list[dict[str, Any]] = [{"diff_sampling": MODEL_DEFAULTS}]
    for p in requests:
        serve = {"temperature": p.temperature, "max_tokens": p.max_new_tokens}
        tasks.append({"sampling": backend.sampling_params(p).kwargs})
        tasks.append({"serve": serve | ({"seed": p.seed} if p.temperature > 0 else {}), "defaults": defaults})
    diff, *results = real_vllm.probe(real, tasks)
    assert defaults == diff["defaults"]
    for p, ours, served in zip(requests, results[::2], results[1::2], strict=True):
        assert ours["ok"] and ours["fields"] == served["fields"], p


MISTRAL_LAYOUTS = [
    ("consolidated.safetensors", "tekken.json"), ("sub/consolidated-00001.safetensors", "tokenizer.model.v7"),
    ("consolidated.safetensors",), ("tekken.json", "model.safetensors"), ("model.safetensors",),
]  # fmt: skip


def test_mistral_format_detection_is_vllms(fake_vllm: Any, real: Path, tmp_path: Path) -> None:
    """Ours (job.backends.vllm.mistral_format) and the fake's, against the real resolver."""
    from vllm.tokenizers.mistral import mistral_mode

    from job.backends.vllm import mistral_format

    folders = []
    for i, files in enumerate(MISTRAL_LAYOUTS):
        for f in files:
            (tmp_path / str(i) / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / str(i) / f).write_text("{}")
        folders.append(str(tmp_path / str(i)))
    modes = real_vllm.probe(real, [{"tokenizer_mode": d} for d in folders])
    real_says = [m["mode"] == "mistral" for m in modes]
    assert real_says == [True, True, False, False, False]
    assert [mistral_format(d) for d in folders] == real_says
    assert [mistral_mode(d, None) for d in folders] == real_says


def test_mistral_tokenizer_interface_we_call_exists(real: Path) -> None:
    """What encode() calls on a Mistral tokenizer: apply_chat_template(messages, ...) that
    returns token ids with tokenize=True, and no chat_template attribute to render with."""
    mistral = _class(_tree(real, "tokenizers/mistral.py"), "MistralTokenizer")
    src = ast.unparse(_methods(mistral)["apply_chat_template"])
    assert 'kwargs.pop("add_generation_prompt", False)' in src.replace("'", '"')
    assert 'tokenize = kwargs.get("tokenize", True)' in src.replace("'", '"')
    assert "chat_template" not in {n.target.id for n in mistral.body if isinstance(n, ast.AnnAssign)
                                   and isinstance(n.target, ast.Name)}  # fmt: skip
    assert (
        "chat_template is not supported for Mistral tokenizers"
        in (real / "vllm/tokenizers/mistral.py").read_text()
    )


def _pin(path: Path, pattern: str) -> str:
    m = re.search(pattern, path.read_text(), re.M)
    assert m, f"{path}: no {pattern}"
    return m.group(1)


def test_installed_wheel_docker_pin_and_cuda_agree(real: Path) -> None:
    """One vllm pin (install.sh = docker/Dockerfile = what is installed), and the Dockerfile's
    CUDA base image has the CUDA major version the wheel's CUDA packages are built for."""
    pin = _pin(REPO / "tests/real_vllm/install.sh", r"^VLLM_VERSION=(\S+)")
    dockerfile = REPO / "docker/Dockerfile"
    assert _pin(dockerfile, r"^ARG VLLM_VERSION=(\S+)") == pin
    meta = next(real.glob("vllm-*.dist-info/METADATA")).read_text()
    assert re.search(r"^Version: (\S+)", meta, re.M).group(1) == pin  # type: ignore[union-attr]
    majors = {int(m) for m in re.findall(r"^Requires-Dist: \S+\[cu(\d+)\]", meta, re.M)}
    assert len(majors) == 1, majors
    base = _pin(dockerfile, r"^ARG BASE_IMAGE=nvidia/cuda:(\d+)\.")
    assert int(base) == majors.pop(), "docker/Dockerfile BASE_IMAGE: CUDA major of the vllm wheel"
