"""benchmarks/gpu_check.sh --tiny: the prepared GPU check runs on a CPU (so it does not rot
between GPU sessions), writes its table, JSON and log to $OUT, and fails loudly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(tmp_path: Path, *args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout
    )


@pytest.mark.slow  # the GPU check's --tiny run on CPU (800 generations): ~50 s loaded
@pytest.mark.timeout(300)
def test_tiny_runs_on_cpu_and_writes_to_out(shared_bench_data: Path, tmp_path: Path) -> None:
    r = _run(tmp_path, "--tiny", "--bench-data", str(shared_bench_data))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out"
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["failures"] == [] and doc["complete"]
    ours, fastchat = doc["rows"]
    # mt_bench: 80 questions x 2 turns x 5 choices x 16 forced tokens; FastChat on 2 questions x 1
    assert ours["tokens"] == 80 * 2 * 5 * 16 and fastchat["tokens"] == 2 * 2 * 16
    assert fastchat["extrapolated_wall_s"] == pytest.approx(ours["tokens"] / fastchat["tok_s"])
    assert ours["ratio"] == pytest.approx(ours["tok_s"] / fastchat["tok_s"]) and ours["forward_calls"] > 0
    table = (out / "gpu_check.md").read_text()
    assert "| shape | variant | new tokens | wall s | tok/s | vs FastChat | peak GiB |" in table
    assert "extrapolated" in table and "12,800" in table
    log = (out / "gpu_check.log").read_text()
    assert "== pytest -m gpu" in log and table.splitlines()[0] in log


def test_failures_exit_nonzero(shared_bench_data: Path, tmp_path: Path) -> None:
    r = _run(tmp_path, "--tiny", "--bench-data", str(tmp_path), timeout=60)
    assert r.returncode != 0 and f"no mt_bench/question.jsonl under --bench-data {tmp_path}" in r.stdout
    r = _run(tmp_path, "--tiny", "--shapes", "13b", timeout=60)
    assert r.returncode != 0 and "unknown shape(s) 13b" in r.stdout
    r = _run(tmp_path, "--tiny", "--bench-data", str(shared_bench_data), "--time-limit", "1", timeout=60)
    assert r.returncode != 0 and "ran past the time limit of 1 s" in r.stdout + r.stderr


def test_without_bench_data_falls_back_to_the_packaged_smoke_bench(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the GPU machine only the repo is copied: no ../shared/bench_data there."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    monkeypatch.delenv("JOB_BENCH_DATA", raising=False)
    monkeypatch.setattr(gpu_check, "REPO", tmp_path / "repo")
    assert gpu_check.bench_data_dir(None) == (None, "smoke")
    assert "using the packaged smoke bench (9 questions): NOT mt_bench numbers" in capsys.readouterr().out
