"""`job judge --dry-run`: what a run would send (calls, prompt and completion tokens, cost
with --price-per-mtok), and --dump of every request.

Prompt tokens: a local judge (`hf/DIR`, `vllm/DIR`) counts with its own tokenizer and chat
template; any other judge is estimated at CHARS_PER_TOKEN characters per token. Completion
tokens: the mean the API reported for this judge's stored judgments (`usage`), else the
per-mode assumption COMPLETION_TOKENS. No price table is built in: prices change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from job.backends import parse_spec
from job.backends.fingerprint import describe
from job.errors import JobError
from job.judge.matches import Match, judge_messages
from job.judge.plan import JudgeConfig, Plan

CHARS_PER_TOKEN = 4
"""English prose in GPT-style BPE vocabularies runs about 4 characters a token (Japanese fewer)."""
COMPLETION_TOKENS = {"single": 200, "pairwise": 300}
"""Assumed completion tokens per call when no stored judgment reports usage: FastChat's prompts
ask for a short explanation and then [[rating]] (single) or a comparison and [[A]]/[[B]]/[[C]]
(pairwise, per game)."""
Request = tuple[Match, int, str]


def parse_price(text: str | None) -> tuple[float, float] | None:
    """--price-per-mtok IN,OUT: USD per million prompt and completion tokens."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        prices = tuple(float(p) for p in parts)
    except ValueError:
        prices = ()
    if len(prices) != 2 or not all(math.isfinite(p) and p >= 0 for p in prices):
        raise JobError(
            f"--price-per-mtok {text!r}: give two prices >= 0 as IN,OUT (USD per million tokens), e.g. 2.5,10"
        )
    return prices[0], prices[1]


def cost(prompt: float, completion: float, price: tuple[float, float] | None) -> str:
    """', ~$X.XX at $IN/$OUT per Mtok', or '' without a price."""
    if price is None:
        return ""
    usd = (prompt * price[0] + completion * price[1]) / 1e6
    return f", ~${usd:.2f} at ${price[0]:g}/${price[1]:g} per Mtok"


def _local_tokenizer(spec: str) -> Any | None:
    provider, model = parse_spec(spec)
    if provider not in ("hf", "vllm") or not Path(model).is_dir():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def prompt_tokens(spec: str, requests: Sequence[Request]) -> tuple[int, str]:
    """(prompt tokens of every request, how they were counted)."""
    tok = _local_tokenizer(spec)
    if tok is None:
        chars = sum(len(m.prompt.system_prompt) + len(u) for m, _, u in requests)
        return -(-chars // CHARS_PER_TOKEN), f"chars/{CHARS_PER_TOKEN}"
    # rendered and counted as the hf backend does: the template's text, no special tokens added
    templated = bool(tok.chat_template)
    n = 0
    for m, _, u in requests:
        msgs = judge_messages(m.prompt.system_prompt, u)
        text = (
            tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            if templated
            else "\n".join(x["content"] for x in msgs)  # a base model: the texts as they stand
        )
        n += len(tok(text, add_special_tokens=False)["input_ids"])
    return n, "the judge's tokenizer" + " and chat template" * templated


def completion_per_call(stored: Sequence[dict[str, Any]], pairwise: bool) -> tuple[float, str]:
    """(completion tokens per call, where the number comes from)."""
    tokens = calls = 0
    for r in stored:
        usage = r.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            tokens += usage["completion_tokens"]
            calls += (2 if pairwise else 1) + len(r.get("attempts") or [])
    if calls:
        return tokens / calls, f"mean of {calls} stored calls"
    mode = "pairwise" if pairwise else "single"
    return float(COMPLETION_TOKENS[mode]), f"assumed {COMPLETION_TOKENS[mode]}/call, {mode}"


def estimate(spec: str, mode: str, plan: Plan, price: tuple[float, float] | None) -> list[str]:
    """The dry-run lines: one for the judge, then the total."""
    n = len(plan.requests)
    prompt, how = prompt_tokens(spec, plan.requests)
    per_call, source = completion_per_call(plan.stored, mode != "single")
    completion = round(per_call * n)
    line = (
        f"judge {spec} ({mode}): {len(plan.matches)} matches, {n} calls to send ({len(plan.cached)} already stored), "
        f"~{prompt} prompt tokens ({how}), ~{completion} completion tokens ({source}){cost(prompt, completion, price)}"
    )
    total = f"total: {n} calls, ~{prompt} prompt + ~{completion} completion tokens{cost(prompt, completion, price)}"
    return [line, total]


def _dump_line(m: Match, game: int, user: str) -> dict[str, Any]:
    d: dict[str, Any] = {
        "question_id": m.question.question_id, "turn": m.turn, "choice": m.choice, "prompt_name": m.prompt.name,
        "system_prompt": m.prompt.system_prompt, "user_prompt": user,
    }  # fmt: skip
    if m.pairwise:
        d.update(model_1=m.models[0], model_2=m.models[1], game=game)
    else:
        d["model"] = m.models[0]
    if m.sample:
        d["sample"] = m.sample
    return d


def dry_run(cfg: JudgeConfig, plan: Plan) -> None:
    for line in estimate(cfg.judge_model, cfg.mode, plan, cfg.price_per_mtok):
        print(line)
    if plan.provenance["judge_fingerprint"]:
        print(f"judge model fingerprint: {describe(plan.provenance['judge_fingerprint'])}")
    if cfg.dump:
        with open(cfg.dump, "w", encoding="utf-8") as f:
            for m, g, u in plan.requests:
                f.write(json.dumps(_dump_line(m, g, u), ensure_ascii=False) + "\n")
        print(f"wrote {len(plan.requests)} requests to {cfg.dump}")
