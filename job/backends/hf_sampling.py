"""Per-row sampling for batched HF generate: greedy and sampled rows share one call.

`RowSampler` does temperature -> top-k -> top-p and the draw itself inside a logits
processor and leaves one finite token per row, so generate() runs in greedy mode and
just takes it. The distribution is HF's (same order of warpers, same defaults), but the
draw is over the top-k candidates only instead of the whole vocabulary: torch's
multinomial costs one random number per vocabulary entry, which at batch size 64 and
vocab 2048 was a fifth of all CPU time (on a GPU with a 128k vocab it is the same waste).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

# HF's own defaults for fields a model's generation_config leaves unset
_HF_TOP_K, _HF_TOP_P = 50, 1.0


class RowTemperature(LogitsProcessor):
    """Per-row temperature; greedy rows (temperature 0) keep only their argmax token.

    The fallback for generation configs with warpers RowSampler does not implement
    (min_p, typical_p, ...): generate() places custom processors after its own
    (repetition penalty, min length) and before its warpers, exactly where
    TemperatureLogitsWarper would sit.
    """

    def __init__(self, temps: list[float], device: str):
        self.greedy = torch.tensor([t == 0.0 for t in temps], device=device)
        self.temps = torch.tensor([t if t > 0 else 1.0 for t in temps], device=device).unsqueeze(1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        best = scores.argmax(dim=-1, keepdim=True)
        scaled = scores / self.temps
        only_best = torch.full_like(scores, float("-inf")).scatter_(1, best, 0.0)
        out: torch.FloatTensor = torch.where(self.greedy.unsqueeze(1), only_best, scaled)  # type: ignore[assignment]
        return out


class RowSampler(LogitsProcessor):
    """Pick each row's next token (argmax for temperature 0, else a top-k/top-p draw).

    Returns scores with only the picked token finite, for generate(do_sample=False).
    It is the last processor, so it sees the scores after repetition penalty, min length etc.
    """

    def __init__(self, temps: list[float], device: str, top_k: int, top_p: float):
        sampled = [i for i, t in enumerate(temps) if t > 0.0]
        self.all_sampled = len(sampled) == len(temps)
        self.sampled = torch.tensor(sampled, dtype=torch.long, device=device)
        self.temps = torch.tensor([temps[i] for i in sampled], device=device).unsqueeze(1)
        self.top_k = top_k
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # only the sampled rows pay for top-k (on a CPU, topk is the costly part)
        rows = scores if self.all_sampled else scores.index_select(0, self.sampled)
        k = min(self.top_k, scores.shape[-1]) if self.top_k > 0 else scores.shape[-1]
        # top-k of the scaled scores, sorted descending (temperature > 0 keeps the order)
        vals, idx = torch.topk(rows / self.temps, k, dim=-1)
        probs = vals.softmax(dim=-1)
        if self.top_p < 1.0:
            # HF's TopPLogitsWarper: drop a token when the more likely ones already hold top_p
            ahead = probs.cumsum(dim=-1) - probs
            probs = probs.masked_fill(ahead >= self.top_p, 0.0)
        drawn = idx.gather(1, torch.multinomial(probs, 1)).squeeze(1)
        picked = drawn if self.all_sampled else scores.argmax(dim=-1).index_copy_(0, self.sampled, drawn)
        out: torch.FloatTensor = torch.full_like(scores, float("-inf")).scatter_(1, picked[:, None], 0.0)  # type: ignore[assignment]
        return out


def _fast_path_params(config: GenerationConfig) -> tuple[int, float] | None:
    """(top_k, top_p) when the config's warpers are only those RowSampler implements."""
    others = (
        config.min_p is not None
        or getattr(config, "top_h", None) is not None
        or (config.typical_p is not None and config.typical_p < 1.0)
        or (config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0)
        or (config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0)
    )
    if others:
        return None
    top_k = _HF_TOP_K if config.top_k is None else config.top_k
    top_p = _HF_TOP_P if config.top_p is None else config.top_p
    return top_k, top_p


def sampling_kwargs(
    temps: list[float], device: str, config: GenerationConfig | None = None
) -> dict[str, Any]:
    """generate() arguments for a batch whose rows have these temperatures (0 = greedy).

    config: the model's generation_config (its top_k/top_p apply to sampled rows, as in HF).
    """
    if all(t == 0.0 for t in temps):
        return {"do_sample": False}
    fast = _fast_path_params(config or GenerationConfig())
    if fast is not None:
        sampler = RowSampler(temps, device, top_k=fast[0], top_p=fast[1])
        return {"do_sample": False, "logits_processor": LogitsProcessorList([sampler])}
    if len(set(temps)) == 1:
        return {"do_sample": True, "temperature": temps[0]}
    # temperature=1.0 keeps generate() from adding its own TemperatureLogitsWarper
    return {
        "do_sample": True,
        "temperature": 1.0,
        "logits_processor": LogitsProcessorList([RowTemperature(temps, device)]),
    }
