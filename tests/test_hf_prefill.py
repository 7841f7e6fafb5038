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


def test_a_cache_reallocation_reuses_its_memory_and_frees_each_old_layer_once_copied(
    model, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """SlotCache.fit lays the cache out anew in the same memory where it is large enough (fresh
    memory is page-faulted in several times slower on CPU); where it must grow, each layer's old
    memory is freed once copied: the peak is one cache plus a layer, not two caches (which a
    token budget of 80% of free memory would not survive). Kept rows keep their keys; every
    other column in the attention window is zeros (masked, never garbage: NaN x 0 is NaN)."""
    import weakref

    from job.backends import hf_cache
    from job.backends.hf_memory import kv_shape

    cache = hf_cache.SlotCache(model.config, *kv_shape(model.config), torch.float32, "cpu")
    cache.fit([None, None, None], 4, 30)
    kv = _alone(model, list(range(3, 7)))
    cache.put(1, kv, 4)
    ptr = cache.cache.layers[0].k.data_ptr()
    cache.fit([1, None], 4, 30)  # rows 0 and 2 dropped, a new one: fits the memory it has
    assert cache.cache.layers[0].k.data_ptr() == ptr, "the same memory, no fresh allocation"
    layer = cache.cache.layers[0]
    assert torch.equal(layer.keys[0, :, -4:], kv[0][0][0]), "the kept row (old row 1) kept its keys"
    assert torch.count_nonzero(layer.keys[1:]) == 0, "the new row's window is zeros (masked, never garbage)"
    cache.fit([0, 1], 7, 30)  # room for a longer row (as RefillLoop._place makes it)...
    cache.put(1, _alone(model, list(range(3, 10))), 7)  # ...whose 3 more columns come into view
    assert torch.count_nonzero(cache.cache.layers[0].keys[0, :, :3]) == 0, "and are zeros for the other rows"

    old = [weakref.ref(buf) for key, buf in cache._memory.items() if key[0] == "layer"]
    allocs: list[tuple[int, int]] = []  # (elements, old layer buffers still held) per allocation
    real = torch.empty

    def empty(*args, **kwargs):  # type: ignore[no-untyped-def]
        allocs.append((int(args[0]), sum(r() is not None for r in old)))
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_cache.torch, "empty", empty)
    cache.fit([0, None, None, None, None, None], 400, 400)  # far more rows and columns: it grows
    monkeypatch.undo()
    assert torch.equal(cache.cache.layers[0].keys[0, :, -4:], kv[0][0][0])
    size = cache.cache.layers[0].k.numel()
    held = [alive for numel, alive in allocs if numel >= size]  # the layers' new buffers, in order
    n = len(old)  # keys and values of every layer
    assert held == [n - 2 * (j // 2) for j in range(n)], "layer i grows once the layers before it are freed"
    assert all(r() is None for r in old)
