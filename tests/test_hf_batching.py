"""HF backend batching: mixed temperatures share batches without changing greedy answers;
a sampled answer does not depend on its batch; a request that cannot run fails alone."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from job.backends.base import GenRequest, SamplingParams
from job.backends.hf import HFBackend, RowSampler, sampling_kwargs
from job.backends.hf_cache import cache_kwarg, prefilled_cache, reserved_cache


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


def test_sampling_kwargs_pick_row_sampler_with_hfs_warpers_where_needed() -> None:
    assert sampling_kwargs([0.0, 0.0], [1, 2], 4, "cpu") == {"do_sample": False}
    fast = sampling_kwargs([0.0, 0.7], [1, 2], 4, "cpu", GenerationConfig())
    assert fast["do_sample"] is False and isinstance(fast["logits_processor"][0], RowSampler)
    assert fast["logits_processor"][0].warpers is None
    # a warper RowSampler does not implement itself (min_p): HF's warper objects, still per-row draws
    slow = sampling_kwargs([0.7, 0.7], [1, 2], 4, "cpu", GenerationConfig(min_p=0.1))["logits_processor"][0]
    assert [type(w) for w in slow.warpers] == [TopKLogitsWarper, MinPLogitsWarper]


CASES = [(0.7, 50, 1.0, None), (1.0, 4, 0.8, None), (0.3, 0, 0.9, None), (0.8, 50, 1.0, 0.05)]


@pytest.mark.parametrize(("temp", "top_k", "top_p", "min_p"), CASES)
def test_row_sampler_draws_from_hfs_distribution(
    temp: float, top_k: int, top_p: float, min_p: float | None
) -> None:
    """Frequencies of RowSampler's draws match HF's temperature -> top-k -> top-p (-> min-p) probabilities."""
    torch.manual_seed(0)
    logits = torch.randn(1, 10) * 2
    none = torch.zeros(1, 1, dtype=torch.long)
    warped = TemperatureLogitsWarper(temp)(none, logits.clone())
    if top_k:
        warped = TopKLogitsWarper(top_k)(none, warped)
    warped = TopPLogitsWarper(top_p)(none, warped)
    if min_p is not None:
        warped = MinPLogitsWarper(min_p)(none, warped)
    expected = warped.softmax(-1)[0]
    n = 20000
    # greedy rows interleaved with the sampled ones keep their argmax; every row has its own seed
    temps = [temp if i % 2 else 0.0 for i in range(2 * n)]
    config = GenerationConfig(top_k=top_k, top_p=top_p, min_p=min_p)
    sampler = sampling_kwargs(temps, list(range(2 * n)), 1, "cpu", config)["logits_processor"][0]
    assert (sampler.warpers is None) == (min_p is None)
    out = sampler(torch.zeros(2 * n, 1, dtype=torch.long), logits.repeat(2 * n, 1))
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
            ids, output_logits=True, return_dict_in_generate=True, **common, **{cache_kwarg(model): cache}
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


def test_groups_split_by_max_tokens_only(backend: HFBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_calls(backend, monkeypatch)
    reqs = [
        _req("a", 0.7, seed=0),
        _req("b", 0.7, seed=1),
        _req("c", 0.0, seed=0),
        _req("d", 0.0, seed=0, n=5),
    ]
    results = backend.generate(reqs)
    assert sorted(calls) == [1, 3], "seeds no longer split batches: each row has its own stream"
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


def test_a_sampled_answer_does_not_depend_on_its_batch(tiny_model: Path) -> None:
    """Same (prompt, temperature, seed) -> same text, whatever shares the batch and however it is cut."""
    mine = [
        _req(f"tell me about lighthouse {i}", t, seed=s, n=10)
        for i, (t, s) in enumerate([(0.7, 0), (1.0, 1), (0.7, 2), (0.1, 0)])
    ]
    others = [
        _req(f"a much longer and quite different question number {i} " * 3, 0.7, seed=9, n=10)
        for i in range(5)
    ]
    alone = HFBackend("hf/tiny", str(tiny_model), device="cpu", batch_size=1)
    expected = [r.text for r in alone.generate(mine)]
    assert len(set(expected)) == len(expected)
    cuts: list[dict[str, Any]] = [{}, {"batch_size": 3}, {"token_budget": 120}]
    for opts in cuts:
        b = HFBackend("hf/tiny", str(tiny_model), device="cpu", **opts)
        assert [r.text for r in b.generate(mine)] == expected, opts
        mixed = b.generate(
            [others[0], mine[2], *others[1:3], mine[0], mine[3], others[3], mine[1], others[4]]
        )
        assert [mixed[k].text for k in (4, 7, 1, 5)] == expected, f"with batch-mates {opts}"
    # another seed (choice) gives another answer
    assert alone.generate([_req(mine[0].messages[0]["content"], 0.7, seed=5, n=10)])[0].text != expected[0]


def test_a_request_that_cannot_run_fails_alone(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "no-system.jinja"
    # Gemma-style: the template itself refuses a system message
    template.write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    b = HFBackend("hf/tiny", str(tiny_model), device="cpu", chat_template=str(template))
    system = GenRequest(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        SamplingParams(0.0, 8),
    )
    too_long = _req("lighthouse " * 5000, 0.0, n=8)
    results = b.generate([_req("hello", 0.0, n=8), system, too_long, _req("hello there", 0.7, n=8)])
    assert [r.status for r in results] == ["ok", "error", "error", "ok"]
    assert (
        results[1].text == ""
        and "chat template rejected" in str(results[1].error)
        and "System role" in str(results[1].error)
    )
    assert "does not fit the model's context of 4096 tokens" in str(results[2].error)
    # an OOM that persists down to one row fails that row only
    real = b.model.generate

    def oom_on_long_rows(*args: Any, **kwargs: Any) -> Any:
        if kwargs["attention_mask"].sum(-1).max() > 40:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(b.model, "generate", oom_on_long_rows)
    reqs = [_req("short", 0.0, n=4), _req("lighthouse " * 60, 0.0, n=4), _req("also short", 0.7, n=4)]
    results = b.generate(reqs)
    assert [r.status for r in results] == ["ok", "error", "ok"]
    assert "OutOfMemoryError" in str(results[1].error)


def test_a_prompt_near_the_context_end_stops_at_the_context(tiny_model: Path) -> None:
    b = HFBackend("hf/tiny", str(tiny_model), device="cpu", min_new_tokens=64)
    req = _req("lighthouse " * 10, 0.0, n=64)
    n = len(b.tokenizer(b.render(req), add_special_tokens=False)["input_ids"])
    b.max_positions = n + 5  # as a model whose context ends 5 tokens after this prompt
    res = b.generate([req])[0]
    assert res.ok and res.num_tokens == 5 and res.finish_reason == "length"


def test_reserved_layer_reset_starts_empty(tiny_model: Path) -> None:
    """A reset cache holds nothing of its previous use (4.56 zeroes the old tensors, 5.x drops them)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    cache = reserved_cache(model.config, 4)
    assert cache is not None
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True, **{cache_kwarg(model): cache})
        assert cache.get_seq_length() == 5
        cache.reset()
        assert cache.get_seq_length() == 0
        model(input_ids=ids[:, :2], use_cache=True, **{cache_kwarg(model): cache})
    assert cache.get_seq_length() == 2


def test_the_cache_goes_by_its_current_name(backend: HFBackend) -> None:
    """transformers 5.x renamed generate's and forward's `past_key_values` to `cache` (the old
    name is removed from forward in 5.40); 4.56 knows only `past_key_values`. Neither the
    grouped prefill nor generate may use a deprecated name on the version installed."""
    prompts = [" ".join(["lighthouse keeper counts umbrellas"] * k) for k in (1, 9, 40)]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        results = backend.generate([_req(p, 0.0, n=6) for p in prompts])
    assert all(r.ok for r in results)
