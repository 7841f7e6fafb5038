"""Polling helpers for tests/slurm (scontrol, since accounting/sacct is off in CI)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

END_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def job_records(job_id: str) -> list[dict[str, str]]:
    """`scontrol show job -o` as dicts, one per job (array: one per task). Accounting
    (sacct) is off in the CI cluster, so scontrol is the source of truth."""
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"scontrol show job {job_id}: {r.stderr.strip()}"
    recs = []
    for line in r.stdout.splitlines():
        # values never contain spaces except Command/WorkDir paths, which we do not read
        recs.append(dict(m.groups() for m in re.finditer(r"(\S+?)=(\S*)", line)))
    return recs


def wait_for_end(job_id: str, timeout: float, poll: float = 1.0) -> list[dict[str, str]]:
    """Poll until every record of the job is in an end state; fail (never hang) at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        recs = job_records(job_id)
        if recs and all(r.get("JobState") in END_STATES for r in recs):
            return recs
        if time.monotonic() > deadline:
            states = [(r.get("JobId"), r.get("JobState"), r.get("Reason")) for r in recs]
            subprocess.run(["scancel", job_id], timeout=30)
            pytest.fail(f"job {job_id} did not end within {timeout}s: {states}")
        time.sleep(poll)


def logs(tmp_path: Path) -> str:
    """All job logs, for assertion messages."""
    parts = [
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted((tmp_path / "logs").glob("*"))
    ]
    return "\n".join(parts) or "(no job logs)"
