"""Names that become path components (bench, model, judge) must stay inside the output root."""

from __future__ import annotations

import re

from job.errors import JobError

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}$")


def check_name(kind: str, value: str) -> str:
    """Return `value` if it is a safe single path component, else raise a JobError."""
    if not _SAFE.match(value) or ".." in value:
        raise JobError(
            f"invalid {kind} {value!r}: use letters, digits and . _ - + = @ "
            "(no '/', '..', spaces or leading dot)"
        )
    return value


def default_model_name(spec: str) -> str:
    """A readable answer-file stem from a model spec: hf/./ckpts/step-100 -> step-100."""
    _, _, rest = spec.partition("/")
    tail = (rest or spec).rstrip("/").split("/")[-1] or spec.split("/")[0]
    cleaned = re.sub(r"[^A-Za-z0-9._+=@-]", "-", tail)
    # what check_name refuses: a leading non-alphanumeric, "..", more than 200 characters
    cleaned = re.sub(r"\.{2,}", ".", re.sub(r"^[^A-Za-z0-9]+", "", cleaned))
    return cleaned[:200] or "model"
