"""A fake `vllm` package for tests: records what the backend asks of the engine.

Only the surface our backend uses: `LLM(**engine_args)`, `LLM.get_tokenizer()` (a REAL
transformers tokenizer loaded from the model dir, so chat templates really render),
`LLM.generate(prompts, sampling_params, use_tqdm=...)` and `SamplingParams(**kw)`.
Outputs are deterministic: a digest of the prompt ids, seed and temperature, with a
length that depends on the prompt, so finish reasons are both "stop" and "length".

Every call is appended to `CALLS` and, when FAKE_VLLM_LOG names a file, to that
JSONL file too (tests that run the CLI in a subprocess read it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

CALLS: list[dict[str, Any]] = []
FAKE = True


def _record(event: dict[str, Any]) -> None:
    CALLS.append(event)
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


class SamplingParams:
    def __init__(self, **kwargs: Any):
        allowed = {
            "temperature",
            "max_tokens",
            "seed",
            "min_tokens",
            "top_p",
            "top_k",
            "min_p",
            "repetition_penalty",
        }
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"SamplingParams got unexpected arguments {sorted(unknown)}")
        self.kwargs = kwargs
        self.temperature = kwargs.get("temperature", 1.0)
        self.max_tokens = kwargs.get("max_tokens", 16)
        self.seed = kwargs.get("seed")
        self.min_tokens = kwargs.get("min_tokens", 0)


@dataclass
class _Model:
    max_model_len: int
    model_dir: str = ""

    def get_diff_sampling_param(self) -> dict[str, Any]:
        """Like vLLM: the sampling fields the model's generation_config.json sets."""
        path = os.path.join(self.model_dir, "generation_config.json")
        if not os.path.isfile(path):
            return {}
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        keys = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
        return {k: cfg[k] for k in keys if k in cfg}


@dataclass
class _Engine:
    model_config: _Model = field(default_factory=lambda: _Model(4096))


class LLM:
    def __init__(self, model: str, **kwargs: Any):
        from transformers import AutoTokenizer

        _record({"event": "init", "model": model, **kwargs})
        if not os.path.isdir(model):
            raise OSError(f"{model} is not a local folder and not a valid model identifier")
        self._tokenizer = AutoTokenizer.from_pretrained(model)
        self.llm_engine = _Engine(_Model(kwargs.get("max_model_len") or 4096, model))
        self.eos = self._tokenizer.eos_token_id

    def get_tokenizer(self) -> Any:
        return self._tokenizer

    def generate(
        self, prompts: list[dict[str, list[int]]], sampling_params: Any, use_tqdm: bool = True
    ) -> Any:
        if not isinstance(sampling_params, list) or len(sampling_params) != len(prompts):
            raise ValueError("the fake wants one SamplingParams per prompt")
        _record(
            {
                "event": "generate",
                "prompts": [p["prompt_token_ids"] for p in prompts],
                "texts": [self._tokenizer.decode(p["prompt_token_ids"]) for p in prompts],
                "sampling": [sp.kwargs for sp in sampling_params],
            }
        )
        outs = []
        for p, sp in zip(prompts, sampling_params, strict=True):
            ids = p["prompt_token_ids"]
            if os.environ.get("FAKE_VLLM_RAISE") and "RAISE" in self._tokenizer.decode(ids):
                raise RuntimeError("CUDA out of memory (fake)")
            seed = sp.seed if sp.temperature > 0 else None
            h = hashlib.sha256(json.dumps([ids, seed, sp.temperature]).encode()).hexdigest()
            # natural length 1..12 tokens; at least min_tokens, at most max_tokens
            natural = max(1 + int(h[:2], 16) % 12, sp.min_tokens)
            n = min(natural, sp.max_tokens)
            reason = "stop" if n == natural and n < sp.max_tokens else "length"
            text = f" fake-{h[:12]} ({n} tokens) "
            comp = SimpleNamespace(text=text, token_ids=list(range(n)), finish_reason=reason)
            outs.append(SimpleNamespace(prompt_token_ids=ids, outputs=[comp]))
        return outs
