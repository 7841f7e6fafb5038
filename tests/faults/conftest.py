"""Fixtures shared by the fault-injection tests (tests/faults/)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def storage_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Outputs of a healthy local smoke pipeline (tests/faults/storage_pipeline.py)."""
    from faults.storage_pipeline import build_reference

    return build_reference(tmp_path_factory.mktemp("storage-reference"))
