"""Storage on a local directory: temp file + rename, so a reader sees the whole file or nothing."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from pathlib import Path

from job.errors import JobError
from job.storage.base import Storage, write_error

# files get the permissions a plain open() would give (mkstemp makes them 0600)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


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
        except OSError as e:  # a directory in its place, no permission: one line, not a traceback
            name = errno.errorcode.get(e.errno or 0, "")
            raise JobError(f"cannot read {self.uri(key)}: {e.strerror} ({name}); check the path") from None

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
                    # on NFS a retransmitted link() answers EEXIST for our own landed link:
                    # ours if dest is our temp file's inode
                    return os.path.samefile(tmp, dest)
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

    # --- compare-and-swap: every write replaces the inode, so (inode, mtime, size) is a version

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            with open(self._p(key), "rb") as f:
                return f.read(), _version(os.fstat(f.fileno()))
        except FileNotFoundError:
            return None, None

    def write_if_version(self, key: str, data: bytes, version: str | None) -> bool:
        if version is None:
            return self.write_bytes(key, data, if_absent=True)
        # writers lock the file they replace (flock, honoured by NFSv4 too; O_RDWR as NFS
        # wants for an exclusive lock) and replace it only while the path still names it
        dest = self._p(key)
        try:
            fd = os.open(dest, os.O_RDWR)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise write_error(dest, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                same = os.stat(dest).st_ino == st.st_ino
            except FileNotFoundError:
                same = False
            return same and _version(st) == version and self.write_bytes(key, data)
        finally:
            os.close(fd)  # releases the lock


def _version(st: os.stat_result) -> str:
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"
