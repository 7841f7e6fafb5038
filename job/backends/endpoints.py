"""Which endpoint and key an openai/ judge uses: its own, never the generator's by accident.

The openai backend would read OPENAI_BASE_URL / OPENAI_API_KEY by itself; for the judge the
commands resolve both here and pass them explicitly (`base_url_env=None`), so judge
requests never go to the generation server and the generation key never goes to the judge.
Only the name of the key variable travels in configs, never the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from job.backends import parse_spec
from job.errors import JobError

OPENAI_URL = "https://api.openai.com/v1"
"""Where the openai client goes without a base URL."""
JUDGE_KEY_ENV = "JOB_JUDGE_API_KEY"
"""Default variable holding the judge's key (--judge-api-key-env names another)."""


@dataclass(frozen=True)
class Generator:
    """The generation endpoint of `job run` when the generator is an openai/ model."""

    base_url: str | None
    """None: api.openai.com (or OPENAI_BASE_URL, already folded in by the option)"""


def launcher_generator(env: Mapping[str, str] = os.environ) -> Generator | None:
    """The generator beside `job judge`: the launchers (k8s ConfigMap, Slurm) give every step
    the same environment, so with an openai/ JOB_MODEL, OPENAI_BASE_URL is that generator's."""
    try:
        api = parse_spec(env.get("JOB_MODEL") or "none")[0] == "openai"
    except JobError:  # unset or not a spec: no generator to keep apart from
        return None
    return Generator(env.get("OPENAI_BASE_URL") or None) if api else None


def _is_openai(url: str | None) -> bool:
    """api.openai.com (the default): a server that certainly wants a real key."""
    return not url or urlsplit(url).hostname == "api.openai.com"


def _same(a: str | None, b: str | None) -> bool:
    return (a or OPENAI_URL).rstrip("/") == (b or OPENAI_URL).rstrip("/")


def _key_env(name: str | None, env: Mapping[str, str]) -> str | None:
    """The judge's own key variable if it is set; an explicitly named one must be."""
    if name and not env.get(name):
        raise JobError(f"{name} (--judge-api-key-env) is not set; export the judge's API key in it")
    return name or (JUDGE_KEY_ENV if env.get(JUDGE_KEY_ENV) else None)


def judge_endpoint(
    judge_spec: str,
    judge_base_url: str | None,
    key_env: str | None,
    generator: Generator | None,
    env: Mapping[str, str] = os.environ,
) -> dict[str, Any]:
    """Backend options (base_url, base_url_env, api_key_env) of an openai/ judge; {} for others.

    generator is None when nothing else talks to an API (`job judge` with no openai/
    JOB_MODEL, `job run` with a local generator): then OPENAI_BASE_URL / OPENAI_API_KEY are
    the judge's fallbacks.
    """
    if parse_spec(judge_spec)[0] != "openai":
        return {}
    own_key = _key_env(key_env, env)
    if generator is None:
        url = judge_base_url or env.get("OPENAI_BASE_URL") or None
        return {"base_url": url, "base_url_env": None, "api_key_env": own_key or "OPENAI_API_KEY"}
    if not judge_base_url and env.get("OPENAI_BASE_URL"):
        raise JobError(
            "OPENAI_BASE_URL is the generation endpoint here, so the judge will not guess its own: "
            f"pass --judge-base-url URL (or JOB_JUDGE_BASE_URL; {OPENAI_URL} for OpenAI)"
        )
    if own_key is None and _same(judge_base_url, generator.base_url):
        own_key = "OPENAI_API_KEY"  # one server for both: it already has that key
    if own_key is None and _is_openai(judge_base_url):
        raise JobError(
            f"the judge {judge_spec} at api.openai.com needs its own key: set {JUDGE_KEY_ENV}, or pass "
            "--judge-api-key-env OPENAI_API_KEY to send it the generator's key"
        )
    # own_key None + another judge URL: a local judge server that needs no key gets none of ours
    return {"base_url": judge_base_url, "base_url_env": None, "api_key_env": own_key}
