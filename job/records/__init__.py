"""FastChat's record formats (the contract) plus our shard manifest.

Field names and meanings follow FastChat's llm_judge files exactly, so public
question/answer/judgment files load unchanged and ours load in FastChat's tools.
Extra fields are allowed and kept. JSONL reading and writing: jsonl.py.

Part of the core (with errors, names, layout, provenance, signals): imports nothing of
the job package but job.errors (import-linter).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from job.errors import JobError
from job.records.jsonl import iter_jsonl

SCHEMA_VERSION = 1

QuestionId = int | str


def _not_bool(v: Any) -> Any:
    # lax pydantic would read JSON true as question 1: a wrong id, silently
    if isinstance(v, bool):
        raise ValueError("must be an integer or a string, not true/false")
    return v


Qid = Annotated[QuestionId, BeforeValidator(_not_bool)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=False)


class Question(_Record):
    question_id: Qid
    """Stable id; MT-bench uses 81-160, Japanese MT-bench 1-80."""
    category: str
    """Drives temperature and whether the judge gets a reference answer."""
    turns: list[str] = Field(min_length=1)
    """User turns, in order."""

    @field_validator("turns")
    @classmethod
    def _turns_are_text(cls, v: list[str]) -> list[str]:
        if not all(isinstance(t, str) for t in v):
            raise ValueError("every turn must be a string")
        return v


class Choice(_Record):
    index: int
    turns: list[str]
    status: str | None = None
    """Only on failed generations kept with --allow-failed; FastChat files have none."""
    error: str | None = None
    finish_reasons: list[str | None] | None = None
    """Ours, per generated turn: stop | length (hit --max-new-tokens) | None; FastChat has none."""
    raw_turns: list[str] | None = None
    """Ours (reasoning models), only when some turn's raw text differs from its answer in
    `turns` (reasoning removed, job.records.reasoning); `job judge --keep-reasoning` judges it."""
    reasoning: list[str | None] | None = None
    """Ours: each turn's reasoning text (a <think> block or the API's reasoning field)."""
    reasoning_unterminated: list[bool] | None = None
    """Ours: per turn, a reasoning block that never closed (the turn is judged as it stands)."""


class Answer(_Record):
    """One line of model_answer/<model>.jsonl (reference answers use it too)."""

    question_id: Qid
    answer_id: str = ""
    model_id: str = ""
    choices: list[Choice] = Field(min_length=1)
    tstamp: float = 0.0


class ShardItem(_Record):
    """One (question, choice) conversation as written into a shard object."""

    question_id: Qid
    choice: int
    turns: list[str]
    status: str = "ok"
    """ok | api_error | error: failures are recorded, never turned into text."""
    error: str | None = None
    finish_reasons: list[str | None] = Field(default_factory=list)
    num_tokens: int = 0
    tstamp: float = 0.0
    raw_turns: list[str] | None = None
    """As Choice.raw_turns, reasoning and reasoning_unterminated (reasoning models)."""
    reasoning: list[str | None] | None = None
    reasoning_unterminated: list[bool] | None = None


class ShardManifest(_Record):
    """Written after the shard's answers; its presence commits the shard."""

    schema_version: int = SCHEMA_VERSION
    kind: str = "generate-shard"
    bench: str
    bench_data_sha256: str
    model: str
    """The model spec (provider/model) used."""
    model_name: str
    config_hash: str
    """Hash of everything that changes answers; shards of one run share it."""
    sampling: dict[str, Any]
    endpoint: str | None = None
    """An API model's base URL (scheme://host:port/path), recorded, not part of config_hash."""
    shard_index: int
    num_shards: int
    question_ids: list[QuestionId]
    num_choices: int
    num_items: int
    num_failed: int = 0
    num_empty: int = 0
    """Answer turns with no text (EOS at once, or the limit used up): judged, usually a 1."""
    tokens_generated: int = 0
    package_version: str
    git_revision: str | None = None
    started_at: float
    finished_at: float
    wall_seconds: float
    host: str | None = None
    data_file: str | None = None
    """Name (beside the manifest) of the answers it commits; None: the shard key (older runs)."""


R = TypeVar("R", bound=BaseModel)


def _describe(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "record"
    return f"{where}: {err['msg']}"


def parse_numbered(data: bytes | str, model: type[R], source: str) -> list[tuple[int, R]]:
    """Parse JSONL into (line number, record); a bad line is an error naming `source:line`."""
    out: list[tuple[int, R]] = []
    for lineno, obj in iter_jsonl(data, source):
        try:
            out.append((lineno, model.model_validate(obj)))
        except ValidationError as e:
            raise JobError(f"{source}:{lineno}: invalid {model.__name__.lower()} ({_describe(e)})") from None
    return out


def parse_records(data: bytes | str, model: type[R], source: str) -> list[R]:
    """Parse JSONL into records; a bad line is an error naming `source:line`."""
    return [r for _, r in parse_numbered(data, model, source)]


def check_unique_ids(questions: list[Question], source: str, lines: Sequence[int] | None = None) -> None:
    """Ids are compared as text (1 and "1" are one question: answers are matched by str(id))."""
    seen: dict[str, int] = {}
    for i, q in enumerate(questions):
        line = lines[i] if lines else i + 1
        first = seen.setdefault(str(q.question_id), line)
        if first != line:
            at = (
                f"{source}:{line}: duplicate question_id {q.question_id!r} (first on line {first})"
                if lines
                else f"{source}: duplicate question_id {q.question_id!r}"
            )
            raise JobError(f"{at}; ids must be unique")


TRUNCATED_WARN = 0.05
"""Reduce warns (and reports flag) when more than this share of a model's turns stopped at
--max-new-tokens: cut-off answers, or a checkpoint whose end-of-turn token is wrong."""


def truncation(answers: Sequence[Answer]) -> tuple[int, int]:
    """(turns that hit max_new_tokens, turns with a known finish reason) over ok choices."""
    reasons = [
        r for a in answers for c in a.choices if c.status is None for r in (c.finish_reasons or []) if r
    ]
    return sum(r == "length" for r in reasons), len(reasons)


def empty_turns(turns_of_ok: Iterable[list[str]]) -> int:
    """How many answer turns are empty (whitespace only), over the ok conversations given."""
    return sum(not t.strip() for turns in turns_of_ok for t in turns)


def id_sort_key(qid: QuestionId) -> tuple[int, int | str]:
    """Sort ints numerically and before strings, so mixed ids still order stably."""
    return (0, qid) if isinstance(qid, int) else (1, qid)


def record_dict(rec: BaseModel) -> dict[str, Any]:
    return rec.model_dump(mode="json", exclude_none=False)
