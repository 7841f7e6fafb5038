"""A fake `vllm` package for tests: records what the backend asks of the engine.

The surface our backend uses, with vLLM 0.33's signatures and argument checks
(tests/test_vllm_fake.py compares them with the real wheel's source when it is
installed): `LLM(model, **engine_args)`, `LLM.get_tokenizer()` (a REAL transformers
tokenizer loaded from the model dir, so chat templates really render; for a Mistral-format
folder vllm.tokenizers.mistral.MistralTokenizer, as vLLM's tokenizer_mode "auto" picks),
`LLM.generate(prompts, sampling_params, *, use_tqdm=...)`, `LLM.chat(messages, ...)`
and `SamplingParams(**kw)`, which rejects what the real one rejects.
Outputs are deterministic: a digest of the prompt ids, seed and temperature, with a
length that depends on the prompt, so finish reasons are both "stop" and "length"; as in
vLLM, a "stop" completion's token_ids end with the EOS id that its text leaves out.

Failures on purpose:
- a prompt containing `<fake:empty>` completes with no text; `<fake:finish-error>`
  finishes with finish_reason "error" (as vLLM v1 does for a request it failed);
- FAKE_VLLM_APPEND=TEXT is appended to every completion (e.g. a judge's "[[5]]");
- FAKE_VLLM_RAISE=1: a wave with a prompt containing "RAISE" raises (a CUDA OOM);
  the engine stays usable;
- FAKE_VLLM_DIE_AT=N: the N-th generate call of the process kills the engine: it raises
  EngineDeadError (FAKE_VLLM_DIE_AS=runtime: a RuntimeError, as a poisoned CUDA context
  does), and so does every later call.

Every call is appended to `CALLS` and, when FAKE_VLLM_LOG names a file, to that
JSONL file too (tests that run the CLI in a subprocess read it).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from vllm.exceptions import VLLMValidationError
from vllm.tokenizers.mistral import MistralTokenizer, mistral_mode
from vllm.v1.engine.exceptions import EngineDeadError

CALLS: list[dict[str, Any]] = []
FAKE = True
_STATE = {"generate_calls": 0, "dead": False}

SAMPLING_FIELDS: dict[str, Any] = {
    "n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
    "temperature": 1.0, "watermarking": None, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
    "seed": None, "stop": None, "stop_token_ids": None, "ignore_eos": False, "max_tokens": 16,
    "min_tokens": 0, "logprobs": None, "prompt_logprobs": None, "prompt_logprob_token_ids": None,
    "prompt_logprob_start": None, "logprob_token_ids": None, "flat_logprobs": False,
    "detokenize": True, "skip_special_tokens": True, "spaces_between_special_tokens": True,
    "include_stop_str_in_output": False, "output_kind": "CUMULATIVE", "stream_interval": None,
    "skip_clone": False, "output_text_buffer_length": 0, "structured_outputs": None,
    "logit_bias": None, "allowed_token_ids": None, "extra_args": None, "bad_words": None,
    "skip_reading_prefix_cache": None, "thinking_token_budget": None, "repetition_detection": None,
    "routed_experts_prompt_start": 0, "trace_decode_token_ids": None,
}  # fmt: skip
"""vLLM 0.33 SamplingParams' public fields and defaults, in declaration order."""


def _record(event: dict[str, Any]) -> None:
    CALLS.append(event)
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise VLLMValidationError(message)


class SamplingParams:
    """Field checks of vLLM 0.33 `SamplingParams._verify_args` (the ones plain values hit)."""

    def __init__(self, *args: Any, **kwargs: Any):
        if len(args) > len(SAMPLING_FIELDS):
            raise TypeError(f"SamplingParams takes at most {len(SAMPLING_FIELDS)} positional arguments")
        kwargs.update(zip(SAMPLING_FIELDS, args, strict=False))
        unknown = set(kwargs) - set(SAMPLING_FIELDS)
        if unknown:
            raise TypeError(f"Unexpected keyword argument {sorted(unknown)[0]!r}")
        self.kwargs = kwargs
        for name, default in SAMPLING_FIELDS.items():
            setattr(self, name, kwargs.get(name, default))
        if self.seed == -1:
            self.seed = None
        self._verify_args()
        if self.temperature < 1e-5:  # greedy: vLLM resets the other knobs
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
            _check(self.n == 1, f"n must be 1 when using greedy sampling, got {self.n}.")

    def _verify_args(self) -> None:
        _check(isinstance(self.n, int) and self.n >= 1, f"n must be at least 1, got {self.n}.")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(-2.0 <= value <= 2.0, f"{name} must be in [-2, 2], got {value}.")
        rp = self.repetition_penalty
        _check(math.isfinite(rp) and rp > 0.0, f"repetition_penalty must be greater than zero, got {rp}.")
        t = self.temperature
        _check(math.isfinite(t), f"temperature must be a finite number, got {t}.")
        _check(t >= 0.0, f"temperature must be non-negative, got {t}.")
        _check(t <= 2.0, f"temperature must be in [0, 2], got {t}.")
        _check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}.")
        _check(self.top_k >= -1, f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        _check(isinstance(self.top_k, int), f"top_k must be an integer, got {type(self.top_k).__name__}")
        _check(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}.")
        mt = self.max_tokens
        _check(mt is None or mt >= 1, f"max_tokens must be at least 1, got {mt}.")
        _check(self.min_tokens >= 0, f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.")
        _check(
            mt is None or self.min_tokens <= mt, f"min_tokens must be less than or equal to max_tokens={mt}."
        )


SamplingParams.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=v)
        for k, v in SAMPLING_FIELDS.items()
    ]
)


