"""Fixtures shared by the fault-injection tests (tests/faults/)."""

from __future__ import annotations
