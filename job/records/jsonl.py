"""Strict JSONL reading and writing.

Every loader reports a malformed line as `file:line: reason`, and accepts a
missing final newline (some upstream files have none).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from job.errors import JobError

# a \uD800-\uDFFF escape: valid only as a surrogate pair; a lone one cannot be written as UTF-8
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def iter_jsonl(data: bytes | str, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line of `data`."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise JobError(
                f"{source}:{line}: not valid UTF-8 ({e.reason}); re-save the file as UTF-8"
            ) from None
    else:
        text = data
    # a byte-order mark (Windows editors) is not part of the first record
    text = text.removeprefix("\ufeff")
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip(" \t\r"):  # JSON whitespace only: a line of other control characters is an error
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise JobError(
                f"{source}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); fix or remove the line"
            ) from None
        except (RecursionError, ValueError) as e:  # nesting too deep, an integer of > 4300 digits
            reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
            raise JobError(f"{source}:{lineno}: unreadable JSON ({reason}); fix or remove the line") from None
        if not isinstance(obj, dict):
            raise JobError(f"{source}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if _SURROGATE_ESCAPE.search(raw):
            try:
                dumps_line(obj).encode("utf-8")
            except UnicodeEncodeError:
                raise JobError(
                    f"{source}:{lineno}: a lone UTF-16 surrogate escape (\\ud800-\\udfff) is not text; "
                    "fix the line"
                ) from None
        yield lineno, obj


def dumps_line(obj: Any) -> str:
    """One JSONL line. Non-ASCII kept as is, like FastChat's json.dumps(ensure_ascii=False)."""
    return json.dumps(obj, ensure_ascii=False) + "\n"


def dumps_lines(objs: Iterable[Any]) -> bytes:
    return "".join(dumps_line(o) for o in objs).encode("utf-8")
