"""Names that become path components (bench, model, judge) must stay inside the output root.

Bench, judge and reference-set names must already be safe path components (`check_name`).
Model names may be anything printable, Hugging Face ids (`org/name`) included: records keep
them exactly, and keys use `path_name`, a reversible percent-encoding that leaves names that
are already safe unchanged (so existing runs keep their paths) and is collision-free
(`name_of_path(path_name(x)) == x`; `%` itself is always encoded).
"""

from __future__ import annotations

import re
import string
from urllib.parse import unquote

from job.errors import JobError

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}$")
_KEEP = frozenset(string.ascii_letters + string.digits + "._+=@-")
MAX_PATH_NAME = 200


def check_name(kind: str, value: str) -> str:
    """Return `value` if it is a safe single path component, else raise a JobError."""
    if not _SAFE.match(value) or ".." in value:
        raise JobError(
            f"invalid {kind} {value!r}: use letters, digits and . _ - + = @ "
            "(no '/', '..', spaces or leading dot)"
        )
    return value


def _kept(name: str, i: int) -> bool:
    ch = name[i]
    if i == 0:
        return ch.isascii() and ch.isalnum()  # no leading dot, dash, ...
    return ch in _KEEP and not (ch == "." and name[i - 1] == ".")  # never ".."


def path_name(name: str) -> str:
    """The path component for a model name: `org/name` -> `org%2Fname`; safe names unchanged."""
    return "".join(
        ch if _kept(name, i) else "".join(f"%{b:02X}" for b in ch.encode()) for i, ch in enumerate(name)
    )


def name_of_path(component: str) -> str:
    """The model name a path component stands for (the inverse of `path_name`)."""
    try:
        return unquote(component, errors="strict")
    except UnicodeDecodeError:  # not written by path_name (a hand-named file): take it as it is
        return component


def check_model_name(kind: str, value: str) -> str:
    """Return the model name exactly if it can name files (via `path_name`), else raise a JobError."""
    # '..' and a leading '/' or '.' could never reach outside (path_name encodes them), but
    # such a name is a path given by mistake, not a model name: say so
    if not value.strip() or any(not ch.isprintable() for ch in value) or ".." in value or value[0] in "/.\\":
        raise JobError(
            f"invalid {kind} {value!r}: use printable text such as step-100 or org/name "
            "(no '..', no leading '/' or '.')"
        )
    if len(path_name(value)) > MAX_PATH_NAME:
        raise JobError(f"invalid {kind} {value[:40]!r}...: too long for a file name; pick a shorter one")
    return value


def default_model_name(spec: str) -> str:
    """A readable answer-file stem from a model spec: hf/./ckpts/step-100 -> step-100."""
    _, _, rest = spec.partition("/")
    tail = (rest or spec).rstrip("/").split("/")[-1] or spec.split("/")[0]
    cleaned = re.sub(r"[^A-Za-z0-9._+=@-]", "-", tail)
    # what check_name refuses: a leading non-alphanumeric, "..", more than 200 characters
    cleaned = re.sub(r"\.{2,}", ".", re.sub(r"^[^A-Za-z0-9]+", "", cleaned))
    return cleaned[:200] or "model"
