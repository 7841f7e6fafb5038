"""A KV cache for batched generate that does not copy itself at every step.

transformers' DynamicCache appends each new token with torch.cat, which copies the whole
cache of every layer at every decoding step: O(batch x length) bytes per token. For a
batch of 64 prompts of ~200 tokens this copy was the largest single cost of decoding
(more than attention). ReservedLayer keeps the same semantics (attention sees exactly
the filled positions, as with DynamicCache) but writes into a buffer with room for
`reserve` more tokens, so a step copies only the new token. A StaticCache avoids the copy
too, but attends over its full length at every step and slows down prefill.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

log = logging.getLogger(__name__)

# What this module relies on changed between transformers 4.56 and 5.x: the cache argument's
# name, `lazy_initialization(k)` -> `(k, v)`, `is_initialized`. The three adapters below are
# the only places that know; tests/test_hf_batching.py runs on both ends of the supported range
# (.ci/run), so a further change fails there rather than silently slowing generation.


def cache_kwarg(model: Any) -> str:
    """The name forward() and generate() take the KV cache by: `cache` from transformers 5.x
    (where `past_key_values` is deprecated, for forward to be removed in 5.40), else
    `past_key_values` (4.56)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _is_initialized(layer: Any) -> bool:
    # 5.x: a flag; 4.56: keys stay None until the first update
    flag = getattr(layer, "is_initialized", None)
    return bool(flag) if flag is not None else layer.keys is not None


def _initialize(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    if len(inspect.signature(layer.lazy_initialization).parameters) >= 2:
        layer.lazy_initialization(keys, values)
    else:  # transformers 4.56
        layer.lazy_initialization(keys)


class ReservedLayer(DynamicLayer):  # type: ignore[misc]
    """DynamicLayer whose keys/values are views of a buffer with spare room at the end."""

    keys: torch.Tensor
    values: torch.Tensor

    def __init__(self, reserve: int, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reserve = reserve
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def _owns_views(self) -> bool:
        # crop/reorder/batch_select replace self.keys with new tensors: adopt those then
        return self._k is not None and self.keys.data_ptr() == self._k.data_ptr()

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not _is_initialized(self):
            _initialize(self, key_states, value_states)
        old = self.keys.shape[-2] if self.keys.numel() else 0
        new = old + key_states.shape[-2]
        if not self._owns_views() or self._k is None or new > self._k.shape[-2]:
            shape = (*key_states.shape[:-2], new + self.reserve, key_states.shape[-1])
            k = key_states.new_empty(shape)
            v = value_states.new_empty((*shape[:-1], value_states.shape[-1]))
            if old:
                k[..., :old, :].copy_(self.keys)
                v[..., :old, :].copy_(self.values)
            self._k, self._v = k, v
        assert self._k is not None and self._v is not None
        self._k[..., old:new, :].copy_(key_states)
        self._v[..., old:new, :].copy_(value_states)
        self.keys, self.values = self._k[..., :new, :], self._v[..., :new, :]
        return self.keys, self.values

    def reset(self) -> None:
        self._k = self._v = None
        super().reset()
        # 4.56 zeroes the old tensors instead of dropping them: start empty on either version
        self.keys = self.values = None  # type: ignore[assignment]
        if hasattr(self, "is_initialized"):
            self.is_initialized = False


def reserved_cache(config: Any, reserve: int) -> Any | None:
    """A DynamicCache whose full-attention layers reserve room for `reserve` new tokens.

    Sliding-window and other special layers are kept as they are. None (with a warning:
    generation then copies its cache at every step) where the cache layout is not the one
    expected.
    """
    try:
        cache = DynamicCache(config=config)
        layers = getattr(cache, "layers", None)
        if not layers:
            return None
        for i, layer in enumerate(layers):
            if type(layer) is DynamicLayer:
                layers[i] = ReservedLayer(reserve)
        return cache
    except Exception as e:  # an unexpected cache layout: fall back to generate's own
        _warn_once(f"reserved KV cache unavailable ({e}); generate copies its default cache at every step")
        return None


@functools.cache
def _warn_once(message: str) -> None:
    log.warning("%s", message)


def prefilled_cache(
    model: Any, rows: list[list[int]], pad: int, reserve: int, ratio: float = 1.25
) -> Any | None:
    """A reserved cache holding every row's prompt but its last token, prefilled in length groups.

    Batched prefill pads every row to the longest prompt, and prefill attention grows with
    the square of that width: with prompts from 40 to 700 tokens, padding was 39% of the
    prefill tokens. Here rows whose lengths are within `ratio` of each other are prefilled
    together, each group at its own width, and their keys/values are placed left-padded into
    one cache (padded slots are zeros and masked). generate() then feeds only the last
    prompt token. Positions follow the attention mask exactly as generate() computes them.
    None where this does not apply (special cache layers, models without position_ids,
    a single group): the caller runs the usual prefill.
    """
    cache = reserved_cache(model.config, reserve)
    if cache is None or not all(isinstance(layer, ReservedLayer) for layer in cache.layers):
        return None
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    groups: list[list[int]] = [[]]
    for i in order:
        if groups[-1] and len(rows[i]) > ratio * len(rows[groups[-1][0]]):
            groups.append([])
        groups[-1].append(i)
    if len(groups) < 2 or min(len(r) for r in rows) < 2:
        return None
    device = model.device
    width = max(len(r) for r in rows) - 1  # cached positions: all but each row's last token
    for group in groups:
        w = max(len(rows[i]) for i in group) - 1
        ids = torch.tensor([[pad] * (w - len(rows[i]) + 1) + rows[i][:-1] for i in group], device=device)
        mask = torch.tensor(
            [[0] * (w - len(rows[i]) + 1) + [1] * (len(rows[i]) - 1) for i in group], device=device
        )
        part = DynamicCache(config=model.config)
        model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 1),
            use_cache=True,
            logits_to_keep=1,
            **{cache_kwarg(model): part},
        )
        index = torch.tensor(group, device=device)
        for layer, src in zip(cache.layers, part.layers, strict=True):
            if layer._k is None:
                _initialize(layer, src.keys, src.values)
                shape = (len(rows), src.keys.shape[1], width + reserve, src.keys.shape[-1])
                layer._k = src.keys.new_zeros(shape)
                layer._v = src.values.new_zeros((*shape[:-1], src.values.shape[-1]))
            # under --device-map a layer's cache lives on that layer's GPU, not the model's first
            at = index.to(src.keys.device)
            layer._k[at, :, width - w : width] = src.keys
            layer._v[at, :, width - w : width] = src.values
    for layer in cache.layers:
        layer.keys, layer.values = layer._k[..., :width, :], layer._v[..., :width, :]
    return cache


