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

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

try:  # transformers >= 4.56 (layered caches)
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover - older transformers: generate() uses its default cache
    DynamicCache = DynamicLayer = None


if DynamicLayer is not None:

    class ReservedLayer(DynamicLayer):  # type: ignore[misc,valid-type]
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
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
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


def reserved_cache(config: Any, reserve: int) -> Any | None:
    """A DynamicCache whose full-attention layers reserve room for `reserve` new tokens.

    None where this transformers version has no layered DynamicCache (generate then
    builds its usual cache). Sliding-window and other special layers are kept as they are.
    """
    if DynamicCache is None:
        return None
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
        log.debug("reserved KV cache unavailable (%s); using the default", e)
        return None
