"""Judgment files that grow safely as results arrive, locally and on object storage.

Local directory: the FastChat file `<bench>/model_judgment/<judge>_single.jsonl` is
appended in batches with flush + fsync. A run killed mid-write can leave a torn last
line (no final newline); it was never a complete record, so it is cut before the next
append and ignored by readers that resume.

Object storage (no append): each batch is its own object under
`<file>.parts/part-<ns>-<pid>-<seq>.jsonl`; readers merge the main object and the
parts. At the end of a run the parts are compacted into the main object (one PUT) and
deleted. Compaction and reads skip part lines already present verbatim in the main object
(or an earlier part), so a crash between the PUT and the deletes never duplicates rows.

Which stored rows count is decided by the judge manifest (`current_rows`): rows are only
ever appended, and a row judged with inputs that are no longer this run's stays in the
file (FastChat's tools still read it) but is not current.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

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
        out: list[dict[str, Any]] = []
        sources = [self.key] if self.storage.exists(self.key) else []
        if self.use_parts:
            sources += self.storage.list(parts_prefix(self.key))
        seen: set[bytes] = set()
        for src in sources:
            data = self.storage.read_bytes(src)
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                log.warning(
                    "%s: ignoring a torn last line (%d bytes) from an interrupted run",
                    self.storage.uri(src),
                    len(data) - cut,
                )
                data = data[:cut]
                if repair and src == self.key and not self.use_parts:
                    os.truncate(self._local_path(), cut)
            if self.use_parts:
                data = _blank_seen(data, seen)
            for lineno, obj in iter_jsonl(data, self.storage.uri(src)):
                if check:
                    check(obj, f"{self.storage.uri(src)}:{lineno}")
                out.append(obj)
        return out

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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise write_error(path, e, "the records stored before are kept") from None
        try:
            size = os.fstat(fd).st_size
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
        finally:
            os.close(fd)

    def compact(self) -> None:
        """Fold part objects into the main object (object storage only)."""
        if not self.use_parts:
            return
        parts = self.storage.list(parts_prefix(self.key))
        if not parts:
            return
        main = self.storage.read_bytes(self.key) if self.storage.exists(self.key) else b""
        if main and not main.endswith(b"\n"):
            main = main[: main.rfind(b"\n") + 1]
        have = set(main.split(b"\n"))
        new = bytearray(main)
        for p in parts:
            for line in _blank_seen(self.storage.read_bytes(p), have).split(b"\n"):
                if line.strip():
                    new += line + b"\n"
        self.storage.write_bytes(self.key, bytes(new))
        for p in parts:
            self.storage.delete(p)