class _Window:
    """The cache columns in use, shared by every layer of a SlotCache: [start, end)."""

    start = 0
    end = 0


class SlotLayer(DynamicLayer):  # type: ignore[misc]
    """A layer of SlotCache: keys/values are views of columns [start, end) of a buffer; a
    decoding step writes the new token's column at `end`."""

    keys: torch.Tensor
    values: torch.Tensor

    def __init__(self, window: _Window, k: torch.Tensor, v: torch.Tensor):
        super().__init__()
        _initialize(self, k, v)
        self.window, self.k, self.v = window, k, v
        self.view()

    def view(self, extra: int = 0) -> None:
        w = self.window
        self.keys, self.values = self.k[:, :, w.start : w.end + extra], self.v[:, :, w.start : w.end + extra]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end, q = self.window.end, key_states.shape[-2]
        self.k[:, :, end : end + q].copy_(key_states)
        self.v[:, :, end : end + q].copy_(value_states)
        self.view(q)
        return self.keys, self.values


class SlotCache:
    """The KV cache of a continuous batch: one row (slot) per request, each row's tokens
    right-aligned at the common end column, a 0/1 mask over the columns telling each row's
    own. Rows enter (`put`) and leave at any step; columns no row needs are dropped on the
    left (`trim`), and the buffer is reallocated only when it runs out of room (`fit`)."""

    def __init__(self, config: Any, kv_heads: int, head_dim: int, dtype: torch.dtype, device: Any):
        self.config, self.shape, self.dtype, self.device = config, (kv_heads, head_dim), dtype, device
        self.window = _Window()
        self.cache: Any = None
        self.layers = len(DynamicCache(config=config).layers)
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)
        self._memory: dict[tuple[str, int], torch.Tensor] = {}
        """Flat buffers kept for the next reallocation (_reused): per layer keys/values, a scratch."""

    @property
    def slots(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return self.window.end - self.window.start

    def fit(self, rows: list[int | None], width: int, reserve: int) -> None:
        """Lay the buffer out as `rows` (new row i holds old row rows[i], None: a new empty row),
        with room for `width` columns before the end and at least one after it (`reserve` when
        reallocated). Reallocates only where the current buffer does not already fit."""
        w = self.window
        same = rows == list(range(self.slots))
        if self.cache is not None and same and width <= w.end and w.end < self.cap:
            return
        left, right = max(width, self.width), max(reserve, 1)
        if str(self.device) == "cpu":
            # room to spare on CPU, where a reallocation (zeroing and copying the whole cache at
            # ~6 GB/s) took seconds at 260 rows: a quarter more columns on the left (rows admitted
            # later with longer prompts, turn 2) and twice the room on the right (the end column
            # reaches the capacity half as often); on a GPU the copy is cheap and memory, sized
            # by the token budget, is what is short
            left, right = left + left // 4, 2 * right
        cap, old_w = left + right, self.width
        a = left - old_w  # the kept window's first column in the new buffer
        src = [i for i, k in enumerate(rows) if k is not None]
        old = [k for k in rows if k is not None]
        fresh = [i for i, k in enumerate(rows) if k is None]
        mask = self.mask.new_zeros(len(rows), cap)
        mask[src, a:left] = self.mask[old, w.start : w.end]
        layers = []
        index = torch.tensor(old, device=self.device)
        for i in range(self.layers):
            was = self.cache.layers[i] if self.cache is not None else None
            pair = []
            for x in (0, 1):
                kept = None
                if was is not None and old:  # the kept window, compacted into reused scratch memory
                    part = (was.k, was.v)[x][:, :, w.start : w.end]
                    kept = self._reused("scratch", 0, len(old) * part[0].numel()).view(
                        len(old), *part.shape[1:]
                    )
                    torch.index_select(part, 0, index, out=kept)
                pair.append(self._buffer(i, x, len(rows), cap, a, left, src, fresh, kept))
            if was is not None:
                # the old layer goes as soon as it is copied: the peak is one cache and a layer,
                # not two caches (a budget of 80% of free memory would not survive a doubling)
                was.k = was.v = was.keys = was.values = None
            layers.append((pair[0], pair[1]))
        w.start, w.end = a, left
        self.mask = mask
        self.cache = DynamicCache(config=self.config)
        self.cache.layers[:] = [SlotLayer(w, k, v) for k, v in layers]

    def _reused(self, kind: str, key: int, numel: int) -> torch.Tensor:
        """A flat buffer of at least `numel` elements, the same memory as last time where it is
        large enough: fresh memory is page-faulted in at ~5 GB/s on CPU, reused memory is
        written at ~30 GB/s, and reallocating a cache of 260 rows took seconds."""
        buf = self._memory.get((kind, key))
        if buf is None or buf.numel() < numel:
            self._memory.pop((kind, key), None)  # freed before the larger one is taken
            buf = torch.empty(numel + numel // 4, dtype=self.dtype, device=self.device)
            self._memory[(kind, key)] = buf
        return buf[:numel]

    def _buffer(
        self,
        layer: int,
        x: int,
        rows: int,
        cap: int,
        a: int,
        b: int,
        src: list[int],
        fresh: list[int],
        kept: torch.Tensor | None,
    ) -> torch.Tensor:
        """A layer's keys (x 0) or values (1), in that layer's reused memory: `kept` in columns
        [a, b) of rows `src`, zeros elsewhere (only what the copy leaves is zeroed). Zeroing only
        the window and letting later steps touch the rest lazily was slower (page faults one
        column at a time, 80 x 2 x 5 on 2 CPU cores: 192 s vs 178 s for the first 200 steps)."""
        heads, dim = self.shape
        out = self._reused("layer", 2 * layer + x, rows * heads * cap * dim).view(rows, heads, cap, dim)
        if kept is None:
            return out.zero_()
        out[:, :, :a].zero_()
        out[:, :, b:].zero_()
        if fresh:
            out[fresh, :, a:b] = 0
        if src == list(range(len(src))):
            out[: len(src), :, a:b] = kept
        else:
            out[src, :, a:b] = kept
        return out

    @property
    def cap(self) -> int:
        return int(self.mask.shape[1])

    def put(self, slot: int, kv: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> None:
        """Row `slot` holds a prefilled prompt (per layer keys/values [1, heads, n, dim]) from now on."""
        w = self.window
        if n > self.width:  # columns come into view: masked, and zeros (never garbage: NaN x 0)
            self.mask[:, w.end - n : w.start] = 0
            for layer in self.cache.layers:
                layer.k[:, :, w.end - n : w.start] = 0
                layer.v[:, :, w.end - n : w.start] = 0
            w.start = w.end - n
        self.mask[slot] = 0
        self.mask[slot, w.end - n : w.end] = 1
        for layer, (k, v) in zip(self.cache.layers, kv, strict=n > 0):
            layer.k[slot, :, w.end - n : w.end] = k[0]
            layer.v[slot, :, w.end - n : w.end] = v[0]
        self._views()

    def step_mask(self) -> torch.Tensor:
        """The attention mask of a decoding step: every row's columns and the new token's."""
        self.mask[:, self.window.end] = 1
        return self.mask[:, self.window.start : self.window.end + 1]

    def advance(self) -> None:
        self.window.end += 1
        self._views()

    def trim(self, width: int) -> None:
        """Keep only the last `width` columns (what the longest live row holds)."""
        w = self.window
        w.start = max(w.start, w.end - width)
        self._views()

    def _views(self) -> None:
        for layer in self.cache.layers:
            layer.view()
