"""Shared fixtures: the real bench data beside the repo, a tiny offline chat model, and
a helper that runs the real `job` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_BENCH_DATA = Path(os.environ.get("JOB_TEST_BENCH_DATA", REPO.parent / "shared" / "bench_data"))

# shared fixture plugins (modules beside this file; tests/ is on pythonpath):
# moto_s3 = a real S3 endpoint (moto server on 127.0.0.1): moto_server, s3
# servers.fixtures = an OpenAI-compatible test server (tests/servers/openai_server.py): openai_server, make_openai_server
# real_model = SmolLM2-135M-Instruct rebuilt from its GGUF wheel, and `transformers serve` on it
pytest_plugins = ["moto_s3", "servers.fixtures", "real_model"]

# no test may reach a model hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_bench_data() -> Path:
    """../shared/bench_data (FastChat data/ layout): the real mt_bench and japanese_mt_bench."""
    assert (SHARED_BENCH_DATA / "mt_bench" / "question.jsonl").is_file(), (
        f"real bench data not found at {SHARED_BENCH_DATA}; set JOB_TEST_BENCH_DATA"
    )
    return SHARED_BENCH_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama chat model built in-process (BPE tokenizer, chat template)."""
    from job.backends.smoke_model import build

    return build(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture
def job_env(tmp_path: Path) -> dict[str, str]:
    """Environment for CLI subprocesses: isolated caches, no inherited JOB_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "SLURM_"))}
    env.update(JOB_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


RunJob = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_job(job_env: dict[str, str], tmp_path: Path) -> RunJob:
    """Run the real `job` command; returns the CompletedProcess (check=False by default)."""

    def run(
        *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(job_env, **(env or {}))
        return subprocess.run(
            [sys.executable, "-c", "from job.cli import main; main()", *args],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd or tmp_path,
            timeout=timeout,
        )

    return run
