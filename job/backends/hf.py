"""transformers backend: chat template, left padding, length-sorted batched generate.

Requests are grouped by max new tokens, sorted by prompt length and cut into batches
by a token budget, so padding stays small and there is no Python loop per question
around `generate`. Temperatures and seeds may differ inside a batch: each sampled row
draws from its own stream, seeded from (seed, prompt), so an answer is the same in any
batch, shard or token budget (hf_sampling.row_draws).

A request that cannot run (the chat template rejects it, the prompt does not fit the
model's context, an OOM on that row alone) is a failed result with its error; the
other requests of the call are unaffected.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from jinja2.exceptions import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer

from job.backends.base import BatchBackend, FollowUp, GenRequest, GenResult, ProgressFn
from job.backends.hf_cache import cache_kwarg, prefilled_cache, reserved_cache
from job.backends.hf_load import (
    _T,
    MIN_TRANSFORMERS,
    _check_device_map,
    _first_line,
    _gguf_kwargs,
    _is_oom,
    _looks_like_path,
    _pick_device,
    _pick_dtype,
    _Row,
    _row_len,
    check_transformers,
    row_seed,
)
from job.backends.hf_memory import (
    CPU_TOKEN_BUDGET,
    free_bytes,
    host_free_bytes,
    kv_bytes_per_token,
    layers_by_device,
    num_layers,
    token_budget,
)
from job.backends.hf_refill import RefillLoop, refill_applies
from job.backends.hf_sampling import RowSampler, sampling_kwargs
from job.backends.template_kwargs import warn_unused
from job.errors import BackendDead, JobError

log = logging.getLogger(__name__)

__all__ = [
    "MIN_TRANSFORMERS",
    "HFBackend",
    "RowSampler",
    "check_transformers",
    "row_seed",
    "sampling_kwargs",
    "tiny_backend",
]


class HFBackend(BatchBackend):
    def __init__(
        self,
        spec: str,
        model: str,
        *,
        chat_template: str | None = None,
        system_prompt: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int | None = None,
        token_budget: int | None = None,
        device_map: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        min_new_tokens: int | None = None,
        gguf_file: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        refill: bool = True,
        **_: Any,
    ):
        check_transformers(transformers.__version__)
        self.spec = spec
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        """--chat-template-kwargs: template variables, e.g. enable_thinking (job.records.reasoning)."""
        self.min_new_tokens = min_new_tokens
        """Benchmarks only: force at least this many new tokens (masks EOS) for equal token counts."""
        self.system_prompt = system_prompt
        path = Path(model).expanduser()
        if not path.exists() and _looks_like_path(model):
            raise JobError(f"model path {model!r} does not exist; check --model hf/<path-or-id>")
        name = str(path) if path.exists() else model
        placement = _check_device_map(device_map, device)
        self.device = _pick_device(device)
        self.dtype = _pick_dtype(dtype, self.device)
        self.batch_size = batch_size
        where = f"device map {device_map}" if device_map else self.device
        log.info("loading %s on %s (%s)", name, where, str(self.dtype).removeprefix("torch."))
        load = {"trust_remote_code": trust_remote_code, "revision": revision, **_gguf_kwargs(gguf_file)}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, padding_side="left", **load)
            self.model = AutoModelForCausalLM.from_pretrained(name, dtype=self.dtype, **placement, **load)
        except (OSError, ValueError) as e:
            first = _first_line(e)
            if "custom code" in first or "trust_remote_code" in first:
                # the repo ships Python that would run here: only on the user's explicit say-so
                first = "it ships its own Python code; pass --trust-remote-code only if you trust it"
            raise JobError(f"cannot load model {model!r}: {first}") from None
        if device_map:  # accelerate placed the layers; inputs go where the embeddings are
            self.device = str(self.model.get_input_embeddings().weight.device)
        else:
            self.model.to(self.device)
        self.model.eval()
        self.token_budget = token_budget or self._default_budget()
        if chat_template:
            try:
                self.tokenizer.chat_template = Path(chat_template).read_text("utf-8")
            except OSError as e:
                raise JobError(f"--chat-template {chat_template}: {e.strerror}") from None
        if not self.tokenizer.chat_template:
            raise JobError(
                f"model {model!r} has no chat template; pass --chat-template FILE (a Jinja chat template)"
            )
        warn_unused(spec, self.tokenizer.chat_template, self.chat_template_kwargs)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = self._eos_ids()
        self.max_positions: int | None = getattr(self.model.config, "max_position_embeddings", None)
        # length-grouped prefill needs a decoder that takes explicit position ids
        self._grouped_prefill = "position_ids" in inspect.signature(self.model.forward).parameters
        self._cache_kw = cache_kwarg(self.model)
        self._special = sorted((t for t in self.tokenizer.all_special_tokens if t), key=len, reverse=True)
        # continuous batching (hf_refill) where it gives generate()'s tokens; else turn waves
        self.streams_conversations = refill and not device_map and refill_applies(self.model)
        self.refill_rows: int | None = None
        """Rows per step an out-of-memory error allowed (continuous batching), for the rest of the run."""

    def _default_budget(self) -> int:
        """Padded tokens per batch whose KV cache fits the free memory (see hf_memory): the
        accelerators', or on CPU the host's, there at most CPU_TOKEN_BUDGET."""
        config = self.model.config
        if self.device.startswith("cuda"):
            layers = layers_by_device(
                getattr(self.model, "hf_device_map", None), num_layers(config), self.device
            )
            free = free_bytes([d for d in layers if d.startswith("cuda")])
            budget = token_budget(config, self.dtype.itemsize, free, layers)
        else:
            free = {self.device: host_free_bytes()}
            # half of it: on CPU the slot cache keeps up to twice the columns its rows need
            # (hf_cache.SlotCache.fit: room that saves copies)
            half = {self.device: free[self.device] // 2}
            budget = min(
                CPU_TOKEN_BUDGET,
                token_budget(config, self.dtype.itemsize, half, {self.device: num_layers(config)}),
            )
        log.info(
            "token budget %d padded tokens per batch: %s GiB free, %d KiB of KV cache per token (--token-budget)",
            budget,
            "+".join(f"{b / 2**30:.1f}" for b in free.values()),
            kv_bytes_per_token(config, self.dtype.itemsize) // 1024,
        )
        return budget

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(src, int):
                ids.add(src)
            elif src:
                ids.update(src)
        if not ids:
            raise JobError(f"{self.spec}: the model defines no EOS token; cannot stop generation")
        return sorted(ids)

    def render(self, req: GenRequest) -> str:
        messages = req.messages
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        text: str = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs
        )
        return text

    def _next_batch(self, lengths: list[int], max_new: int) -> int:
        """How many of the prompt lengths (sorted ascending) the next batch takes: at most
        --batch-size rows, else as many as fit the token budget (at least one)."""
        if self.batch_size:
            return min(self.batch_size, len(lengths))
        n = 0
        for length in lengths:
            # padded rows all grow to the longest (= current, sorted ascending) length
            if n and (n + 1) * (length + max_new) > self.token_budget:
                break
            n += 1
        return n

    def _cut(self, items: list[_T], length: Callable[[_T], int], max_new: int) -> Iterator[list[_T]]:
        """Batches of `items` (sorted by prompt length), each cut when it is reached: a size
        learnt from an out-of-memory error meanwhile applies to the very next batch."""
        while items:
            take = self._next_batch([length(x) for x in items], max_new)
            yield items[:take]
            items = items[take:]

    def _shrink(self, rows: list[_Row], max_new: int) -> None:
        """After an OOM: the halves of the failed batch are the size for the rest of the run,
        so later batches do not fail at the same size and split again every time."""
        if self.batch_size:
            self.batch_size = min(self.batch_size, max(1, len(rows) // 2))
            log.warning(
                "out of memory at %d rows: batches of %d rows from now on (retrying the batch cut to it)",
                len(rows),
                self.batch_size,
            )
            return
        padded = len(rows) * (max(len(r.ids) for r in rows) + max_new)
        self.token_budget = min(self.token_budget, max(1, padded // 2))
        log.warning(
            "out of memory at %d padded tokens: token budget %d from now on (retrying the batch cut to it)",
            padded,
            self.token_budget,
        )

    def _clean(self, text: str) -> str:
        for tok in self._special:
            text = text.replace(tok, "")
        return text.strip()

    def _encode(self, req: GenRequest) -> _Row | GenResult:
        """The request as a batch row, or the failure that keeps it from running at all."""
        try:
            prompt = self.render(req)
        except (TemplateError, ValueError, TypeError) as e:  # e.g. "System role not supported"
            return GenResult.failure(f"the chat template rejected this conversation: {_first_line(e)}")
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if self.max_positions and len(ids) >= self.max_positions:
            return GenResult.failure(
                f"prompt of {len(ids)} tokens does not fit the model's context of {self.max_positions} tokens"
            )
        p = req.params
        return _Row(ids, 0.0 if p.greedy else p.temperature, row_seed(p.seed, prompt))

    def _room(self, row: _Row, max_new: int) -> int:
        """New tokens this row may have: the request's limit, or what is left of the context."""
        return min(max_new, self.max_positions - len(row.ids)) if self.max_positions else max_new

    @torch.inference_mode()
    def _run_batch(self, rows: list[_Row], max_new: int) -> list[GenResult]:
        pad = self.tokenizer.pad_token_id
        ids = [r.ids for r in rows]
        width = max(len(x) for x in ids)
        limits = [self._room(r, max_new) for r in rows]
        max_new = max(limits)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        kwargs: dict[str, Any] = sampling_kwargs(
            [r.temperature for r in rows],
            [r.seed for r in rows],
            max_new,
            self.device,
            self.model.generation_config,
        )
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = min(self.min_new_tokens, max_new)
        cache = prefilled_cache(self.model, ids, pad, max_new) if self._grouped_prefill else None
        cache = cache or reserved_cache(self.model.config, max_new)
        if cache is not None:
            kwargs[self._cache_kw] = cache
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            eos_token_id=self.eos_ids,
            pad_token_id=pad,
            use_cache=True,
            **kwargs,
        )
        eos = set(self.eos_ids)
        results = []
        for row, limit in zip(out[:, width:].tolist(), limits, strict=True):
            row = row[:limit]
            cut = next((k for k, t in enumerate(row) if t in eos), None)
            toks = row if cut is None else row[:cut]
            text = self._clean(self.tokenizer.decode(toks, skip_special_tokens=True))
            results.append(
                GenResult(text, finish_reason="length" if cut is None else "stop", num_tokens=len(toks))
            )
        return results

    def _run_safe(self, rows: list[_Row], max_new: int) -> list[GenResult]:
        """Run a batch; on OOM cut it again at the smaller size learnt (other errors: in
        half), and record an error only for a single row."""
        try:
            return self._run_batch(rows, max_new)
        except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
            if "CUDA error" in str(e) and not isinstance(e, torch.cuda.OutOfMemoryError):
                # a device-side fault poisons the CUDA context: every later call fails too
                raise BackendDead(f"{self.spec}: {_first_line(e)}; the CUDA context is unusable") from e
            if len(rows) == 1:
                return [GenResult.failure(f"{type(e).__name__}: {_first_line(e)}")]
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if _is_oom(e):
                self._shrink(rows, max_new)
                return [
                    r for part in self._cut(rows, _row_len, max_new) for r in self._run_safe(part, max_new)
                ]
            mid = len(rows) // 2
            log.warning("batch of %d failed (%s); retrying as two halves", len(rows), str(e)[:120])
            return self._run_safe(rows[:mid], max_new) + self._run_safe(rows[mid:], max_new)

    def generate(self, requests: list[GenRequest], progress: ProgressFn | None = None) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(requests)
        rows: dict[int, _Row] = {}
        for i, r in enumerate(requests):
            enc = self._encode(r)
            if isinstance(enc, GenResult):
                results[i] = enc
            else:
                rows[i] = enc
        if progress and len(rows) < len(requests):
            progress(len(requests) - len(rows), 0)
        # One group per max new tokens: temperatures and seeds may differ inside a batch (per-row
        # sampling), so greedy and sampled questions, and every choice, share batches and calls.
        groups: dict[int, list[int]] = defaultdict(list)
        for i in rows:
            groups[requests[i].params.max_new_tokens].append(i)
        for max_new, idxs in groups.items():
            by_len = sorted(idxs, key=lambda i: (len(rows[i].ids), i))
            for batch in self._cut(by_len, lambda i: len(rows[i].ids), max_new):
                outs = self._run_safe([rows[i] for i in batch], max_new)
                for i, res in zip(batch, outs, strict=True):
                    results[i] = res
                if progress:
                    progress(len(batch), sum(r.num_tokens for r in outs))
        return [r for r in results if r is not None]

    def generate_conversations(
        self, first: list[GenRequest], follow_up: FollowUp, progress: ProgressFn | None = None
    ) -> list[list[GenResult]]:
        """Every turn of every conversation in one continuous batch (hf_refill): a row that
        ends is replaced by a waiting request, a conversation's next turn is queued first."""
        if not self.streams_conversations:
            return super().generate_conversations(first, follow_up, progress)
        return RefillLoop(self).run(first, follow_up, progress)

    def close(self) -> None:
        del self.model
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def tiny_backend(spec: str, model: str, **options: Any) -> HFBackend:
    """`hf-tiny`: the built-in smoke model (built into the cache on first use)."""
    from job.backends.smoke_model import ensure_built

    return HFBackend(spec, str(ensure_built()), **options)
