"""The reference points of bench_generate.py, on our loaded model and tokenizer: FastChat's
`gen_model_answer` loop (one question, choice and turn per `generate` call), plain
transformers batched `generate` (left-padded waves, a wave waits for its longest answer),
and the CPU compute bound."""

from __future__ import annotations

import time
from typing import Any


def _answer(tok: Any, output_ids: list[int], stop_ids: set[int]) -> tuple[str, int]:
    """FastChat's post-processing of one answer: cut at the first stop token, decode, drop
    special tokens; and the new tokens it counts (EOS excluded, as our backends count)."""
    cut = [k for k, t in enumerate(output_ids) if t in stop_ids]
    if cut:
        output_ids = output_ids[: cut[0]]
    output = tok.decode(output_ids, spaces_between_special_tokens=False)
    for s in tok.all_special_tokens:
        if s:
            output = output.replace(s, "")
    return output.strip(), len(output_ids)


def _generate_kwargs(tok: Any, temperature: float, n: int, forced: bool) -> dict[str, Any]:
    do_sample = temperature >= 1e-4
    kw = {"do_sample": do_sample, "temperature": temperature if do_sample else None, "max_new_tokens": n}
    return {**kw, "min_new_tokens": n if forced else None, "pad_token_id": tok.pad_token_id}


def fastchat_loop(
    backend: Any, questions: list[Any], num_choices: int, n: int, forced: bool = True
) -> tuple[int, float, float]:
    """FastChat gen_model_answer.get_model_answers: one question, one choice, one turn at a time."""
    import torch

    from job.benches import FASTCHAT

    model, tok = backend.model, backend.tokenizer
    stop_ids = set(backend.eos_ids)
    tokens = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for q in questions:
            temperature = FASTCHAT.temperature(q.category)
            for i in range(num_choices):
                torch.manual_seed(i)
                messages: list[dict[str, str]] = []
                for turn in q.turns:
                    messages.append({"role": "user", "content": turn})
                    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                    input_ids = tok([prompt], add_special_tokens=False).input_ids
                    output_ids = model.generate(
                        torch.as_tensor(input_ids, device=model.device),
                        **_generate_kwargs(tok, temperature, n, forced),
                    )
                    output, count = _answer(tok, output_ids[0][len(input_ids[0]) :].tolist(), stop_ids)
                    tokens += count
                    messages.append({"role": "assistant", "content": output})
    return tokens, time.perf_counter() - t0, time.process_time() - c0


def plain_generate(
    backend: Any, questions: list[Any], num_choices: int, n: int, wave: int, forced: bool = True
) -> tuple[int, float, float]:
    """Plain transformers batched `generate`: conversations grouped by temperature (one
    `generate` call takes one), in question order, cut into waves of `wave`; each wave runs
    turn 1 as one left-padded batch, then turn 2, with HF's own sampling (one seed per run)."""
    import torch

    from job.benches import FASTCHAT

    model, tok = backend.model, backend.tokenizer
    stop_ids = set(backend.eos_ids)
    by_temperature: dict[float, list[Any]] = {}
    for q in questions:
        by_temperature.setdefault(FASTCHAT.temperature(q.category), []).extend([q] * num_choices)
    tokens = 0
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    with torch.inference_mode():
        for temperature, convs in by_temperature.items():
            for w in range(0, len(convs), wave):
                tokens += _plain_wave(model, tok, stop_ids, convs[w : w + wave], temperature, n, forced)
    return tokens, time.perf_counter() - t0, time.process_time() - c0


def _plain_wave(
    model: Any, tok: Any, stop_ids: set[int], convs: list[Any], temperature: float, n: int, forced: bool
) -> int:
    """One wave of plain batched generate: every turn of its conversations (questions)."""
    messages: list[list[dict[str, str]]] = [[] for _ in convs]
    tokens = 0
    for turn in range(max(len(q.turns) for q in convs)):
        rows = [k for k, q in enumerate(convs) if turn < len(q.turns)]
        for k in rows:
            messages[k].append({"role": "user", "content": convs[k].turns[turn]})
        prompts = [
            tok.apply_chat_template(messages[k], add_generation_prompt=True, tokenize=False) for k in rows
        ]
        enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
        out = model.generate(**enc, **_generate_kwargs(tok, temperature, n, forced))
        for k, ids in zip(rows, out[:, enc["input_ids"].shape[1] :].tolist(), strict=True):
            text, count = _answer(tok, ids, stop_ids)
            tokens += count
            messages[k].append({"role": "assistant", "content": text})
    return tokens


def compute_bound(backend: Any, size: int = 1024, repeats: int = 5) -> tuple[float, float] | None:
    """(matmul GFLOP/s measured here, new tokens/s at that rate): decoding one token costs about
    2 x parameters FLOP. None on a GPU, where memory bandwidth, not FLOP/s, bounds decoding."""
    import torch

    if backend.device != "cpu":
        return None
    a = torch.randn(size, size, dtype=backend.dtype)
    a @ a  # warm up the BLAS threads
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    flops = 2 * size**3 / best
    params = sum(p.numel() for p in backend.model.parameters())
    return flops / 1e9, flops / (2 * params)
