"""Which stored run a new plan may reuse: the shard run config compared key by key (pure).

A shard manifest's `sampling` is the run config it was generated with (job.generate.plan).
Two configs name the same run when every key agrees, except that
- a key of ADDED_KEYS that one side lacks reads as its default there: the side was written
  by a version from before the key existed (3eea5b8 had none of them), or the option was
  unset (options enter the config only when set, so older hashes stay as they were);
- a model fingerprint that one side does not know (a manifest from before fingerprints, a hub
  model whose revision the cache did not know yet at plan time) matches any;
- a local checkpoint's place (the fingerprint's `path`, the path in the spec) is for display:
  a checkpoint copied to node scratch is the same model.
"""

from __future__ import annotations

import json
from typing import Any

FINGERPRINT = "model_fingerprint"
UNKNOWN = "unknown"
"""The default of model_fingerprint: a side without one matches any model."""
ADDED_KEYS: dict[str, Any] = {
    FINGERPRINT: UNKNOWN,
    "dedupe_greedy": True,  # 3eea5b8 always copied greedy answers to every choice
    "chat_template_kwargs": None,
    "extra_body": None,
    "reasoning_pattern": None,
    "backend": None,  # output-changing backend options (job.backends.fingerprint.output_options)
}
"""Keys added to the run config after 3eea5b8, with the value a config without them means."""
DISPLAY_KEYS = ("path",)
"""Fingerprint fields shown in logs, never compared or hashed."""


def model_identity(fp: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fingerprint without its display fields: what hashes and compares."""
    return {k: v for k, v in fp.items() if k not in DISPLAY_KEYS} if isinstance(fp, dict) else fp


def hashed_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """The run config as its hash sees it: a local checkpoint's place (the fingerprint's path
    and the path in the spec) left out, since the fingerprint identifies it."""
    fp = run_config.get(FINGERPRINT)
    if not isinstance(fp, dict):
        return run_config
    spec = str(run_config.get("model", ""))
    return {**run_config, FINGERPRINT: model_identity(fp), "model": spec_identity(spec, fp)}


def spec_identity(spec: str, fp: dict[str, Any] | None) -> str:
    """`hf/<local>` for a fingerprinted local checkpoint, else the spec itself."""
    return spec.partition("/")[0] + "/<local>" if _is_local(fp) else spec


def _is_local(fp: Any) -> bool:
    return isinstance(fp, dict) and fp.get("kind") == "local"


def same_model(a: Any, b: Any) -> bool:
    if UNKNOWN in (a, b):
        return True
    if isinstance(a, dict) and isinstance(b, dict) and a.get("kind") == b.get("kind") == "hub":
        ra, rb = a.get("revision"), b.get("revision")  # None: not in the cache at plan time
        return a.get("id") == b.get("id") and (ra is None or rb is None or ra == rb)
    return _canon(model_identity(a)) == _canon(model_identity(b))


def run_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys in which two run configs differ (sorted); [] when they name the same run."""
    if _is_local(old.get(FINGERPRINT)) and _is_local(new.get(FINGERPRINT)):
        old, new = hashed_config(old), hashed_config(new)  # else the path is all an old one knows
    out = []
    for key in sorted(old.keys() | new.keys()):
        default = ADDED_KEYS.get(key, _MISSING)
        a, b = old.get(key, default), new.get(key, default)
        same = same_model(a, b) if key == FINGERPRINT else _canon(a) == _canon(b)
        if not same:
            out.append(key)
    return out


def describe_diff(old: dict[str, Any], new: dict[str, Any], keys: list[str]) -> str:
    """'seed 0 -> 1, dtype auto -> float32' for an error line (absent keys as their default)."""
    parts = []
    for key in keys[:5]:
        default = ADDED_KEYS.get(key)
        a, b = old.get(key, default), new.get(key, default)
        parts.append(f"{key} {_short(a)} -> {_short(b)}")
    return ", ".join(parts) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


_MISSING = "<absent>"


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _short(value: Any) -> str:
    text = _canon(value)
    return text if len(text) <= 60 else text[:57] + "..."
