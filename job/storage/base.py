"""The storage interface: Storage (atomic, '/'-separated keys relative to the run root) and
write_error (one line for a failed write: path, errno name, what is kept, the fix)."""

from __future__ import annotations

import errno
from abc import ABC, abstractmethod

from job.errors import JobError

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

    # compare-and-swap, for files several runs update (read, merge, write back)
    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """(content, version) of `key`; (None, None) if it is absent."""
        raise NotImplementedError(f"{type(self).__name__} has no conditional writes")

    def write_if_version(self, key: str, data: bytes, version: str | None) -> bool:
        """Write atomically only if `key` is still at `version` (None: still absent);
        False (nothing written) if another writer changed it since it was read."""
        raise NotImplementedError(f"{type(self).__name__} has no conditional writes")
