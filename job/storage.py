"""One small interface over a local directory and s3://bucket/prefix.

Keys are '/'-separated paths relative to the run root. Writes are atomic:
a reader sees the whole object or nothing (temp file + rename locally, a
single PUT on S3).
"""

from __future__ import annotations

import errno
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from job.errors import JobError

# files get the permissions a plain open() would give (mkstemp makes them 0600)
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FIXES = {
    errno.ENOSPC: "free space on that filesystem or pass another --output",
    errno.EDQUOT: "free space (disk quota exceeded) or pass another --output",
    errno.EFBIG: "the file size limit (ulimit -f) is too small; raise it or pass another --output",
    errno.EROFS: "the filesystem is read-only; pass a writable --output",
    errno.EACCES: "no permission; pass a writable --output",
    errno.EPERM: "no permission; pass a writable --output",
}


def write_error(path: object, e: OSError, done: str = "files already there are unchanged") -> JobError:
    """One line: the path, the OS error with its errno name, what is kept, and the fix."""
    name = errno.errorcode.get(e.errno or 0, "")
    fix = _FIXES.get(e.errno or 0, "check the path or pass another --output")
    return JobError(f"cannot write {path}: {e.strerror} ({name}); {done}; {fix}")


class Storage(ABC):
    root: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Write atomically. With if_absent, return False (and write nothing) if the key exists."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix` (recursive), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def uri(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def check_writable(self) -> None:
        """Fail early, before a model is loaded, if outputs cannot be written."""


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike[str]):
        self.root = str(root)
        self.path = Path(root)

    def _p(self, key: str) -> Path:
        return self.path / key

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._p(key).read_bytes()
        except FileNotFoundError:
            raise JobError(f"{self.uri(key)}: not found") from None

    def write_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        dest = self._p(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        except OSError as e:
            raise write_error(dest, e) from None
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o666 & ~_UMASK)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if if_absent:
                # link() fails if dest exists: an atomic create-if-absent
                try:
                    os.link(tmp, dest)
                except FileExistsError:
                    return False
                finally:
                    os.unlink(tmp)
            else:
                os.replace(tmp, dest)
        except OSError as e:
            # the temp file never becomes visible: a full disk leaves nothing behind
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise write_error(dest, e) from None
        except BaseException:
            # interrupted mid-write (SIGTERM, Ctrl-C): no hidden temp file is left either
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return True

    def exists(self, key: str) -> bool:
        return self._p(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self._p(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.path).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, key: str) -> None:
        self._p(key).unlink(missing_ok=True)

    def check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-check-"):
                pass
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, "")
            raise JobError(
                f"output dir {self.path} is not writable ({e.strerror}, {name}); pass a writable --output"
            ) from None


def open_storage(root: str) -> Storage:
    """Storage for a local path or an s3://bucket/prefix URI."""
    if root.startswith("s3://"):
        from job.storage_s3 import S3Storage

        return S3Storage(root)
    if "://" in root:
        raise JobError(f"unsupported output location {root!r}: use a local path or s3://bucket/prefix")
    return LocalStorage(root)
