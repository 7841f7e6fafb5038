"""Batched prefill of the continuous batch (job.backends.hf_prefill): rows of different lengths,
with and without an already computed prefix, prefilled together give each row the keys and
values that prefilling it alone gives; the grouping covers every row once within its limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicCache

from job.backends.hf_cache import cache_kwarg
from job.backends.hf_prefill import RATIO, SLACK, Prefill, groups, prefill


@pytest.fixture(scope="module")
def model(tiny_model: Path):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()


def _alone(model, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[no-untyped-def]
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), use_cache=True, **{cache_kwarg(model): cache})
    return [(layer.keys, layer.values) for layer in cache.layers]


def test_rows_prefilled_together_equal_each_row_alone(model) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (7, 9, 8, 30, 12, 5)]
    # row 4 continues from its first 5 tokens (a previous turn), row 5 is all prefix
    jobs = [Prefill(s) for s in seqs[:4]]
    jobs.append(Prefill(seqs[4], [(k[..., :5, :], v[..., :5, :]) for k, v in _alone(model, seqs[4][:5])]))
    jobs.append(Prefill(seqs[5], _alone(model, seqs[5])))
    forwards: list[tuple[int, ...]] = []
    real, kw = model.forward, cache_kwarg(model)

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        forwards.append(tuple(kwargs["input_ids"].shape))
        return real(*args, **kwargs)

    model.forward = spy
    try:
        out = prefill(model, kw, jobs, pad=0)
    finally:
        del model.forward
    assert forwards == [(4, 9), (1, 30)], "7, 9, 8 and the 7 new tokens of row 4 share a forward; 30 alone"
    for job, kv in zip(jobs, out, strict=True):
        want = _alone(model, job.ids)
        assert len(kv) == len(want)
        for (k, v), (wk, wv) in zip(kv, want, strict=True):
            assert k.shape == wk.shape == (1, wk.shape[1], len(job.ids), wk.shape[-1])
            torch.testing.assert_close(k, wk, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(v, wv, atol=1e-5, rtol=1e-4)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), min_size=1, max_size=40),
    st.integers(1, 4096),
)
def test_groups_cover_every_row_with_new_tokens_once(rows: list[tuple[int, int]], limit: int) -> None:
    jobs = [
        Prefill([0] * (d + n), [(torch.zeros(1, 1, d, 1), torch.zeros(1, 1, d, 1))] if d else None)
        for d, n in rows
    ]
    out = groups(jobs, limit)
    flat = sorted(i for g in out for i in g)
    assert flat == [i for i, (_, n) in enumerate(rows) if n]
    for g in out:
        news = [jobs[i].new for i in g]
        assert max(news) <= RATIO * min(news) + SLACK
        assert len(g) == 1 or len(g) * (max(jobs[i].done for i in g) + max(news)) <= limit


def test_a_cache_reallocation_frees_each_old_layer_once_copied(model, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SlotCache.fit copies into a larger buffer layer by layer, dropping each old layer as it
    goes: the peak is one cache plus a layer, not two caches (which a token budget of 80% of
    free memory would not survive)."""
    import weakref

    from job.backends import hf_cache
    from job.backends.hf_memory import kv_shape

    cache = hf_cache.SlotCache(model.config, *kv_shape(model.config), torch.float32, "cpu")
    cache.fit([None, None], 4, 4)
    kv = _alone(model, list(range(3, 7)))
    cache.put(0, kv, 4)
    old = [weakref.ref(layer.k) for layer in cache.cache.layers]
    alive_at_alloc: list[int] = []
    real_zeros = torch.zeros

    def zeros(*args, **kwargs):  # type: ignore[no-untyped-def]
        if len(args) == 4:  # a layer's keys: how many old layers are still held
            alive_at_alloc.append(sum(r() is not None for r in old))
        return real_zeros(*args, **kwargs)

    monkeypatch.setattr(hf_cache.torch, "zeros", zeros)
    cache.fit([0, 1, None], 40, 8)  # a third row and more room: a new buffer
    n = len(old)
    assert alive_at_alloc == list(range(n, 0, -1)), "layer i is allocated once layers < i are freed"
    assert torch.equal(cache.cache.layers[0].keys[0, :, -4:], kv[0][0][0]), "row 0 kept its keys"
