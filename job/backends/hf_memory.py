"""The hf backend's default token budget: what fits in free accelerator memory.

A batch of the hf backend holds, for every padded token (rows x (prompt + new tokens)),
one key and one value vector per layer and KV head. That is the memory that grows with
the batch; the weights are already loaded when the budget is set, so the free memory
seen then is what the cache and the activations share. A fixed budget cannot fit both a
7B MHA model on a 24 GB card and a GQA model on a 141 GB one: 131,072 tokens of a
Llama-2-7B cache are 64 GiB.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CPU_TOKEN_BUDGET = 131072
"""On CPU, at most this many padded tokens per batch, however much memory is free: a decoding
step of SmolLM2-135M on 2 cores ran 170 tokens/s at 32 rows, 205 at 64, 226 at 128 (the
weights are read once per step for all rows); past a few hundred rows a step only gets longer.
Below it, host memory decides (host_free_bytes), as GPU memory does on a GPU."""

KV_SHARE = 0.8
"""Share of the free memory (after a fixed reserve) given to the KV cache; the rest is for
activations (prefill MLP, logits), allocator fragmentation and other processes' growth."""

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
"""accelerate's placements of one model over several GPUs (and CPU), as from_pretrained takes them."""

RESERVE_BYTES = 1 << 30
"""Kept free on each device whatever its size: CUDA workspaces, sampling buffers, logits."""

MEMINFO = "/proc/meminfo"
CGROUP = "/sys/fs/cgroup"

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.\d+$")


def _text_config(config: Any) -> Any:
    # multimodal configs (Gemma 3, Llava) keep the decoder's shape in a text config
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def num_layers(config: Any) -> int:
    return int(_text_config(config).num_hidden_layers)


def kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Bytes of KV cache one token takes over all layers: layers x KV heads x head dim x 2
    (key and value) x dtype size. GQA/MQA models have fewer KV heads than attention heads
    (num_key_value_heads); head_dim is the config's or hidden size / heads."""
    kv_heads, head_dim = kv_shape(config)
    return int(num_layers(config) * kv_heads * head_dim * 2 * dtype_bytes)


def kv_shape(config: Any) -> tuple[int, int]:
    """(KV heads, head dim) of one layer's cache."""
    c = _text_config(config)
    heads = c.num_attention_heads
    return int(getattr(c, "num_key_value_heads", None) or heads), int(
        getattr(c, "head_dim", None) or c.hidden_size // heads
    )


def layers_by_device(device_map: Mapping[str, Any] | None, num_layers: int, device: str) -> dict[str, int]:
    """Decoder layers per device: from accelerate's hf_device_map (--device-map auto), or
    all on `device`. Each layer's KV cache lives where the layer runs."""
    counts: Counter[str] = Counter()
    for name, dev in (device_map or {}).items():
        if _LAYER.search(name):
            counts[_device_name(dev)] += 1
    if not counts:
        return {device: num_layers}
    return dict(counts)


def _device_name(dev: Any) -> str:
    # accelerate writes GPU indices as ints, CPU/disk offload as strings
    return f"cuda:{dev}" if isinstance(dev, int) else str(dev)


def token_budget(config: Any, dtype_bytes: int, free: Mapping[str, int], layers: Mapping[str, int]) -> int:
    """Padded tokens per batch whose KV cache fits every device: per device, its share of
    free memory over the KV bytes of the layers it holds; the tightest device decides."""
    per_layer = kv_bytes_per_token(config, dtype_bytes) // num_layers(config)
    fits = []
    for dev, n in layers.items():
        if dev not in free:  # offloaded to cpu/disk: accelerate runs those layers on a GPU counted here
            continue
        usable = max(0, free.get(dev, 0) - RESERVE_BYTES) * KV_SHARE
        fits.append(int(usable // (per_layer * n)))
    return max(1, min(fits, default=CPU_TOKEN_BUDGET))


def host_free_bytes() -> int:
    """Memory this process may still take on the host: the kernel's MemAvailable, or less where
    a cgroup (a container, a Slurm job) limits the process below what the machine has free."""
    free = _meminfo_available(MEMINFO)
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),  # cgroup v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),  # v1
    ):
        limit, usage = _read_int(f"{CGROUP}/{limit_file}"), _read_int(f"{CGROUP}/{usage_file}")
        if limit is not None and usage is not None:
            free = min(free, max(0, limit - usage))
            break
    return free


def _meminfo_available(path: str) -> int:
    try:
        for line in Path(path).read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _read_int(path: str) -> int | None:
    """An integer file of /sys (None: absent, or "max", no limit)."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def free_bytes(devices: list[str]) -> dict[str, int]:
    """Free memory of each CUDA device: the driver's free bytes plus what torch's caching
    allocator holds but does not use (it is free for our tensors, not for the driver)."""
    import torch

    out = {}
    for dev in devices:
        free, _total = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        out[dev] = int(free + cached)
    return out
