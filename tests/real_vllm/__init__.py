"""The real vllm wheel for the `vllm_contract` tests: where it is, and a way to ask it.

tests/real_vllm/install.sh puts the pinned wheel (and the few deps its CPU-side modules
import) in a folder of its own, never site-packages (the test process imports the fake
vllm; the "vllm extra missing" test needs vllm absent). Looked for in JOB_REAL_VLLM, then
.venv/vllm-*/ and .venv-ci/vllm-*/ (where install.sh and .ci/setup.d put it). Missing: a skip
on a developer machine, a failure in CI (tests/ci_gate.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ci_gate import unavailable

REPO = Path(__file__).resolve().parents[2]
INSTALL = "bash tests/real_vllm/install.sh"


def find() -> Path | None:
    """The folder holding the real vllm/ (a complete install: install.sh's marker is there)."""
    roots = [os.environ.get("JOB_REAL_VLLM", ""), *sorted(map(str, REPO.glob(".venv*/vllm-*")))]
    for root in filter(None, roots):
        if (Path(root) / "vllm/sampling_params.py").is_file() and list(Path(root).glob(".installed-*")):
            return Path(root)
    return None


def require() -> Path:
    root = find()
    if root is None:
        unavailable(
            "the real vllm wheel is not installed for the vllm_contract tests",
            f"run `{INSTALL}` (.ci/setup.d/60-vllm-contract.sh does in CI)",
        )
    return root


def probe(root: Path, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run tasks through tests/real_vllm/probe.py in a process that imports the real vllm."""
    env = {**os.environ, "PYTHONPATH": str(root), "VLLM_LOGGING_LEVEL": "ERROR", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("probe.py"))],
        input=json.dumps(tasks), capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(r.stdout)
    return results
