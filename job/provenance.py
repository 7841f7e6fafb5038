"""Facts recorded in every manifest and report: package version, git revision, host."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from job import __version__


@cache
def git_revision() -> str | None:
    """JOB_GIT_REVISION (set in container builds), else `git rev-parse` of the source tree."""
    env = os.environ.get("JOB_GIT_REVISION")
    if env:
        return env
    src = Path(__file__).resolve().parent.parent
    if not (src / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def host() -> str:
    return socket.gethostname()


def package_version() -> str:
    return __version__


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of obj (first 16 hex chars)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
