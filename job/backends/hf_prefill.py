"""Batched prefill for the continuous batch (hf_refill): the rows admitted at one step are
prefilled together, a forward per group of similar length, not one forward per row.

A row may start from keys/values it already has (a conversation's next turn reuses its
previous turn's cache up to where their tokens part), so rows differ in both the cached
prefix and the new tokens. A group is laid out as [left pad | prefix | new tokens | right
pad]: the prefixes left-padded to the longest, the new tokens right-padded to the longest.
Causal attention never lets a real token see the right padding, and every row's keys and
values end up contiguous (prefix then new tokens), so a row is one slice. Its outputs are
what prefilling it alone gives, up to float rounding (masked columns add exact zeros).

On CPU one forward of a single short turn-2 suffix ran at ~250 tokens/s, eight of them
together at ~600: the weights are read once per forward, whatever its rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer (keys, values), each [1, kv heads, tokens, head dim]."""

GROUP_TOKENS = 8192
"""At most this many padded columns (rows x (prefix + new)) in one prefill forward: bounds the
activations and an attention fallback's score matrix; larger groups gain little."""

RATIO = 1.25
"""Rows whose new-token counts are within this ratio (plus SLACK) share a group: the padding
they compute is at most ~20% of a group's tokens."""

SLACK = 8


@dataclass
class Prefill:
    """One row to prefill: `ids` are the tokens to cache; the first `len(prefix)` of them are
    already computed (`prefix` per layer keys/values, or None)."""

    ids: list[int]
    prefix: KV | None = None

    @property
    def done(self) -> int:
        return int(self.prefix[0][0].shape[-2]) if self.prefix else 0

    @property
    def new(self) -> int:
        return len(self.ids) - self.done


def groups(jobs: list[Prefill], limit: int = GROUP_TOKENS) -> list[list[int]]:
    """Indices of `jobs` with new tokens, grouped by similar new-token count, each group at most
    `limit` padded columns (a row alone may exceed it)."""
    order = sorted((i for i, j in enumerate(jobs) if j.new), key=lambda i: jobs[i].new)
    out: list[list[int]] = []
    for i in order:
        g = out[-1] if out else None
        if g is not None:
            width = max(jobs[k].done for k in (*g, i)) + jobs[i].new
            if jobs[i].new <= RATIO * jobs[g[0]].new + SLACK and (len(g) + 1) * width <= limit:
                g.append(i)
                continue
        out.append([i])
    return out


@torch.inference_mode()
def prefill(model: Any, cache_kw: str, jobs: list[Prefill], pad: int, limit: int = GROUP_TOKENS) -> list[KV]:
    """Each job's keys/values for all its `ids`: prefixes copied, new tokens computed in groups."""
    # nothing new: its prefix alone (copied: it may be a view of a slot); the rest is computed
    out: list[KV] = [[(k.clone(), v.clone()) for k, v in j.prefix or []] if not j.new else [] for j in jobs]
    for group in groups(jobs, limit):
        for i, kv in zip(group, _forward(model, cache_kw, [jobs[i] for i in group], pad), strict=True):
            out[i] = kv
    return out


def _forward(model: Any, cache_kw: str, jobs: list[Prefill], pad: int) -> list[KV]:
    device = model.device
    p, n = max(j.done for j in jobs), max(j.new for j in jobs)
    cache = DynamicCache(config=model.config)
    if p:
        for layer in range(len(next(j.prefix for j in jobs if j.prefix))):
            k, v = (_left_padded([j.prefix[layer][x] if j.prefix else None for j in jobs], p) for x in (0, 1))
            cache.update(k, v, layer)
    ids = torch.tensor([j.ids[j.done :] + [pad] * (n - j.new) for j in jobs], device=device)
    mask = torch.tensor(
        [[0] * (p - j.done) + [1] * len(j.ids) + [0] * (n - j.new) for j in jobs], device=device
    )
    pos = torch.tensor([j.done for j in jobs], device=device)[:, None] + torch.arange(n, device=device)
    model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        use_cache=True,
        logits_to_keep=1,
        **{cache_kw: cache},
    )
    return [
        [
            (
                layer.keys[r : r + 1, :, p - j.done : p + j.new],
                layer.values[r : r + 1, :, p - j.done : p + j.new],
            )
            for layer in cache.layers
        ]
        for r, j in enumerate(jobs)
    ]


def _left_padded(parts: list[torch.Tensor | None], width: int) -> torch.Tensor:
    """[rows, heads, width, dim]: each row's [1, heads, t, dim] at the right end, zeros before."""
    like = next(t for t in parts if t is not None)
    out = like.new_zeros((len(parts), like.shape[1], width, like.shape[-1]))
    for r, t in enumerate(parts):
        if t is not None and t.shape[-2]:
            out[r, :, width - t.shape[-2] :] = t[0]
    return out
