"""The image records the versions it really got: docker/record_versions.py writes
/opt/versions.json in the layer that installs the last package (no docker needed here)."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def test_record_versions_writes_what_is_installed(tmp_path: Path) -> None:
    out = tmp_path / "versions.json"
    r = subprocess.run(
        [sys.executable, str(REPO / "docker/record_versions.py"), str(out)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    found = json.loads(out.read_text())
    for name in ("torch", "transformers", "mtbench-job"):
        assert found[name] == metadata.version(name)
    assert "vllm" not in found, "a package that is not installed is left out, never guessed"


def test_dockerfile_records_versions_after_the_last_install() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    record = next(i for i, line in enumerate(lines) if "record_versions.py /opt/versions.json" in line)
    last_install = max(i for i, line in enumerate(lines) if "pip install" in line)
    assert last_install < record, "versions are recorded after every pip install"
    assert any(line.startswith("COPY docker/record_versions.py") for line in lines[:record])
    allowed = (REPO / ".dockerignore").read_text().splitlines()
    assert "!docker/record_versions.py" in allowed, ".dockerignore is an allowlist: send the script"
