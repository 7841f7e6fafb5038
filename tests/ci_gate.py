"""Tests that need a system component (Slurm, Docker, Chromium, namespaces...): skipped on a
developer machine without it, but a failure in CI, where a skip would pass as green."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str, fix: str = "") -> NoReturn:
    """Fail in CI (naming `fix`, how CI should have provided it), skip elsewhere."""
    if in_ci():
        pytest.fail(f"{reason}; {fix}" if fix else reason)
    pytest.skip(reason)
