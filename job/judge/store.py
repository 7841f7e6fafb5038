"""Judgment files that grow safely as results arrive, locally and on object storage.

Local directory: the FastChat file `<bench>/model_judgment/<judge>_single.jsonl` is
appended in batches with flush + fsync. A run killed mid-write can leave a torn last
line (no final newline); it was never a complete record, so it is cut before the next
append and ignored by readers that resume.

Object storage (no append): each batch is its own object under
`<file>.parts/part-<ns>-<pid>-<seq>.jsonl`; readers merge the main object and the
parts. At the end of a run the parts are compacted into the main object (one conditional
PUT: another run's compaction in between makes it merge again) and only the parts it merged
are deleted. Compaction and reads skip part lines already present verbatim in the main
object (or an earlier part), so a crash between the PUT and the deletes never duplicates rows.
Several runs may append to one file at once: local appends take the file's flock.

Which stored rows count is decided by the judge manifest (`current_rows`): rows are only
ever appended, and a row judged with inputs that are no longer this run's stays in the
file (FastChat's tools still read it) but is not current.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.records.jsonl import dumps_lines, iter_jsonl
from job.storage import LocalStorage, Storage, write_error

log = logging.getLogger(__name__)


def parts_prefix(key: str) -> str:
    return f"{key}.parts/"


def current_rows(records: list[dict[str, Any]], manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The rows a report counts. With our judge manifest ("rows": the inputs_sha256 current
    for its provenance): the last stored row of each of those inputs, in file order (a
    re-asked api_error row is replaced by its retry); stale rows are dropped. Without one
    (FastChat's files, older manifests): every record, unchanged."""
    if not manifest or not isinstance(manifest.get("rows"), list):
        return records
    want = {h for h in manifest["rows"] if isinstance(h, str)}
    last = {r.get("inputs_sha256"): i for i, r in enumerate(records)}
    return [
        r for i, r in enumerate(records) if r.get("inputs_sha256") in want and last[r["inputs_sha256"]] == i
    ]


def _blank_seen(data: bytes, seen: set[bytes]) -> bytes:
    """`data` with each line already in `seen` blanked (line numbers kept); the others
    are added to `seen`. A crash after compaction's PUT leaves parts whose lines are also
    in the main object: they are read once."""
    lines = data.split(b"\n")
    out = [b"" if line.strip() and line in seen else line for line in lines]
    seen.update(lines)
    return b"\n".join(out)


