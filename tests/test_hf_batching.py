"""HF backend batching: mixed temperatures share batches without changing greedy answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from job.backends.base import GenRequest, SamplingParams
from job.backends.hf import HFBackend, RowSampler, RowTemperature, sampling_kwargs
from job.backends.hf_cache import prefilled_cache, reserved_cache


@pytest.fixture(scope="module")
def backend(tiny_model: Path) -> HFBackend:
    torch.set_num_threads(1)
    return HFBackend("hf/tiny", str(tiny_model), device="cpu")


def _req(text: str, temperature: float, seed: int | None = 0, n: int = 12) -> GenRequest:
    return GenRequest([{"role": "user", "content": text}], SamplingParams(temperature, n, seed))


def _count_calls(backend: HFBackend, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the real transformers generate: rows per call."""
    calls: list[int] = []
    real = backend.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(backend.model, "generate", spy)
    return calls


def test_row_temperature_processor() -> None:
    scores = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [3.0, 3.0, 0.0]])
    out = RowTemperature([0.0, 0.5, 0.0], "cpu")(torch.zeros(3, 1, dtype=torch.long), scores.clone())
    assert out[0].tolist() == [float("-inf"), 0.0, float("-inf")]
    assert out[1].tolist() == [2.0, 6.0, 4.0]
    # a tie keeps exactly one token, the first, like torch.argmax in greedy search
    assert out[2].tolist() == [0.0, float("-inf"), float("-inf")]


def test_sampling_kwargs_pick_row_sampler_or_hf_paths() -> None:
    assert sampling_kwargs([0.0, 0.0], "cpu") == {"do_sample": False}
    fast = sampling_kwargs([0.0, 0.7], "cpu", GenerationConfig())
    assert fast["do_sample"] is False and isinstance(fast["logits_processor"][0], RowSampler)
    # a warper RowSampler does not implement (min_p): HF's own sampling paths
    min_p = GenerationConfig(min_p=0.1)
    assert sampling_kwargs([0.7, 0.7], "cpu", min_p) == {"do_sample": True, "temperature": 0.7}
    mixed = sampling_kwargs([0.0, 0.7], "cpu", min_p)
    assert mixed["do_sample"] is True and mixed["temperature"] == 1.0
    assert isinstance(mixed["logits_processor"][0], RowTemperature)


@pytest.mark.parametrize(("temp", "top_k", "top_p"), [(0.7, 50, 1.0), (1.0, 4, 0.8), (0.3, 0, 0.9)])
def test_row_sampler_draws_from_hfs_distribution(temp: float, top_k: int, top_p: float) -> None:
    """Frequencies of RowSampler's draws match HF's temperature -> top-k -> top-p probabilities."""
    torch.manual_seed(0)
    logits = torch.randn(1, 10) * 2
    warped = TemperatureLogitsWarper(temp)(torch.zeros(1, 1, dtype=torch.long), logits.clone())
    if top_k:
        warped = TopKLogitsWarper(top_k)(torch.zeros(1, 1, dtype=torch.long), warped)
    warped = TopPLogitsWarper(top_p)(torch.zeros(1, 1, dtype=torch.long), warped)
    expected = warped.softmax(-1)[0]
    n = 20000
    # greedy rows interleaved with the sampled ones keep their argmax
    temps = [temp if i % 2 else 0.0 for i in range(2 * n)]
    out = RowSampler(temps, "cpu", top_k, top_p)(
        torch.zeros(2 * n, 1, dtype=torch.long), logits.repeat(2 * n, 1)
    )
    assert bool((out.isfinite().sum(-1) == 1).all()), "exactly one finite token per row"
    picked = out.argmax(-1)
    assert bool((picked[0::2] == logits.argmax()).all())
    freq = torch.bincount(picked[1::2], minlength=10).float() / n
    assert set(freq.nonzero().flatten().tolist()) <= set(expected.nonzero().flatten().tolist())
    assert torch.allclose(freq, expected, atol=0.015), (freq, expected)


