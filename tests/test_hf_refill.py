"""The hf backend's continuous batching (job.backends.hf_refill): every request gets the tokens
generate() gives it alone; finished rows are refilled at once; a conversation's turn 2 starts
when its own turn 1 ends; OOMs shrink the batch for the rest of the run; stop/length/context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from job.backends.base import GenRequest, GenResult, SamplingParams
from job.backends.hf import HFBackend
from job.generate import Conversation, run_waves
from job.records import Question

PROMPTS = [
    " ".join(["lighthouse keeper counts umbrellas"] * k) + f" {i}"
    for i, k in enumerate((1, 2, 9, 10, 40, 3, 1, 5))
]
TEMPS = [0.0, 0.7, 0.0, 0.1, 0.0, 0.7, 0.0, 1.0]
LIMITS = [16, 30, 5, 40, 16, 8, 50, 3]


def _req(text: str, temperature: float, n: int, seed: int = 0) -> GenRequest:
    return GenRequest([{"role": "user", "content": text}], SamplingParams(temperature, n, seed))


def _reqs() -> list[GenRequest]:
    return [_req(p, t, n) for p, t, n in zip(PROMPTS, TEMPS, LIMITS, strict=True)]


def _hf(tiny_model: Path, **opts: Any) -> HFBackend:
    torch.set_num_threads(1)
    return HFBackend("hf/tiny", str(tiny_model), device="cpu", **opts)


@pytest.fixture(scope="module")
def alone(tiny_model: Path) -> list[GenResult]:
    """Each request run alone through transformers' generate (the batch path, one row)."""
    b = _hf(tiny_model, batch_size=1, min_new_tokens=100)
    return [b.generate([r])[0] for r in _reqs()]