@dataclass
class _Model:
    max_model_len: int
    model_dir: str = ""

    def get_diff_sampling_param(self) -> dict[str, Any]:
        """vLLM 0.33 ModelConfig.get_diff_sampling_param (generation_config "auto"): the
        sampling fields generation_config.json sets, max_new_tokens renamed max_tokens."""
        path = os.path.join(self.model_dir, "generation_config.json")
        if not os.path.isfile(path):
            return {}
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        diff = {k: cfg[k] for k in DIFF_SAMPLING_KEYS if cfg.get(k) is not None}
        if "max_new_tokens" in diff:
            diff["max_tokens"] = diff.pop("max_new_tokens")
        return diff


DIFF_SAMPLING_KEYS = (
    "repetition_penalty", "presence_penalty", "frequency_penalty", "temperature", "top_k", "top_p",
    "min_p", "max_new_tokens", "skip_special_tokens",
)  # fmt: skip


@dataclass
class _Engine:
    model_config: _Model = field(default_factory=lambda: _Model(4096))


def _engine_call() -> None:
    """Count generate calls; FAKE_VLLM_DIE_AT kills the engine at the N-th, for good."""
    _STATE["generate_calls"] += 1
    die_at = int(os.environ.get("FAKE_VLLM_DIE_AT") or 0)
    if die_at and _STATE["generate_calls"] >= die_at:
        _STATE["dead"] = True
    if _STATE["dead"]:
        if os.environ.get("FAKE_VLLM_DIE_AS") == "runtime":
            raise RuntimeError("CUDA error: an illegal memory access was encountered (fake)")
        raise EngineDeadError()


class LLM:
    def __init__(self, model: str, **kwargs: Any):
        from transformers import AutoTokenizer

        _record({"event": "init", "model": model, **kwargs})
        if not os.path.isdir(model):
            raise OSError(f"{model} is not a local folder and not a valid model identifier")
        self._tokenizer = AutoTokenizer.from_pretrained(model)
        if mistral_mode(model, kwargs.get("tokenizer_mode")):
            self._tokenizer = MistralTokenizer(self._tokenizer)
        self.llm_engine = _Engine(_Model(kwargs.get("max_model_len") or 4096, model))
        self.eos = self._tokenizer.eos_token_id

    def get_tokenizer(self) -> Any:
        return self._tokenizer

    def generate(
        self,
        prompts: Any,
        sampling_params: Any = None,
        *,
        use_tqdm: Any = True,
        lora_request: Any = None,
        priority: Any = None,
        tokenization_kwargs: Any = None,
        mm_processor_kwargs: Any = None,
    ) -> list[Any]:
        if not isinstance(sampling_params, list) or len(sampling_params) != len(prompts):
            raise ValueError("the fake wants one SamplingParams per prompt")
        texts = [self._tokenizer.decode(p["prompt_token_ids"]) for p in prompts]
        _record(
            {
                "event": "generate",
                "prompts": [p["prompt_token_ids"] for p in prompts],
                "texts": texts,
                "sampling": [sp.kwargs for sp in sampling_params],
            }
        )
        _engine_call()
        limit = self.llm_engine.model_config.max_model_len
        for p in prompts:  # as vLLM's input processor: the whole call fails
            n = len(p["prompt_token_ids"])
            if n == 0:
                raise VLLMValidationError("The decoder prompt cannot be empty")
            if n > limit:
                raise VLLMValidationError(
                    f"The decoder prompt (length {n}) is longer than the maximum model length of {limit}."
                )
        if os.environ.get("FAKE_VLLM_RAISE") and any("RAISE" in t for t in texts):
            raise RuntimeError("CUDA out of memory (fake)")
        return [
            self._output(p["prompt_token_ids"], t, sp)
            for p, t, sp in zip(prompts, texts, sampling_params, strict=True)
        ]

    def _output(self, ids: list[int], text: str, sp: SamplingParams) -> Any:
        seed = sp.seed if sp.temperature > 0 else None
        h = hashlib.sha256(json.dumps([ids, seed, sp.temperature]).encode()).hexdigest()
        # natural length 1..12 tokens; at least min_tokens, at most max_tokens
        natural = max(1 + int(h[:2], 16) % 12, sp.min_tokens)
        n = min(natural, sp.max_tokens)
        reason = "stop" if n == natural and n < sp.max_tokens else "length"
        out = f" fake-{h[:12]} ({n} tokens) {os.environ.get('FAKE_VLLM_APPEND', '')}"
        if "<fake:empty>" in text:
            out, n, reason = "", 1, "stop"
        elif "<fake:finish-error>" in text:
            out, reason = out[: len(out) // 2], "error"
        ids = list(range(n)) + ([self.eos] if reason == "stop" else [])  # vLLM keeps the EOS id
        comp = SimpleNamespace(index=0, text=out, token_ids=ids, finish_reason=reason, stop_reason=None)
        return SimpleNamespace(prompt_token_ids=ids, outputs=[comp], finished=True)

    def chat(
        self,
        messages: Any,
        sampling_params: Any = None,
        use_tqdm: Any = True,
        lora_request: Any = None,
        priority: Any = None,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: Any = None,
        chat_template_kwargs: Any = None,
        tokenization_kwargs: Any = None,
        mm_processor_kwargs: Any = None,
    ) -> list[Any]:
        convs = messages if messages and isinstance(messages[0], list) else [messages]
        prompts = [
            {
                "prompt_token_ids": self._tokenizer.apply_chat_template(
                    c, chat_template=chat_template, add_generation_prompt=add_generation_prompt, tokenize=True
                )
            }
            for c in convs
        ]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        return self.generate(prompts, params, use_tqdm=use_tqdm)
