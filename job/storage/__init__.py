"""The storage layer: one small interface over a local directory and s3://bucket/prefix.

Keys are '/'-separated paths relative to the run root. Writes are atomic: a reader sees the
whole object or nothing (temp file + rename locally, a single PUT on S3). Owns: the interface
(base.py), local (local.py), S3 (s3.py), and open_storage here.

Imports core only (job.errors): never backends, benches or any stage (import-linter).
"""

from __future__ import annotations

from job.errors import JobError
from job.storage.base import Storage, write_error
from job.storage.local import LocalStorage


def open_storage(root: str) -> Storage:
    """Storage for a local path or an s3://bucket/prefix URI."""
    if root.startswith("s3://"):
        from job.storage.s3 import S3Storage

        return S3Storage(root)
    if "://" in root:
        raise JobError(f"unsupported output location {root!r}: use a local path or s3://bucket/prefix")
    return LocalStorage(root)


__all__ = ["LocalStorage", "Storage", "open_storage", "write_error"]
