"""Run commands inside a private network namespace (only `lo`, brought up).

Ray will not bind to loopback on a machine with a network interface; inside
`unshare -n` it uses 127.0.0.1 for everything, so no test traffic can leave the
machine (../shared/reference/infra_misc.md, section Ray).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

JOB = [sys.executable, "-c", "from job.cli import main; main()"]


def in_netns(
    script: str, env: dict[str, str], cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run a POSIX shell script in a new network namespace with only loopback up."""
    return subprocess.run(
        ["unshare", "-n", "sh", "-euc", "ip link set lo up\n" + script],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def job_netns(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """The real `job` CLI in its own network namespace."""
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *JOB, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
