"""Continuous batching for the hf backend: finished rows are replaced by waiting requests.

transformers' `generate` runs a batch until its longest answer ends, and a conversation's
turn 2 waits for the whole wave of turn 1. Here every request is one row of one decoding
loop: its prompt is prefilled alone (no padding), placed into a shared KV cache
(hf_cache.SlotCache) right-aligned at the common end column, and each step feeds every row
its last token at its own position. A row that ends (EOS, its token limit, the context)
leaves at once and its slot goes to the next waiting request; a conversation's next turn
(`follow_up`) is queued first, so it starts as soon as its own previous turn ends.

Why not transformers' own continuous batching (`generate_batch`, ContinuousBatchingManager):
one GenerationConfig per manager (no per-row temperature or seeded stream), a background
thread, an API that changed between 4.56 and 5.x, paged attention built for CUDA.

A row's tokens are what `generate` gives for it alone: greedy is the argmax of the same
logits, a sampled row draws its t-th token with the t-th number of its own stream
(hf_sampling.row_draws), whichever rows share its steps.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from job.backends.base import FollowUp, GenRequest, GenResult, ProgressFn
from job.backends.hf_cache import SlotCache
from job.backends.hf_load import _first_line, _is_oom, _Row
from job.backends.hf_memory import kv_shape
from job.backends.hf_prefill import KV, Prefill, prefill
from job.backends.hf_sampling import candidates, draw, row_draws, sampler_settings
from job.errors import BackendDead

log = logging.getLogger(__name__)

# generation_config fields that make generate() apply a logits processor even when greedy;
# a model that sets any of them keeps the generate() path (turn waves)
_NEUTRAL: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "min_length": 0,
    "min_new_tokens": None,
    "renormalize_logits": False,
    "guidance_scale": None,
    "watermarking_config": None,
}


def refill_applies(model: Any) -> bool:
    """Whether the loop gives what generate() gives: full-attention cache layers only (no
    sliding window), explicit position ids, no logits processor of the model's own."""
    import inspect

    if "position_ids" not in inspect.signature(model.forward).parameters:
        return False
    layers = getattr(DynamicCache(config=model.config), "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return False
    config = model.generation_config
    return all(getattr(config, k, v) in (v, None) for k, v in _NEUTRAL.items())


@dataclass
class _Live:
    conv: int
    request: GenRequest
    row: _Row
    limit: int
    draws: list[float] | None
    out: list[int] = field(default_factory=list)

    @property
    def cached(self) -> int:
        """Tokens of this row in the cache: all but the one fed next."""
        return len(self.row.ids) - 1 + len(self.out)

    @property
    def width(self) -> int:
        """The cache columns it will need at most (all tokens but its last)."""
        return len(self.row.ids) - 1 + self.limit


class RefillLoop:
    """One run of generate_conversations on an HFBackend."""

    def __init__(self, backend: Any):  # an hf.HFBackend (not imported: hf imports this module)
        self.b = backend
        model = backend.model
        self.cache = SlotCache(model.config, *kv_shape(model.config), model.dtype, backend.device)
        self.slots: list[_Live | None] = []
        self.queue: deque[tuple[int, GenRequest]] = deque()
        self.ahead = 0
        """Queued follow-ups (next turns, restarts): at the front, in the order they came."""
        self.top_k, self.top_p, self.warpers = sampler_settings(model.generation_config)
        self.eos = torch.tensor(backend.eos_ids, device=backend.device)
        self.eos_set = set(backend.eos_ids)
        self.peek: _Live | None = None
        """The queue's head as a row, encoded once however many steps it waits."""
        self.last: tuple[tuple[int, ...], KV] | None = None
        """The last prompt prefilled: the next choice of the same question may be admitted later."""
        self._pad = backend.tokenizer.pad_token_id
        self.turns: dict[int, tuple[list[int], int, int]] = {}
        """conversation -> (tokens, slot, end column) of its turn that just ended, until the next admission."""

    def run(
        self, first: list[GenRequest], follow_up: FollowUp, progress: ProgressFn | None
    ) -> list[list[GenResult]]:
        self.results: list[list[GenResult]] = [[] for _ in first]
        self.follow_up, self.progress = follow_up, progress
        self.queue.extend(enumerate(first))
        while self.queue or self.live:
            self._admit()
            if self.live:
                self._step()
        return self.results

    @property
    def live(self) -> list[_Live]:
        return [r for r in self.slots if r is not None]

    def _deliver(self, conv: int, res: GenResult) -> None:
        self.results[conv].append(res)
        if self.progress:
            self.progress(1, res.num_tokens)
        nxt = self.follow_up(conv, res)
        if nxt is not None:  # the conversation's next turn goes first: it starts now
            self._push((conv, nxt))

    def _push(self, item: tuple[int, GenRequest]) -> None:
        self.queue.insert(self.ahead, item)
        self.ahead += 1

    def _pop(self) -> None:
        self.queue.popleft()
        self.peek = None
        self.ahead = max(0, self.ahead - 1)

    def _fits(self, rows: list[_Live]) -> bool:
        """Whether these rows may share the steps: --batch-size rows, else the token budget
        over the widest row's cache (at least one row), and never more than an OOM allowed."""
        if self.b.refill_rows and len(rows) > self.b.refill_rows:
            return False
        if self.b.batch_size:
            return len(rows) <= self.b.batch_size
        return len(rows) == 1 or len(rows) * max(r.width for r in rows) <= self.b.token_budget

    def _take(self) -> _Live | None:
        """The next waiting request as a row (still queued), or None; requests that cannot run
        fail here."""
        while self.queue:
            conv, req = self.queue[0]
            if self.peek is not None and self.peek.request is req:  # still waiting for room
                return self.peek
            enc = self.b._encode(req)
            if isinstance(enc, GenResult):
                self._pop()
                self._deliver(conv, enc)
                continue
            limit = self.b._room(enc, req.params.max_new_tokens)
            draws = row_draws([enc.seed], limit, "cpu")[0].tolist() if enc.temperature > 0 else None
            self.peek = _Live(conv, req, enc, limit, draws)
            return self.peek
        return None

    def _admit(self) -> None:
        """Prefill waiting requests into empty slots while they fit, all of them together
        (hf_prefill: a forward per group of similar length); one at a time if that fails."""
        rows: list[_Live] = []
        while (row := self._take()) is not None and self._fits([*self.live, *rows, row]):
            self._pop()
            rows.append(row)
        try:
            new = list(zip(rows, self._prefill(rows), strict=True))
        except RuntimeError as e:
            self._check(e)
            new = self._admit_one_by_one(rows)
        self.turns.clear()  # _place may overwrite or move those slots
        self._place(new)

    def _admit_one_by_one(self, rows: list[_Live]) -> list[tuple[_Live, KV]]:
        """The rows prefilled alone: one that fails with others live or admitted means no room
        for them all (the batch shrinks, the rest wait); alone, it fails."""
        new: list[tuple[_Live, KV]] = []
        for k, row in enumerate(rows):
            try:
                new.append((row, self._prefill([row])[0]))
            except RuntimeError as e:
                if self.live or new:
                    self._limit(e, len(self.live) + len(new))
                    for r in reversed(rows[k:]):  # back to the front of the queue, in order
                        self.queue.appendleft((r.conv, r.request))
                        self.ahead += 1
                    break
                self._fail(row, e)
        return new

    def _place(self, new: list[tuple[_Live, KV]]) -> None:
        """New rows into empty slots (then appended); empty slots dropped when many."""
        empty = [k for k, r in enumerate(self.slots) if r is None]
        if len(empty) > len(new) and (len(empty) - len(new)) * 4 >= len(self.slots):
            layout: list[int | None] = [k for k, r in enumerate(self.slots) if r is not None]
            self.slots = [self.slots[k] for k in layout if k is not None]
            empty = []
        else:
            layout = list(range(len(self.slots)))
        at = []
        for k, (row, _) in enumerate(new):
            if k < len(empty):
                at.append(empty[k])
                self.slots[empty[k]] = row
            else:
                at.append(len(self.slots))
                self.slots.append(row)
                layout.append(None)
        if not self.live:
            return
        reserve = max(r.limit - len(r.out) for r in self.live)
        self.cache.fit(layout, max(r.cached for r in self.live), reserve)
        for k, (row, kv) in zip(at, new, strict=True):
            self.cache.put(k, kv, row.cached)

    def _prefill(self, rows: list[_Live]) -> list[KV]:
        """Each row's prompt but its last token in keys/values. What is already computed is not
        computed again: the same prompt (the choices of one question) once, and a turn-2
        prompt from its turn-1 row's cache up to where their tokens part."""
        keys = [tuple(r.row.ids[:-1]) for r in rows]
        jobs: dict[tuple[int, ...], Prefill] = {}
        for row, ids in zip(rows, keys, strict=True):
            if ids not in jobs and not (self.last is not None and self.last[0] == ids):
                jobs[ids] = Prefill(list(ids), self._previous_turn(row.conv, list(ids)))
        kvs = dict(
            zip(jobs, prefill(self.b.model, self.b._cache_kw, list(jobs.values()), self._pad), strict=True)
        )
        if self.last is not None:
            kvs.setdefault(self.last[0], self.last[1])
        if rows:
            self.last = (keys[-1], kvs[keys[-1]])
        return [kvs[k] for k in keys]

    def _previous_turn(self, conv: int, ids: list[int]) -> KV | None:
        """The keys/values of the conversation's previous turn (still in its slot) for the
        tokens `ids` starts with, or None."""
        if conv not in self.turns:
            return None
        toks, slot, end = self.turns[conv]
        done = next(
            (k for k, (a, b) in enumerate(zip(toks, ids, strict=False)) if a != b), min(len(toks), len(ids))
        )
        if not done:
            return None
        cols = slice(end - len(toks), end - len(toks) + done)
        return [
            (layer.k[slot : slot + 1, :, cols], layer.v[slot : slot + 1, :, cols])
            for layer in self.cache.cache.layers
        ]

    @torch.inference_mode()
    def _step(self) -> None:
        """One decoding step of every slot; rows that end leave (and their follow-ups queue)."""
        self.cache.fit(
            list(range(len(self.slots))), self.cache.width, max(r.limit - len(r.out) for r in self.live)
        )
        feed = [(r.out[-1] if r.out else r.row.ids[-1]) if r else self._pad for r in self.slots]
        pos = [r.cached if r else 0 for r in self.slots]
        try:
            out = self.b.model(
                input_ids=torch.tensor(feed, device=self.b.device)[:, None],
                attention_mask=self.cache.step_mask(),
                position_ids=torch.tensor(pos, device=self.b.device)[:, None],
                use_cache=True,
                **{self.b._cache_kw: self.cache.cache},
            )
        except RuntimeError as e:
            live = self.live
            if len(live) == 1:
                self._fail(live[0], e)
            else:
                self._limit(e, len(live) // 2)
            return
        self.cache.advance()
        logits = out.logits[:, -1, :].to(dtype=torch.float32)
        for k, (r, t) in enumerate(zip(self.slots, self._pick(logits), strict=True)):
            if r is not None:
                self._append(k, r, t)
        self.cache.trim(max((r.cached for r in self.live), default=0))

    def _pick(self, logits: torch.Tensor) -> list[int]:
        """Each row's next token: argmax for greedy rows, else a draw from its own stream."""
        rows = [(k, r) for k, r in enumerate(self.slots) if r is not None]
        if self.b.min_new_tokens:
            early = [k for k, r in rows if len(r.out) < min(self.b.min_new_tokens, r.limit)]
            if early:
                logits[torch.tensor(early, device=logits.device)[:, None], self.eos[None, :]] = float("-inf")
        picked = logits.argmax(dim=-1)
        sampled = [(k, r) for k, r in rows if r.draws is not None]
        if sampled:
            idx = torch.tensor([k for k, _ in sampled], device=logits.device)
            temps = torch.tensor([[r.row.temperature] for _, r in sampled], device=logits.device)
            u = torch.tensor([r.draws[len(r.out)] for _, r in sampled if r.draws], device=logits.device)
            none = torch.zeros(len(sampled), 0, dtype=torch.long, device=logits.device)
            probs, cand = candidates(logits[idx], temps, self.top_k, self.top_p, self.warpers, none)
            picked.index_copy_(0, idx, draw(probs, cand, u))
        return [int(t) for t in picked.tolist()]

    def _append(self, k: int, r: _Live, token: int) -> None:
        stop = token in self.eos_set
        if not stop:
            r.out.append(token)
            if len(r.out) < r.limit:
                return
        self.slots[k] = None
        # the tokens its slot holds: a follow-up turn admitted next reuses them (_prefill)
        fed = r.row.ids + (r.out if stop else r.out[:-1])
        self.turns[r.conv] = (fed, k, self.cache.window.end)
        text = self.b._clean(self.b.tokenizer.decode(r.out, skip_special_tokens=True))
        self._deliver(
            r.conv, GenResult(text, finish_reason="stop" if stop else "length", num_tokens=len(r.out))
        )

    def _check(self, e: RuntimeError) -> None:
        if "CUDA error" in str(e) and not isinstance(e, torch.cuda.OutOfMemoryError):
            # a device-side fault poisons the CUDA context: every later call fails too
            raise BackendDead(f"{self.b.spec}: {_first_line(e)}; the CUDA context is unusable") from e
        if self.b.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _fail(self, row: _Live, e: RuntimeError) -> None:
        """An error with this row alone: it fails, the others are unaffected."""
        self._check(e)
        if row in self.slots:
            self.slots[self.slots.index(row)] = None
        self._deliver(row.conv, GenResult.failure(f"{type(e).__name__}: {_first_line(e)}"))

    def _limit(self, e: RuntimeError, rows: int) -> None:
        """An error (OOM) with several rows: at most `rows` rows from now on, for the rest of
        the run (as hf._shrink); the live rows beyond them go back to the queue, to restart."""
        self._check(e)
        rows = max(1, rows)
        self.b.refill_rows = rows
        what = "out of memory" if _is_oom(e) else f"a step failed ({_first_line(e)[:120]})"
        log.warning("%s at %d rows: at most %d rows per step from now on", what, len(self.live), rows)
        for k, r in enumerate(self.slots):
            if r is not None and sum(x is not None for x in self.slots[: k + 1]) > rows:
                self.slots[k] = None
                self._push((r.conv, r.request))
