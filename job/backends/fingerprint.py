"""The model's identity for the shard config hash: what the spec string alone cannot tell.

`hf/./ckpt` names whatever is in ./ckpt today: a training job that saves its next step
over the same directory, or a new push to a hub id, changes the answers without changing
the spec. Shards are reused only while this fingerprint is unchanged. Offline only: it
reads files on disk and the Hugging Face cache, never the network, and loads no model.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

# files whose bytes define the model's behaviour and are small enough to hash
_CONTENT = re.compile(r"\.(json|jinja|model|txt|tiktoken)$")
# weights: hashing gigabytes would cost minutes; name, size and mtime change on every save
_WEIGHTS = re.compile(r"\.(safetensors|bin|gguf|pt|pth)$")
_LOCAL_PROVIDERS = ("hf", "vllm")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def _file_entries(path: Path) -> list[list[Any]]:
    """[name, sha256 or size+mtime] for the checkpoint's top-level config, tokenizer,
    chat template and weight files (or for the single file a GGUF path names)."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    out: list[list[Any]] = []
    for f in files:
        if f.name.startswith("."):
            continue
        try:
            if _WEIGHTS.search(f.name):
                st = f.stat()
                out.append([f.name, st.st_size, st.st_mtime_ns])
            elif _CONTENT.search(f.name):
                out.append([f.name, hashlib.sha256(f.read_bytes()).hexdigest()])
        except OSError as e:  # loading the model reports it properly; here it is just different
            out.append([f.name, f"unreadable: {e.strerror}"])
    return out


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads (same precedence as huggingface_hub itself)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return xdg / "huggingface" / "hub"


def hub_revision(repo_id: str, revision: str | None = None) -> str | None:
    """The commit the HF cache resolves `revision` (default main) of `repo_id` to, or None."""
    rev = revision or "main"
    if _HEX40.match(rev):
        return rev
    repo = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    try:
        commit = (repo / "refs" / rev).read_text().strip()
    except OSError:
        return None
    return commit if _HEX40.match(commit) else None


def fingerprint(provider: str, model: str, revision: str | None = None) -> dict[str, Any] | None:
    """What identifies the weights behind `provider/model`; None where the spec already does
    (API models, mocks, the built-in smoke model)."""
    if provider not in _LOCAL_PROVIDERS:
        return None
    path = Path(model).expanduser()
    if path.exists():
        entries = _file_entries(path)
        digest = hashlib.sha256(repr(entries).encode("utf-8")).hexdigest()[:16]
        return {"kind": "local", "path": str(path.resolve()), "sha256": digest, "files": len(entries)}
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith("."):
        return {"kind": "hub", "id": model, "revision": hub_revision(model, revision)}
    return {"kind": "missing", "path": model}  # loading will fail with its own error


def describe(fp: dict[str, Any] | None) -> str:
    """A short form for log lines: digest of a local checkpoint, commit of a hub model."""
    if not fp:
        return "none"
    if fp.get("kind") == "local":
        return f"{fp['path']} {fp['sha256']}"
    if fp.get("kind") == "hub":
        return f"{fp['id']}@{fp.get('revision') or 'unknown revision'}"
    return str(fp.get("path"))
