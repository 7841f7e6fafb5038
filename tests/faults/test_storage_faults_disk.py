"""Local output faults under the real CLI: a full disk (a small tmpfs, and everywhere a file
size limit, RLIMIT_FSIZE -> EFBIG) and a read-only output dir.

Each failing command must exit 2 with one `error:` line naming the path, the errno and a
fix; every file written before stays byte-identical; no temp file is left behind; and a
re-run once the fault is gone completes, equal to a healthy run, without duplicates.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faults.storage_pipeline import (
    ANSWERS,
    GEN,
    JUDGE,
    JUDGMENTS,
    REDUCE,
    REPORT,
    SCORES,
    canon_judgments,
    error_line,
    lines,
    run_cli,
)  # fmt: skip

pytestmark = pytest.mark.timeout(240)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _hidden(root: Path) -> list[str]:
    """Temp files (`.name.xxx.tmp`, `.write-check-*`) a failed write left behind."""
    return [p.as_posix() for p in root.rglob(".*")]


def _kept(before: dict[str, bytes], root: Path) -> None:
    """Every file written before the fault is still there, byte for byte."""
    now = _snapshot(root)
    assert {k: now.get(k) for k in before} == before


def _complete(out: Path, ref: dict[str, Any]) -> None:
    assert lines((out / ANSWERS).read_bytes()) == ref["answers"]
    assert canon_judgments((out / JUDGMENTS).read_bytes()) == ref["judgments"]
    assert (out / SCORES).read_bytes() == ref["scores"]
    assert not _hidden(out)
    # atomic writes keep the modes a plain open() gives (mkstemp alone would make them 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()} == {0o666 & ~umask}


def _mount(target: Path, *opts: str) -> None:
    """Mount a tmpfs (root only); skip the test if this machine does not allow it."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", str(target)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: room for the smoke run, and easy to fill."""
    mnt = tmp_path / "fs"
    _mount(mnt, "size=1m", "mode=0755")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs: Path, leave: int = 0) -> Path:
    """Fill `fs` up, then give back `leave` bytes (rounded to pages by tmpfs)."""
    filler = fs / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    if leave:
        os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


def test_full_disk_tmpfs(small_fs: Path, storage_reference: dict[str, Any]) -> None:
    out = small_fs / "runs"
    for args in (GEN, REDUCE):
        assert run_cli(*args, "--output", str(out)).returncode == 0
    before = _snapshot(out)
    # room for the judge's manifest and a few groups, not for all 36 judgments (~32 KB)
    filler = _fill(small_fs, leave=20 * 1024)
    line = error_line(run_cli(*JUDGE, "--output", str(out)))
    assert line.startswith(f"error: cannot write {out / JUDGMENTS}: No space left on device (ENOSPC); "), line
    assert line.endswith("free space on that filesystem or pass another --output"), line
    data = (out / JUDGMENTS).read_bytes()
    stored = canon_judgments(data)  # whole records only: the torn batch was cut
    assert data.endswith(b"\n") and 0 < len(stored) < 36
    assert set(stored) < set(storage_reference["judgments"])
    _kept(before, out)
    assert not _hidden(out)
    _fill(small_fs)  # now truly full: every stage fails cleanly
    before = _snapshot(out)
    for args, path in (
        (REPORT, out / SCORES),
        (REDUCE, out / ANSWERS),
        (GEN + ["--model-name", "echo2"], out / "smoke/shards/echo2/shard-00000-of-00003.jsonl"),
    ):
        line = error_line(run_cli(*args, "--output", str(out)))
        assert line.startswith(f"error: cannot write {path}: No space left on device (ENOSPC); "), line
        _kept(before, out)
        assert not _hidden(out), args
    filler.unlink()  # space is back: the re-run completes what was missing
    res = run_cli(*JUDGE, "--output", str(out))
    assert res.returncode == 0 and f"{36 - len(stored)} ok; {len(stored)} games" in res.stdout, res.stdout
    assert run_cli(*REPORT, "--output", str(out)).returncode == 0
    _complete(out, storage_reference)


def test_file_size_limit_efbig(tmp_path: Path, storage_reference: dict[str, Any]) -> None:
    """Runs everywhere (no mount): RLIMIT_FSIZE makes writes past 16 KB fail with EFBIG."""
    out = tmp_path / "runs"
    for args in (GEN, REDUCE):
        assert run_cli(*args, "--output", str(out)).returncode == 0
    before = _snapshot(out)
    res = run_cli(*JUDGE, "--output", str(out), fsize=16 * 1024)
    line = error_line(res)
    assert line == (
        f"error: cannot write {out / JUDGMENTS}: File too large (EFBIG); the records stored before are kept; "
        "the file size limit (ulimit -f) is too small; raise it or pass another --output"
    )
    data = (out / JUDGMENTS).read_bytes()
    stored = canon_judgments(data)
    assert data.endswith(b"\n") and len(data) <= 16 * 1024 and 0 < len(stored) < 36
    _kept(before, out)
    # a shard bigger than the limit: nothing committed, the temp file removed
    line = error_line(run_cli(*GEN, "--model-name", "big", "--output", str(out), fsize=1024))
    assert "shards/big/shard-00000-of-00003.jsonl: File too large (EFBIG)" in line
    assert not (out / "smoke/shards/big").exists() or not list((out / "smoke/shards/big").iterdir())
    _kept(before, out)
    assert not _hidden(out)
    res = run_cli(*JUDGE, "--output", str(out))
    assert res.returncode == 0 and f"{36 - len(stored)} ok; {len(stored)} games" in res.stdout, res.stdout
    assert run_cli(*REPORT, "--output", str(out)).returncode == 0
    _complete(out, storage_reference)


def _make_read_only(tmp_path: Path, out: Path) -> None:
    """Root ignores file modes: remount the tmpfs read-only. Others: chmod 555 every dir."""
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-o", "remount,ro", str(out.parent)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    else:
        for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
            d.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def _make_writable(out: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,rw", str(out.parent)], check=True)
    else:
        for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
            d.chmod(0o755)


def test_read_only_output_dir(tmp_path: Path, storage_reference: dict[str, Any]) -> None:
    fs = tmp_path / "fs"
    if os.geteuid() == 0:
        _mount(fs, "size=4m", "mode=0755")
    out = fs / "runs"
    try:
        for args in (GEN, REDUCE, JUDGE):
            assert run_cli(*args, "--output", str(out)).returncode == 0
        before = _snapshot(out)
        _make_read_only(tmp_path, out)
        why = "(Read-only file system, EROFS)" if os.geteuid() == 0 else "(Permission denied, EACCES)"
        for args in (GEN + ["--force"], JUDGE):
            line = error_line(run_cli(*args, "--output", str(out)))
            assert line == f"error: output dir {out} is not writable {why}; pass a writable --output", line
        for args, path in ((REDUCE, out / ANSWERS), (REPORT, out / SCORES)):
            line = error_line(run_cli(*args, "--output", str(out)))
            assert line.startswith(f"error: cannot write {path}: "), line
            assert line.endswith("pass a writable --output"), line
        _kept(before, out)
        assert _snapshot(out).keys() == before.keys()
        _make_writable(out)
        assert run_cli(*REPORT, "--output", str(out)).returncode == 0
        _complete(out, storage_reference)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(fs)], check=False)
        else:
            _make_writable(out)
