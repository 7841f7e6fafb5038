"""`job bench list | pull | verify`: fetch registered bench files and check their sha256."""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from job.benches import registry, sha256_bytes
from job.errors import JobError


@dataclass
class FileStatus:
    bench: str
    logical: str
    path: Path
    state: str
    """ok | missing | mismatch"""


def _names(names: tuple[str, ...] | list[str]) -> list[str]:
    reg = registry()
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise JobError(f"unknown bench {unknown[0]!r}; registered: {', '.join(sorted(reg))}")
    return list(names) or sorted(reg)


def check_files(names: list[str], data_dir: Path) -> list[FileStatus]:
    out = []
    for name in _names(names):
        for logical, entry in registry()[name]["files"].items():
            path = data_dir / entry["path"]
            if not path.is_file():
                state = "missing"
            else:
                state = "ok" if sha256_bytes(path.read_bytes()) == entry["sha256"] else "mismatch"
            out.append(FileStatus(name, logical, path, state))
    return out


def _download(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "mtbench-job"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data: bytes = resp.read()
            return data
    except urllib.error.HTTPError as e:
        raise JobError(f"download failed: {url}: HTTP {e.code}; check --base-url") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise JobError(f"download failed: {url}: {reason}; check the network or --base-url") from None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def pull(
    names: list[str], data_dir: Path, base_url: str | None = None, timeout: float = 60.0
) -> list[tuple[FileStatus, str]]:
    """Download every missing or stale file; verify before anything is written.

    With base_url, files are fetched from `<base_url>/<path>` (a mirror in the
    FastChat `data/` layout); otherwise from the pinned upstream URLs.
    Returns (status, action) with action in {kept, downloaded}.
    """
    done = []
    for st in check_files(names, data_dir):
        entry = registry()[st.bench]["files"][st.logical]
        if st.state == "ok":
            done.append((st, "kept"))
            continue
        url = f"{base_url.rstrip('/')}/{entry['path']}" if base_url else entry["url"]
        data = _download(url, timeout)
        got = sha256_bytes(data)
        if got != entry["sha256"]:
            raise JobError(
                f"{entry['path']}: sha256 mismatch after download from {url} "
                f"(got {got[:12]}…, expected {entry['sha256'][:12]}…); the source changed or is wrong"
            )
        _atomic_write(st.path, data)
        done.append((FileStatus(st.bench, st.logical, st.path, "ok"), "downloaded"))
    return done
