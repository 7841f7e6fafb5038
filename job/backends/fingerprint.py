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
from urllib.parse import urlsplit

from job.errors import JobError
from job.records.run_keys import model_identity

# files whose bytes define the model's behaviour and are small enough to hash
_CONTENT = re.compile(r"\.(json|jinja|model|txt|tiktoken)$")
# weights: hashing gigabytes would cost minutes; name, size and the bytes at both ends (a
# safetensors/GGUF header and the last tensors) change on every save, unlike a copy's mtime
_WEIGHTS = re.compile(r"\.(safetensors|bin|gguf|pt|pth)$")
_ENDS = 1 << 20
_LOCAL_PROVIDERS = ("hf", "vllm")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def _file_entries(path: Path, gguf_file: str | None = None) -> list[list[Any]]:
    """[name, sha256 or size+digest of both ends] for the checkpoint's top-level config,
    tokenizer, chat template and weight files (or for the single file a GGUF path names);
    with --gguf-file, of the folder's GGUF files only the selected one."""
    try:
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    except OSError as e:
        raise JobError(
            f"{path}: cannot read the model checkpoint ({e.strerror}); fix its permissions"
        ) from None
    chosen = Path(gguf_file).name if gguf_file else None
    out: list[list[Any]] = []
    for f in files:
        if f.name.startswith(".") or (chosen and f.suffix == ".gguf" and f.name != chosen):
            continue
        try:
            if _WEIGHTS.search(f.name):
                out.append([f.name, f.stat().st_size, _ends_digest(f)])
            elif _CONTENT.search(f.name):
                out.append([f.name, hashlib.sha256(f.read_bytes()).hexdigest()])
        except OSError as e:  # loading the model reports it properly; here it is just different
            out.append([f.name, f"unreadable: {e.strerror}"])
    return out


def _ends_digest(f: Path) -> str:
    """sha256 of the first and last MiB: cheap on gigabytes, equal for a byte-identical copy."""
    with f.open("rb") as fh:
        head = fh.read(_ENDS)
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(len(head), size - _ENDS))
        return hashlib.sha256(head + fh.read()).hexdigest()[:16]


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


def fingerprint(
    provider: str, model: str, revision: str | None = None, gguf_file: str | None = None
) -> dict[str, Any] | None:
    """What identifies the weights behind `provider/model`; None where the spec already does
    (API models, mocks, the built-in smoke model). `path` is for display only (see
    job.records.run_keys): a copy of the checkpoint elsewhere is the same model."""
    if provider not in _LOCAL_PROVIDERS:
        return None
    path = Path(model).expanduser()
    if path.exists():
        entries = _file_entries(path, gguf_file)
        digest = hashlib.sha256(repr(entries).encode("utf-8")).hexdigest()[:16]
        return {"kind": "local", "path": str(path.resolve()), "sha256": digest, "files": len(entries)}
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith("."):
        return {"kind": "hub", "id": model, "revision": hub_revision(model, revision)}
    return {"kind": "missing", "path": model}  # loading will fail with its own error


LOCAL_OUTPUT_OPTIONS = ("trust_remote_code", "tokenizer_mode", "gguf_file", "revision", "max_model_len")
"""Backend options of hf/ and vllm/ that change what the model answers (dtype has its own key;
max_model_len cuts answers that reach it). Not device, batch or memory settings: speed only."""


def output_options(provider: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The set options that change a backend's outputs, for the shard hash and judge inputs:
    a local model's loading options. None when none is set, so older hashes stay as they were.

    Not an API model's endpoint: the same server restarted on another port or node (a Slurm
    requeue, a port picked at start-up) serves the same model, and a fixed served name over one
    URL cannot tell checkpoints apart anyway. The endpoint is recorded (`endpoint_of`) instead;
    another checkpoint behind one served name needs its own --model-name / --judge-name."""
    keys = LOCAL_OUTPUT_OPTIONS if provider in _LOCAL_PROVIDERS else ()
    out = {k: options[k] for k in keys if options.get(k)}
    return out or None


def endpoint_of(provider: str, options: dict[str, Any]) -> str | None:
    """An API model's endpoint as recorded in manifests: scheme://host:port/path, no secret."""
    url = options.get("base_url")
    return normalize_url(str(url)) if provider == "openai" and url else None


def judge_key(provider: str, fp: dict[str, Any] | None, options: dict[str, Any]) -> dict[str, Any] | None:
    """What besides its spec decides a judge's replies, for inputs_sha256: a local judge's
    weights (not where they lie) and set loading options (not an API judge's endpoint:
    output_options says why)."""
    opts = output_options(provider, options) or {}
    if provider in _LOCAL_PROVIDERS and options.get("dtype") not in (None, "auto"):
        opts["dtype"] = options["dtype"]
    key = model_identity(fp)
    return {**(key or {}), "options": opts} if opts else key


def normalize_url(url: str) -> str:
    """scheme://host:port/path of an endpoint: never its user:password@, query or fragment
    (they may hold secrets), and the same for trivially different spellings."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        raise JobError(f"--base-url {_redacted(parts)}: bad port; e.g. http://127.0.0.1:8000/v1") from None
    host = (parts.hostname or "").lower()
    return f"{scheme}://{host}{f':{port}' if port else ''}{parts.path.rstrip('/')}"


def _redacted(parts: Any) -> str:
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path}"


def describe(fp: dict[str, Any] | None) -> str:
    """A short form for log lines: digest of a local checkpoint, commit of a hub model."""
    if not fp:
        return "none"
    if fp.get("kind") == "local":
        return f"{fp['path']} {fp['sha256']}"
    if fp.get("kind") == "hub":
        return f"{fp['id']}@{fp.get('revision') or 'unknown revision'}"
    return str(fp.get("path"))