def test_reserved_cache_matches_dynamic_cache(tiny_model: Path) -> None:
    """Same greedy tokens and logits as transformers' own DynamicCache, without per-step copies."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    ids = torch.tensor([[0, 0, 5, 9, 14, 3], [7, 8, 9, 10, 11, 12]])
    mask = (ids != 0).long()
    common = {"attention_mask": mask, "max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        plain = model.generate(ids, output_logits=True, return_dict_in_generate=True, **common)
        cache = reserved_cache(model.config, 8)
        assert cache is not None
        reserved = model.generate(
            ids, past_key_values=cache, output_logits=True, return_dict_in_generate=True, **common
        )
    assert torch.equal(plain.sequences, reserved.sequences)
    for a, b in zip(plain.logits, reserved.logits, strict=True):
        torch.testing.assert_close(a, b)
    layer = cache.layers[0]
    assert layer.keys.shape[-2] == ids.shape[1] + 7, "attention sees exactly the filled positions"
    assert layer._k.shape[-2] == ids.shape[1] + 8, "one buffer, allocated at prefill"


def test_mixed_temperatures_share_one_call_and_keep_greedy_answers(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = [f"question number {i} about lighthouses" for i in range(8)]
    greedy_alone = backend.generate([_req(p, 0.0) for p in prompts])
    calls = _count_calls(backend, monkeypatch)
    temps = [0.0, 0.7, 0.0, 0.1, 0.0, 0.7, 0.0, 0.1]
    mixed = backend.generate([_req(p, t) for p, t in zip(prompts, temps, strict=True)])
    assert calls == [8], "one generate call for the whole (max tokens, seed) group"
    for k, t in enumerate(temps):
        if t == 0.0:
            assert mixed[k].text == greedy_alone[k].text
    # sampled rows are reproducible for a given seed
    again = backend.generate([_req(p, t) for p, t in zip(prompts, temps, strict=True)])
    assert [r.text for r in again] == [r.text for r in mixed]


def test_groups_split_by_seed_and_max_tokens(backend: HFBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_calls(backend, monkeypatch)
    reqs = [
        _req("a", 0.7, seed=0),
        _req("b", 0.7, seed=1),
        _req("c", 0.0, seed=0),
        _req("d", 0.0, seed=0, n=5),
    ]
    results = backend.generate(reqs)
    assert sorted(calls) == [1, 1, 2]
    assert all(r.ok for r in results)


def test_min_new_tokens_forces_exact_length(tiny_model: Path) -> None:
    forced = HFBackend("hf/tiny", str(tiny_model), device="cpu", min_new_tokens=20)
    results = forced.generate([_req(f"q{i}", t, n=20) for i, t in enumerate([0.0, 0.7, 0.1])])
    assert [r.num_tokens for r in results] == [20, 20, 20]
    assert {r.finish_reason for r in results} == {"length"}


def test_grouped_prefill_keeps_greedy_answers(backend: HFBackend) -> None:
    """Prompts of very different lengths are prefilled in groups; answers equal one-at-a-time runs."""
    prompts = [" ".join(["lighthouse keeper counts umbrellas"] * k) for k in (1, 2, 9, 10, 40)]
    reqs = [_req(p, 0.0, n=16) for p in prompts]
    ids = [backend.tokenizer(backend.render(r), add_special_tokens=False)["input_ids"] for r in reqs]
    cache = prefilled_cache(backend.model, ids, backend.tokenizer.pad_token_id, 16)
    assert cache is not None, "several length groups: grouped prefill applies"
    assert cache.get_seq_length() == max(len(x) for x in ids) - 1
    alone = [backend.generate([r])[0].text for r in reqs]
    assert [r.text for r in backend.generate(reqs)] == alone
    # one length group: the usual padded prefill
    assert prefilled_cache(backend.model, [ids[0], ids[0]], 0, 16) is None