class JudgmentStore:
    def __init__(self, storage: Storage, key: str, use_parts: bool | None = None):
        self.storage = storage
        self.key = key
        self.use_parts = not isinstance(storage, LocalStorage) if use_parts is None else use_parts
        self._seq = 0

    @property
    def uri(self) -> str:
        return self.storage.uri(self.key)

    def _local_path(self) -> Path:
        assert isinstance(self.storage, LocalStorage)
        return self.storage.path / self.key

    def read(
        self, repair: bool = False, check: Callable[[dict[str, Any], str], None] | None = None
    ) -> list[dict[str, Any]]:
        """Every stored record. A torn final line is dropped (and cut from a local file if
        `repair`); any other malformed line is an error naming file and line. `check(record,
        "file:line")` may reject a well-formed line whose fields are wrong."""
        for _ in range(_ATTEMPTS):
            try:
                return self._read(repair, check)
            except _PartGone:
                # another run compacted it into the main object after we had read that
                continue
        raise JobError(f"{self.uri}: its part objects kept changing while read; try again")

    def _read(
        self, repair: bool, check: Callable[[dict[str, Any], str], None] | None
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        sources = [self.key] if self.storage.exists(self.key) else []
        if self.use_parts:
            sources += self.storage.list(parts_prefix(self.key))
        seen: set[bytes] = set()
        for src in sources:
            data = self._read_source(src)
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                log.warning(
                    "%s: ignoring a torn last line (%d bytes) from an interrupted run",
                    self.storage.uri(src),
                    len(data) - cut,
                )
                if repair and src == self.key and not self.use_parts:
                    self._cut_torn(len(data), cut)
                data = data[:cut]
            if self.use_parts:
                data = _blank_seen(data, seen)
            for lineno, obj in iter_jsonl(data, self.storage.uri(src)):
                if check:
                    check(obj, f"{self.storage.uri(src)}:{lineno}")
                out.append(obj)
        return out

    def _read_source(self, src: str) -> bytes:
        try:
            return self.storage.read_bytes(src)
        except JobError:
            if src != self.key and not self.storage.exists(src):
                raise _PartGone from None
            raise

    def _cut_torn(self, size: int, cut: int) -> None:
        """Cut a torn last line, under the appenders' lock and only if the file is still the
        size that was read: a line another run appended since is kept."""
        with self._locked_fd(os.O_WRONLY) as fd:
            if os.fstat(fd).st_size == size:
                os.ftruncate(fd, cut)

    @contextmanager
    def _locked_fd(self, flags: int) -> Iterator[int]:
        path = self._local_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, flags | os.O_CREAT, 0o666)
        except OSError as e:
            raise write_error(path, e, "the records stored before are kept") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # local appenders of this file take turns
            yield fd
        finally:
            os.close(fd)

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        blob = dumps_lines(records)
        if self.use_parts:
            self._seq += 1
            part = f"{parts_prefix(self.key)}part-{time.time_ns()}-{os.getpid()}-{self._seq:06d}.jsonl"
            self.storage.write_bytes(part, blob)
            return
        path = self._local_path()
        with self._locked_fd(os.O_WRONLY | os.O_APPEND) as fd:
            try:
                size = os.fstat(fd).st_size  # under the lock: no other appender moves it
                try:
                    view = memoryview(blob)
                    while view:  # a full disk first shortens a write, then fails the next one
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except OSError:
                    # cut what part of this batch got in: the file holds whole records, as before
                    with suppress(OSError):
                        os.ftruncate(fd, size)
                    raise
            except OSError as e:
                raise write_error(path, e, "the records stored before are kept") from None

    def compact(self) -> None:
        """Fold part objects into the main object (object storage only): a conditional PUT
        (another run's compaction in between: merge again), then delete only the parts it
        merged. Parts another run adds meanwhile stay for its own compaction."""
        if not self.use_parts:
            return
        merged: list[str] = []

        def fold(main: bytes | None) -> bytes | None:
            merged.clear()
            parts = self.storage.list(parts_prefix(self.key))
            if not parts:
                return None
            main = main or b""
            if main and not main.endswith(b"\n"):
                main = main[: main.rfind(b"\n") + 1]
            have = set(main.split(b"\n"))
            new = bytearray(main)
            for p in parts:
                try:
                    data = self._read_source(p)
                except _PartGone:
                    continue  # compacted by another run into the main object we will re-read
                for line in _blank_seen(data, have).split(b"\n"):
                    if line.strip():
                        new += line + b"\n"
                merged.append(p)
            return bytes(new)

        cas_update(self.storage, self.key, fold)
        for p in merged:
            self.storage.delete(p)


class _PartGone(Exception):
    """A listed part object vanished before it was read (another run compacted it)."""


_ATTEMPTS = 50


def cas_update(storage: Storage, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
    """Read-modify-write of `key` that never loses a concurrent writer's update: `fn(current
    content or None)` gives the new content (None: nothing to write), written only if `key`
    is unchanged since read, else read and merged again."""
    for attempt in range(_ATTEMPTS):
        data, version = storage.read_versioned(key)
        new = fn(data)
        if new is None or storage.write_if_version(key, new, version):
            return new
        time.sleep(min(0.01 * 2**attempt, 1.0) * random.uniform(0.5, 1.0))
    raise JobError(f"{storage.uri(key)}: other runs kept changing it; try again")
