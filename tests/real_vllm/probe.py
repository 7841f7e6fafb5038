"""Runs inputs through the REAL vllm package (CPU only) and prints what it made of them.

Started by tests/test_vllm_contract.py in its own process, with PYTHONPATH holding the wheel
that tests/real_vllm/install.sh installed: the test process itself imports the fake vllm.
Reads a JSON list of tasks on stdin, writes a JSON list of results on stdout, one per task:

- {"sampling": KWARGS} -> {"ok": true, "fields": {...}} or {"ok": false, "error": ...}:
  vllm.SamplingParams(**KWARGS) and the values it ended up with
- {"serve": {"temperature": T, "max_tokens": N, "seed": S}, "defaults": DIFF} -> {"fields": {...}}:
  the SamplingParams `vllm serve` makes of a chat request with those fields, given the
  model defaults DIFF (ChatCompletionRequest.to_sampling_params)
- {"prompt": PROMPT} -> the dict vLLM's own prompt parser (parse_dec_only_prompt, what
  LLM.generate runs on each prompt) makes of it, or {"error": ...}
- {"render": MODEL_DIR, "messages": [...], "chat_template": TEXT|null} -> {"ids": [...],
  "ours": [...], "tokenizer": CLASS}: the token ids of vLLM's chat path (LLM.chat ->
  HfRenderer/MistralRenderer.render_messages -> safe_apply_chat_template(tokenize=True)) and
  of job.backends.vllm.render_ids, with the tokenizer vLLM's own loader returns
- {"diff_sampling": GENERATION_CONFIG} -> ModelConfig.get_diff_sampling_param's dict: the
  model defaults `vllm serve` merges into requests
- {"tokenizer_mode": MODEL_DIR} -> the tokenizer mode vLLM's "auto" resolves to for that folder

What cannot run without a GPU build (the engine, ModelConfig.__init__, which probes the
platform and the model's weights) is replaced by the smallest stand-in, named below.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from typing import Any


def sampling(kw: dict[str, Any]) -> dict[str, Any]:
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams

    try:
        sp = SamplingParams(**kw)
    except (VLLMValidationError, TypeError, ValueError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "fields": _fields(sp)}


COMPARED = ("n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
            "frequency_penalty", "seed", "max_tokens", "min_tokens", "skip_special_tokens", "stop",
            "stop_token_ids", "ignore_eos", "logprobs")  # fmt: skip
"""The SamplingParams fields that decide what is generated."""


def _fields(sp: Any) -> dict[str, Any]:
    return {k: getattr(sp, k) for k in COMPARED}


def serve(request: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], **request)
    return {"fields": _fields(req.to_sampling_params(request["max_tokens"], defaults))}


def prompt(p: Any) -> dict[str, Any]:
    from vllm.renderers.inputs.preprocess import parse_dec_only_prompt

    try:
        return {"parsed": dict(parse_dec_only_prompt(p))}
    except (TypeError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


def _model_config(model: str) -> Any:
    """The ModelConfig fields resolve_chat_template reads (the real one needs a platform)."""
    return SimpleNamespace(
        model=model, tokenizer=model, tokenizer_revision=None, code_revision=None, revision=None,
        trust_remote_code=False, hf_config=SimpleNamespace(model_type="llama"),
    )  # fmt: skip


def render(
    model: str,
    messages: list[dict[str, str]],
    chat_template: str | None,
    kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """vLLM's chat path (HfRenderer / MistralRenderer.render_messages) and ours (job's
    resolve_template + render_ids), both with the tokenizer vLLM's loader returns; `kwargs`:
    chat_template_kwargs, as LLM.chat passes them to safe_apply_chat_template."""
    from vllm.tokenizers import get_tokenizer

    from job.backends.vllm import render_ids, resolve_template

    tokenizer = get_tokenizer(model)
    kind = type(tokenizer).__name__
    try:
        if kind == "MistralTokenizer":
            from vllm.renderers.mistral import safe_apply_chat_template as mistral_apply

            theirs = mistral_apply(
                tokenizer, messages, chat_template=None, return_dict=False, add_generation_prompt=True
            )
            ours = render_ids(tokenizer, messages, None)
        else:
            from vllm.renderers.hf import safe_apply_chat_template

            theirs = safe_apply_chat_template(
                _model_config(model), tokenizer, messages, chat_template=chat_template,
                add_generation_prompt=True, return_dict=False, **(kwargs or {}),
            )  # fmt: skip
            ours = render_ids(tokenizer, messages, resolve_template(tokenizer, model, chat_template), kwargs)
    except Exception as e:  # the template rejects the conversation: report it, as vLLM would
        return {"error": f"{type(e).__name__}: {e}"}
    return {"ids": list(theirs), "ours": ours, "tokenizer": kind}


def diff_sampling(generation_config: dict[str, Any]) -> dict[str, Any]:
    from vllm.config.model import ModelConfig

    stub = SimpleNamespace(
        generation_config="auto",
        override_generation_config={},
        try_get_generation_config=lambda: dict(generation_config),
    )
    return {"defaults": ModelConfig.get_diff_sampling_param(stub)}  # type: ignore[arg-type]


def tokenizer_mode(model: str) -> dict[str, Any]:
    from vllm.tokenizers.registry import resolve_tokenizer_args

    mode, *_ = resolve_tokenizer_args(model)
    return {"mode": mode}


def run(task: dict[str, Any]) -> dict[str, Any]:
    if "sampling" in task:
        return sampling(task["sampling"])
    if "serve" in task:
        return serve(task["serve"], task["defaults"])
    if "prompt" in task:
        return prompt(task["prompt"])
    if "render" in task:
        return render(
            task["render"], task["messages"], task.get("chat_template"), task.get("chat_template_kwargs")
        )
    if "diff_sampling" in task:
        return diff_sampling(task["diff_sampling"])
    if "tokenizer_mode" in task:
        return tokenizer_mode(task["tokenizer_mode"])
    raise SystemExit(f"unknown task {sorted(task)}")


def main() -> None:
    import vllm

    assert not getattr(vllm, "FAKE", False), "the probe must run against the real vllm"
    tasks = json.load(sys.stdin)
    out, sys.stdout = sys.stdout, sys.stderr  # vLLM's log lines must not mix with the answer
    results = [run(t) for t in tasks]
    json.dump(results, out)


if __name__ == "__main__":
    main()
