"""Backends: the registry (`provider/model` specs resolved to lazily imported factories),
the protocol every backend implements (base.py: every capability declared, no hasattr),
one module per backend (mock, hf + hf_*, vllm, openai_api + openai_wire), local model fingerprints
(fingerprint.py), judge endpoints (endpoints.py) and the smoke model (smoke_model.py).

Importing this module imports no heavy library; each provider's module is
imported only when a spec names it, and a missing extra is an error naming
the `pip install` that fixes it.

Imports core only (errors): never benches, storage or a stage (import-linter).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from job.backends.base import Backend
from job.errors import JobError


@dataclass(frozen=True)
class Provider:
    module: str
    factory: str
    extra: str | None
    """pip extra that provides the dependencies, if any."""
    needs: tuple[str, ...] = ()
    """top-level modules that must be importable"""
    takes_model: bool = True


PROVIDERS: dict[str, Provider] = {
    "mock": Provider("job.backends.mock", "MockBackend", None),
    "hf": Provider("job.backends.hf", "HFBackend", "hf", ("torch", "transformers")),
    "hf-tiny": Provider(
        "job.backends.hf", "tiny_backend", "hf", ("torch", "transformers"), takes_model=False
    ),
    "openai": Provider("job.backends.openai_api", "OpenAIBackend", None, ("openai",)),
    "vllm": Provider("job.backends.vllm", "VLLMBackend", "vllm", ("vllm",)),
}


OPENAI_BATCH = Provider("job.backends.openai_batch", "OpenAIBatchBackend", None, ("openai",))
"""openai/<model> with --openai-batch (openai_batch=True in the options)."""


def check_openai_batch(spec: str) -> None:
    """--openai-batch takes openai/ models only (checked before anything runs)."""
    if parse_spec(spec)[0] != "openai":
        raise JobError(f"--openai-batch needs an openai/<model> judge, not {spec!r}; drop it")


def parse_spec(spec: str) -> tuple[str, str]:
    """'hf/./ckpt' -> ('hf', './ckpt'); 'hf-tiny' -> ('hf-tiny', '')."""
    provider, sep, model = spec.partition("/")
    if provider not in PROVIDERS:
        known = ", ".join(f"{p}/<model>" if PROVIDERS[p].takes_model else p for p in PROVIDERS)
        raise JobError(f"unknown model provider {provider!r} in {spec!r}; known: {known}")
    if PROVIDERS[provider].takes_model and not model:
        raise JobError(f"model spec {spec!r} names no model; write {provider}/<model>")
    return provider, model


ONLY_FOR: dict[str, tuple[str, ...]] = {
    "chat_template": ("hf", "vllm"), "tokenizer_mode": ("vllm",),
    "chat_template_kwargs": ("hf", "vllm"), "extra_body": ("openai",),
}  # fmt: skip
"""Options that change the prompt itself: set for another provider they are an error, not ignored."""
ONLY_FOR_HINT = {
    "chat_template_kwargs": "for an OpenAI-compatible server pass --extra-body "
    """'{"chat_template_kwargs": {...}}' (vLLM, SGLang take it in the request)""",
    "extra_body": "it is merged into API requests; a local model takes --chat-template-kwargs",
}


def load_backend(spec: str, **options: Any) -> Backend:
    """Build the backend for `spec`; options not used by the provider are ignored by it, except
    those of ONLY_FOR (a prompt rendered other than asked must not pass silently)."""
    provider, model = parse_spec(spec)
    for name, providers in ONLY_FOR.items():
        if options.get(name) and provider not in providers:
            flag = "--" + name.replace("_", "-")
            hint = ONLY_FOR_HINT.get(name, f"a server applies its own, e.g. `vllm serve {flag}`")
            raise JobError(
                f"{flag} applies to {' and '.join(p + '/' for p in providers)} models only, not {spec!r}; "
                f"drop it ({hint})"
            )
    entry = PROVIDERS[provider]
    if options.pop("openai_batch", False):  # --openai-batch: the same model through the Batch API
        check_openai_batch(spec)
        entry = OPENAI_BATCH
    for mod in entry.needs:
        try:
            importlib.import_module(mod)
        except ImportError:
            fix = f"pip install 'mtbench-job[{entry.extra}]'" if entry.extra else f"pip install {mod}"
            raise JobError(f"provider {provider!r} needs the Python package {mod!r}; run: {fix}") from None
    module = importlib.import_module(entry.module)
    factory = getattr(module, entry.factory)
    backend: Backend = factory(spec=spec, model=model, **options)
    return backend
