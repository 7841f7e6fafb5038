"""The hf backend's loading and row helpers: the transformers version check, device,
dtype and --device-map placement, GGUF options, rows and their seeds, OOM and error lines."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from job.backends.hf_memory import (
    DEVICE_MAPS,
)
from job.errors import JobError

MIN_TRANSFORMERS = "4.56"
"""`from_pretrained(dtype=...)` and layered KV caches; pyproject's lower bound says the same."""

_T = TypeVar("_T")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_transformers(version: str) -> None:
    """An older transformers would fail deep inside loading (unknown `dtype=`): say so first."""
    from packaging.version import Version

    if Version(version) < Version(MIN_TRANSFORMERS):
        raise JobError(
            f"transformers {version} is too old for the hf backend; run: pip install 'transformers>={MIN_TRANSFORMERS}'"
        )


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]


@dataclass(frozen=True)
class _Row:
    ids: list[int]
    temperature: float
    """0.0 = greedy"""
    seed: int


def _row_len(row: _Row) -> int:
    return len(row.ids)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def row_seed(seed: int | None, prompt: str) -> int:
    """A row's sampling seed from the request's seed (seed + choice) and the prompt it sees:
    two turns or questions with one --seed still draw different streams."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _check_device_map(device_map: str | None, device: str) -> dict[str, Any]:
    """from_pretrained's placement arguments for --device-map (a model larger than one GPU)."""
    if not device_map:
        return {}
    if device_map not in DEVICE_MAPS:
        raise JobError(f"unknown --device-map {device_map!r}; use {', '.join(DEVICE_MAPS)}")
    if device != "auto":
        raise JobError(f"--device-map {device_map} places the model itself; drop --device {device}")
    return {"device_map": device_map}


def _gguf_kwargs(gguf_file: str | None) -> dict[str, Any]:
    """--gguf-file: a GGUF file in the model folder or repo, dequantized by transformers on load."""
    if not gguf_file:
        return {}
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise JobError("--gguf-file needs the gguf package; run: pip install gguf")
    return {"gguf_file": gguf_file}


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise JobError(f"unknown --dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]
