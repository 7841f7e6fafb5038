"""Per-row sampling for batched HF generate: greedy and sampled rows share one call.

`RowSampler` does temperature -> top-k -> top-p and the draw itself inside a logits
processor and leaves one finite token per row, so generate() runs in greedy mode and
just takes it. The distribution is HF's (same order of warpers, same defaults); configs
with other warpers (min_p, typical_p, ...) run HF's own warper objects in that order.

Each sampled row draws from its own seeded stream (`row_draws`), so a sampled answer
depends on its prompt, temperature and seed only, never on which rows share its batch,
the batch size or the shard. The fast path draws over the top-k candidates only: a
draw over the whole vocabulary at batch size 64 and vocab 2048 was a fifth of all CPU
time (on a GPU with a 128k vocab it is the same waste).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

# HF's own defaults for fields a model's generation_config leaves unset
_HF_TOP_K, _HF_TOP_P = 50, 1.0


def row_draws(seeds: list[int], steps: int, device: str) -> torch.Tensor:
    """[rows, steps] uniforms in [0, 1), row i from its own generator seeded with seeds[i].

    A row's t-th token is drawn with its own t-th number, so what it samples depends on its
    seed and its logits only: not on its batch-mates, the batch size or the order of rows
    (a global generator hands out numbers in batch order). Drawn on the CPU, so the same
    seed gives the same numbers on every device.
    """
    rows = [torch.rand(steps, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return (torch.stack(rows) if rows else torch.empty(0, steps)).to(device)


class RowSampler(LogitsProcessor):
    """Pick each row's next token (argmax for temperature 0, else a draw from its own stream).

    Returns scores with only the picked token finite, for generate(do_sample=False).
    It is the last processor, so it sees the scores after repetition penalty, min length etc.
    Sampled rows: temperature, then top-k/top-p (fast path) or HF's own warpers (`warpers`,
    for configs with min_p, typical_p, ...), then an inverse-CDF draw with the row's next
    number from `row_draws`.
    """

    def __init__(
        self,
        temps: list[float],
        seeds: list[int],
        steps: int,
        device: str,
        top_k: int,
        top_p: float,
        warpers: list[LogitsProcessor] | None = None,
    ):
        sampled = [i for i, t in enumerate(temps) if t > 0.0]
        self.all_sampled = len(sampled) == len(temps)
        self.sampled = torch.tensor(sampled, dtype=torch.long, device=device)
        self.temps = torch.tensor([temps[i] for i in sampled], device=device).unsqueeze(1)
        self.draws = row_draws([seeds[i] for i in sampled], steps, device)
        self.step = 0
        self.top_k = top_k
        self.top_p = top_p
        self.warpers = warpers

    def _candidates(self, input_ids: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = input_ids if self.all_sampled else input_ids.index_select(0, self.sampled)
        return candidates(rows, self.temps, self.top_k, self.top_p, self.warpers, ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = scores if self.all_sampled else scores.index_select(0, self.sampled)
        probs, idx = self._candidates(input_ids, rows)
        drawn = draw(probs, idx, self.draws[:, self.step])
        self.step += 1
        picked = drawn if self.all_sampled else scores.argmax(dim=-1).index_copy_(0, self.sampled, drawn)
        out: torch.FloatTensor = torch.full_like(scores, float("-inf")).scatter_(1, picked[:, None], 0.0)  # type: ignore[assignment]
        return out


def candidates(
    rows: torch.Tensor,
    temps: torch.Tensor,
    top_k: int,
    top_p: float,
    warpers: list[LogitsProcessor] | None,
    input_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, token ids) per sampled row (scores `rows`, temperatures `temps` [n, 1]):
    the distribution HF would sample from."""
    scaled = rows / temps
    if warpers is not None:
        for warper in warpers:
            scaled = warper(input_ids, scaled)
        return scaled.softmax(dim=-1), torch.arange(scaled.shape[-1], device=scaled.device).expand_as(scaled)
    # only the top-k pay for the softmax (on a CPU, topk is the costly part); sorted descending
    k = min(top_k, rows.shape[-1]) if top_k > 0 else rows.shape[-1]
    vals, idx = torch.topk(scaled, k, dim=-1)
    probs = vals.softmax(dim=-1)
    if top_p < 1.0:
        # HF's TopPLogitsWarper: drop a token when the more likely ones already hold top_p
        ahead = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(ahead >= top_p, 0.0)
    return probs, idx


def draw(probs: torch.Tensor, idx: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row: the candidate (token id from `idx`) where the row's uniform
    `u` (one number in [0, 1) per row) falls in its cumulative probabilities."""
    cdf = probs.cumsum(dim=-1)
    pick = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:]).clamp_(max=cdf.shape[-1] - 1)
    return idx.gather(1, pick).squeeze(1)


def _fast_path(config: GenerationConfig) -> bool:
    """Whether the config's warpers are only top-k/top-p (RowSampler's own fast path)."""
    return not (
        config.min_p is not None
        or getattr(config, "top_h", None) is not None
        or (config.typical_p is not None and config.typical_p < 1.0)
        or (config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0)
        or (config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0)
    )


def _hf_warpers(config: GenerationConfig, top_k: int, top_p: float) -> list[LogitsProcessor]:
    """HF's sampling warpers after temperature, in generate()'s order."""
    out: list[LogitsProcessor] = []
    if getattr(config, "top_h", None) is not None:
        from transformers.generation.logits_process import TopHLogitsWarper

        out.append(TopHLogitsWarper(top_h=config.top_h))
    if top_k:
        out.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p))
    if config.min_p is not None:
        out.append(MinPLogitsWarper(config.min_p))
    if config.typical_p is not None and config.typical_p < 1.0:
        out.append(TypicalLogitsWarper(mass=config.typical_p))
    if config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0:
        out.append(EpsilonLogitsWarper(config.epsilon_cutoff))
    if config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0:
        out.append(EtaLogitsWarper(config.eta_cutoff))
    return out


def sampling_kwargs(
    temps: list[float], seeds: list[int], steps: int, device: str, config: GenerationConfig | None = None
) -> dict[str, Any]:
    """generate() arguments for a batch whose rows have these temperatures (0 = greedy) and
    per-row sampling seeds, for at most `steps` new tokens.

    config: the model's generation_config (its top_k/top_p etc. apply to sampled rows, as in HF).
    """
    if all(t == 0.0 for t in temps):
        return {"do_sample": False}
    sampler = RowSampler(temps, seeds, steps, device, *sampler_settings(config))
    return {"do_sample": False, "logits_processor": LogitsProcessorList([sampler])}


def sampler_settings(config: GenerationConfig | None) -> tuple[int, float, list[LogitsProcessor] | None]:
    """(top_k, top_p, HF warpers or None for the fast path) that sampled rows use under this
    generation config, as HF's sampling would."""
    config = config or GenerationConfig()
    top_k = _HF_TOP_K if config.top_k is None else config.top_k
    top_p = _HF_TOP_P if config.top_p is None else config.top_p
    return top_k, top_p, None if _fast_path(config) else _hf_warpers(config, top_k, top_p)
