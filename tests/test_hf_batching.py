"""HF backend batching: mixed temperatures share batches without changing greedy answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from job.backends.base import GenRequest, SamplingParams
from job.backends.hf import HFBackend, RowTemperature, sampling_kwargs


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


def test_sampling_kwargs_use_plain_hf_paths_when_uniform() -> None:
    assert sampling_kwargs([0.0, 0.0], "cpu") == {"do_sample": False}
    assert sampling_kwargs([0.7, 0.7], "cpu") == {"do_sample": True, "temperature": 0.7}
    mixed = sampling_kwargs([0.0, 0.7], "cpu")
    assert mixed["do_sample"] is True and mixed["temperature"] == 1.0
    assert isinstance(mixed["logits_processor"][0], RowTemperature)


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
