"""Fixtures for the Ray tests: a working private network namespace and the CLI environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from ci_gate import unavailable


def _netns_problem() -> str | None:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "`unshare` (util-linux) and `ip` (iproute2) are needed; see .ci/setup.d/40-ray.sh"
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace (unshare -n, needs root/CAP_SYS_ADMIN): {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="session")
def netns() -> None:
    """Private network namespaces work here; in CI their absence is a failure, not a skip."""
    problem = _netns_problem()
    if problem:
        unavailable(problem, "Ray tests must run in a private network namespace")


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for CLI runs: private Ray temp dir (short: unix socket paths), no phoning home."""
    ray_tmp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "SLURM_", "RAY_"))}
    env.update(
        JOB_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        RAY_TMPDIR=ray_tmp,
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="disabled",
        # same thread count in Ray actors (Ray sets 1 per CPU) and the local path: identical answers
        OMP_NUM_THREADS="1",
    )
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)
