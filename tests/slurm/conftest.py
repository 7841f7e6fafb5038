"""Fixtures for the real one-node Slurm started by .ci/setup.d/20-slurm.sh.

In CI (CI set) a missing or dead Slurm is a test failure; locally the tests skip only
when `sbatch` is not installed at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = ".ci/setup.d/20-slurm.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The node name of a Slurm cluster that accepts jobs."""
    if shutil.which("sbatch") is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but Slurm is not installed: {SETUP} should have installed it")
        pytest.skip(f"Slurm not installed (run {SETUP} as root; with CI set this is a failure)")
    deadline = time.monotonic() + 20
    out = ""
    while time.monotonic() < deadline:
        r = subprocess.run(["sinfo", "-h", "-o", "%n %T"], capture_output=True, text=True, timeout=10)
        out = (r.stdout + r.stderr).strip()
        for line in r.stdout.splitlines():
            node, _, state = line.partition(" ")
            if state.rstrip("*") in {"idle", "mixed", "allocated", "completing"}:
                return node
        time.sleep(0.5)
    pytest.fail(f"Slurm is installed but no node takes jobs ({out!r}); start it with {SETUP}")


@pytest.fixture
def slurm_env(job_env: dict[str, str], slurm_cluster: str, tmp_path: Path) -> dict[str, str]:
    """Environment for submissions: this interpreter's `job` first on PATH, logs in tmp."""
    env = dict(job_env)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["JOB_LOG_DIR"] = str(tmp_path / "logs")
    env["JOB_WAIT_POLL"] = "1"
    for k in [k for k in env if k.startswith("SBATCH_") or k.startswith("SALLOC_")]:
        del env[k]
    return env


RunCmd = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cmd(slurm_env: dict[str, str], tmp_path: Path) -> RunCmd:
    def run(
        args: list[str], env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            env=dict(slurm_env, **(env or {})),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