def _spy_steps(b: HFBackend, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every decoding step (one new token per row) of the real model."""
    steps: list[int] = []
    real = b.model.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[1] == 1:
            steps.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(b.model, "forward", spy)
    return steps


def _texts(results: list[list[GenResult]]) -> list[str]:
    return [r[0].text for r in results]


def test_refill_gives_generates_tokens_and_refills_finished_rows(
    tiny_model: Path, alone: list[GenResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    b = _hf(tiny_model, batch_size=3, min_new_tokens=100)  # EOS masked: every row runs to its limit
    assert b.streams_conversations, "the tiny Llama qualifies for continuous batching"
    steps = _spy_steps(b, monkeypatch)
    out = b.generate_conversations(_reqs(), lambda i, r: None)
    assert _texts(out) == [r.text for r in alone], "greedy and seeded sampled rows as generate gives alone"
    assert [r[0].num_tokens for r in out] == LIMITS
    assert {r[0].finish_reason for r in out} == {"length"}
    # 3 slots, limits 16 30 5 | 40 16 8 50 3 in order: r2 ends at step 5 and r3 takes its slot,
    # r0 ends at 16 -> r4 (ends 32), r1 at 30 -> r5 (38), r4 at 32 -> r6 (82), r5 at 38 -> r7 (41).
    # Waves of 3 would take 30 + 40 + 50 = 120 steps.
    assert len(steps) == 82 and max(steps) == 3


def test_the_token_budget_sizes_the_batch(tiny_model: Path, alone: list[GenResult]) -> None:
    b = _hf(tiny_model, token_budget=150, min_new_tokens=100)
    assert _texts(b.generate_conversations(_reqs(), lambda i, r: None)) == [r.text for r in alone]


def _questions() -> list[Question]:
    return [
        Question(question_id=i + 1, category="writing", turns=[f"tell me about lighthouse {i}", "and then?"])
        for i in range(4)
    ]


def _convs(temps: list[float], n: int) -> list[Conversation]:
    return [Conversation(q, 0, SamplingParams(t, n, 0)) for q, t in zip(_questions(), temps, strict=True)]


def test_two_turns_equal_the_turn_waves_and_turn_2_does_not_wait(tiny_model: Path) -> None:
    temps = [0.0, 0.7, 0.0, 0.7]
    waves = _convs(temps, 12)
    run_waves(_hf(tiny_model, refill=False), waves, True, lambda d, t: None)
    refill = _convs(temps, 12)
    b = _hf(tiny_model)
    assert b.streams_conversations and not _hf(tiny_model, refill=False).streams_conversations
    run_waves(b, refill, True, lambda d, t: None)
    assert [c.answers for c in refill] == [c.answers for c in waves]
    assert [c.num_tokens for c in refill] == [c.num_tokens for c in waves]
    assert [c.finish_reasons for c in refill] == [c.finish_reasons for c in waves]
    # two slots, turn 1 of conversation 0 short: its turn 2 runs before conversation 2's turn 1
    order: list[tuple[int, int]] = []
    turns = [2 * [_questions()[0].turns[0]], ["a", "b"], ["c", "d"]]

    def follow_up(i: int, res: GenResult) -> GenRequest | None:
        order.append((i, len([o for o in order if o[0] == i]) + 1))
        return _req(turns[i][1], 0.0, 4) if order[-1][1] == 1 else None

    _hf(tiny_model, batch_size=2).generate_conversations(
        [_req(turns[0][0], 0.0, 3), _req(turns[1][0], 0.0, 30), _req(turns[2][0], 0.0, 5)], follow_up
    )
    assert order.index((0, 2)) < order.index((2, 1)) < order.index((1, 1))


def test_prefill_reuses_the_same_prompt_and_the_previous_turn(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Choices of one question prefill their turn 1 once; turn 2 prefills only what follows
    the turn-1 prompt and answer; rows admitted together share a forward (hf_prefill); the
    answers stay those of the turn waves."""
    b = _hf(tiny_model)
    forwards: list[list[int]] = []  # per prefill forward: the new (unpadded) tokens of each row
    real = b.model.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        if ids.shape[1] > 1:  # unpadded (no mask): every column is the row's own
            forwards.append(
                mask[:, -ids.shape[1] :].sum(dim=1).tolist() if mask is not None else [ids.shape[1]]
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(b.model, "forward", spy)
    qs = _questions()[:2]
    convs = [Conversation(q, c, SamplingParams(0.7, 12, c)) for q in qs for c in range(3)]
    run_waves(b, convs, False, lambda d, t: None)
    waves = [Conversation(q, c, SamplingParams(0.7, 12, c)) for q in qs for c in range(3)]
    run_waves(_hf(tiny_model, refill=False), waves, False, lambda d, t: None)
    assert [c.answers for c in convs] == [c.answers for c in waves]
    first = [
        len(b.tokenizer(b.render(_req(q.turns[0], 0.0, 1)), add_special_tokens=False)["input_ids"]) - 1
        for q in qs
    ]
    assert sorted(forwards[0]) == sorted(first), "one forward, one row per question (not per choice)"
    # a turn-2 prompt starts with its turn-1 prompt (the answer's tokens may re-encode differently)
    second = [
        len(b.tokenizer(b.render(GenRequest(c.messages_for_turn(1))), add_special_tokens=False)["input_ids"])
        - 1
        - (first[k // 3] + 1)
        for k, c in enumerate(convs)
    ]
    rows = [n for f in forwards[1:] for n in f]
    assert len(rows) == 6 and len(forwards) < 1 + 6, "turn-2 rows admitted together share forwards"
    assert all(0 < p <= s for p, s in zip(sorted(rows), sorted(second), strict=True)), "turn 2 reuses turn 1"


def test_an_oom_halves_the_rows_for_the_rest_of_the_run(
    tiny_model: Path, alone: list[GenResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    b = _hf(tiny_model, min_new_tokens=100)
    real = b.model.forward

    def oom_above_two_rows(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"]
        if ids.shape[0] > 2 or ids.shape[1] > 200:  # a step of 3+ rows, or a long prompt's prefill
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(b.model, "forward", oom_above_two_rows)
    out = b.generate_conversations(_reqs(), lambda i, r: None)
    assert _texts(out) == [r.text for r in alone]
    assert b.refill_rows == 2, "8 rows fit the budget: 8 -> 4 -> 2 rows"
    long = _req("lighthouse " * 250, 0.0, 4)  # ~250 tokens
    res = b.generate_conversations([_reqs()[0], long, _reqs()[2]], lambda i, r: None)
    assert [r[0].status for r in res] == ["ok", "error", "ok"], (
        "a prefill that fails alone fails its row only"
    )
    assert "OutOfMemoryError" in str(res[1][0].error)


def test_stop_at_eos_and_at_the_context_end(tiny_model: Path) -> None:
    b, waves = _hf(tiny_model), _hf(tiny_model, refill=False)
    free = b.generate_conversations([_reqs()[0]], lambda i, r: None)[0][0]
    token = b.tokenizer(free.text, add_special_tokens=False)["input_ids"][3]
    # declare a token of the answer an EOS: the answer ends before it, as generate() ends it
    b.eos_ids = waves.eos_ids = [*b.eos_ids, token]
    cut = b.generate_conversations([_reqs()[0]], lambda i, r: None)[0][0]
    assert cut.finish_reason == "stop" and 0 < cut.num_tokens < free.num_tokens
    assert (cut.text, cut.num_tokens) == (lambda r: (r.text, r.num_tokens))(waves.generate([_reqs()[0]])[0])
    n = len(b.tokenizer(b.render(_reqs()[6]), add_special_tokens=False)["input_ids"])
    b.max_positions = n + 5  # a model whose context ends 5 tokens after this prompt
    res = b.generate_conversations([_reqs()[6]], lambda i, r: None)[0][0]
    assert res.num_tokens == 5 and res.finish_reason == "length"


def test_models_with_their_own_logits_processors_keep_generate(tiny_model: Path) -> None:
    b = _hf(tiny_model)
    b.model.generation_config.repetition_penalty = 1.3
    from job.backends.hf_refill import refill_applies

    assert not refill_applies(b.model)
