"""Judgment records: one line of model_judgment/<judge>_single.jsonl or _pair.jsonl.

FastChat's fields plus ours (choice, status, error, inputs_sha256; g1/g2 status on pairwise
rows; sample, usage and attempts only when set). Fields are declared in the order they are
written, so a dumped record is the line FastChat's tools read. FastChat's own rows have no status: the status rule (judged_status)
gives them one, here and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from job.errors import JobError
from job.records import Qid, _Record


def judged_status(status: str | None, judged: bool) -> str:
    """A row's (or game's) status: ours carry one; FastChat's are ok when the judge gave a
    score (single, not -1) or a verdict (pairwise, not "error"), else parse_error."""
    return status or ("ok" if judged else "parse_error")


def single_status(rec: Mapping[str, Any]) -> str:
    """The status of a stored single judgment (dict as read from the file)."""
    return judged_status(rec.get("status"), rec.get("score", -1) != -1)


def game_status(rec: Mapping[str, Any], game: int) -> str:
    """The status of game 1 or 2 of a stored pairwise judgment."""
    return judged_status(rec.get(f"g{game}_status"), rec.get(f"g{game}_winner", "error") != "error")


class _Extras(_Record):
    """Our optional fields, written last and only when set (judgment_line)."""

    sample: int | None = None
    """judge sample index 0..K-1 (--judge-samples K > 1); absent: sample 0 (FastChat, K = 1)"""
    usage: dict[str, int] | None = None
    """{prompt_tokens, completion_tokens} the API reported, summed over attempts (and games)"""
    attempts: list[dict[str, Any]] | None = None
    """with --parse-retries: every earlier attempt {status, judgment, usage} (pairwise: + game)"""


class _Tail(_Record):
    """The fields after each kind's own ones, in FastChat's order then ours."""

    turn: int
    tstamp: int | float
    choice: int = 0
    status: str | None = None
    """ok | parse_error | answer_error | api_error | judge_error (pairwise: the first failure of its
    games, judge.results, else ok); FastChat rows: none"""
    error: str | None = None
    inputs_sha256: str | None = None


class _Single(_Record):
    question_id: Qid
    model: str
    judge: list[str]
    """[judge name, prompt name]"""
    user_prompt: str
    judgment: str
    score: int | float


class _Pair(_Record):
    question_id: Qid
    model_1: str
    model_2: str
    g1_winner: str
    """model_1 | model_2 | tie | error"""
    g2_winner: str
    judge: list[str]
    g1_user_prompt: str
    g1_judgment: str
    g2_user_prompt: str
    g2_judgment: str


class _GameStatus(_Record):
    g1_status: str | None = None
    g2_status: str | None = None


# pydantic orders fields by reversed MRO: the last base's first, so each class lists its parts
# from the last written to the first (tests/test_cleanup.py holds the written order)
class SingleJudgment(_Extras, _Tail, _Single):
    """A single-answer grading: the judge's [[rating]] of one model's turn (-1: none)."""


class PairJudgment(_Extras, _GameStatus, _Tail, _Pair):
    """A pairwise comparison: game 1 (model_1 as A) and game 2 (the order swapped)."""


def judgment_line(rec: SingleJudgment | PairJudgment) -> dict[str, Any]:
    """The record as the dict written (python values, declared order). The optional fields
    are left out when unset, so a one-sample run without usage writes today's rows."""
    return rec.model_dump(exclude={k for k in OPTIONAL_FIELDS if getattr(rec, k) is None})


OPTIONAL_FIELDS = ("sample", "usage", "attempts")
"""Written only when set."""


def row_sample(rec: Mapping[str, Any]) -> int:
    """A stored row's judge sample index: rows without one (FastChat's, K = 1) are sample 0."""
    return int(rec.get("sample") or 0)


# ---- reading (report, question browser, judge resume) --------------------------------------
# One reader for every stored judgment line, ours or FastChat's or a fork's: the written models
# with defaults for what FastChat's readers never needed (a pairwise row without turn, hand-made
# rows without prompt text), and the checks that keep a wrong type from becoming a wrong score.


STATUSES = ("ok", "parse_error", "answer_error", "api_error", "judge_error")
"""Every status our judge writes (a row's, or a pairwise game's)."""
WINNERS = ("model_1", "model_2", "tie", "error")
"""A pairwise game's winner, mapped back to the model slots (FastChat)."""


def _one_of(v: Any, what: str, allowed: tuple[str, ...]) -> Any:
    if v not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, got {v!r}")
    return v


def _not_bool_int(v: Any, what: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}")
    return v


def _finite(v: Any) -> int | float:
    ok = not isinstance(v, bool) and isinstance(v, int | float)
    try:
        ok = ok and math.isfinite(float(v))
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        raise ValueError("score must be a finite number (-1 when the judge gave none)")
    return v  # type: ignore[no-any-return]


class _Reading(_Record):
    """Checks shared by both kinds (field_validator on the inherited fields)."""

    judge: list[str] = Field(default_factory=lambda: ["", ""])
    """["", ""]: a hand-made row without one (a report reads it; judge resume needs one)"""
    sample: int | None = None
    """the judge sample index (None: sample 0, every FastChat row)"""

    @field_validator("question_id", mode="before", check_fields=False)
    @classmethod
    def _qid(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError("question_id must be an integer or a string")
        return v

    @field_validator("turn", mode="before", check_fields=False)
    @classmethod
    def _turn(cls, v: Any) -> int:
        if v is None and "g1_winner" in cls.model_fields:  # FastChat's older pairwise rows: turn 1
            return 1
        return _not_bool_int(v, "turn", 1)

    @field_validator("choice", "sample", mode="before", check_fields=False)
    @classmethod
    def _index(cls, v: Any, info: ValidationInfo) -> int | None:
        if v is None:  # null: choice 0, sample 0
            return 0 if info.field_name == "choice" else None
        return _not_bool_int(v, str(info.field_name), 0)

    @field_validator("judge", mode="before", check_fields=False)
    @classmethod
    def _judge(cls, v: Any) -> Any:
        if v is None:  # a hand-made row (judge resume refuses it before)
            return ["", ""]
        if not (isinstance(v, list) and len(v) >= 2 and all(isinstance(j, str) for j in v[:2])):
            raise ValueError("judge must be [judge name, prompt name]")
        return v

    @field_validator("status", "g1_status", "g2_status", mode="before", check_fields=False)
    @classmethod
    def _status(cls, v: Any, info: ValidationInfo) -> Any:
        # an unknown status ("OK", a typo) would be neither counted nor listed as a failure
        return _one_of(v, str(info.field_name), STATUSES) if isinstance(v, str) else v  # else: its type

    @property
    def judge_name(self) -> str:
        return self.judge[0]

    @property
    def prompt_name(self) -> str:
        return self.judge[1]

    @property
    def sample_index(self) -> int:
        return self.sample or 0


class SingleRow(_Reading, SingleJudgment):
    """A single judgment as read (`read_judgment`)."""

    user_prompt: str = ""
    judgment: str = ""
    tstamp: int | float = 0

    @field_validator("score", mode="before")
    @classmethod
    def _score(cls, v: Any) -> int | float:
        return _finite(v)

    @property
    def status_of(self) -> str:
        return judged_status(self.status, self.score != -1)

    @property
    def ours(self) -> bool:
        """Written by our judge (FastChat's rows carry no status)."""
        return "status" in self.model_fields_set


class PairRow(_Reading, PairJudgment):
    """A pairwise judgment as read (`read_judgment`)."""

    turn: int = 1
    """FastChat's older pairwise rows have none: turn 1"""
    g1_user_prompt: str = ""
    g1_judgment: str = ""
    g2_user_prompt: str = ""
    g2_judgment: str = ""
    tstamp: int | float = 0

    @field_validator("g1_winner", "g2_winner", mode="before")
    @classmethod
    def _winner(cls, v: Any, info: ValidationInfo) -> Any:
        # anything else ("A", a model name) would count as a win of model_2 (show_result's else)
        return _one_of(v, str(info.field_name), WINNERS)


JudgmentRow = SingleRow | PairRow
_STRING_TYPES = {
    "string_type": "a string",
    "list_type": "a list",
    "int_type": "an integer",
    "dict_type": "an object",
}


def _problem(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "record"
    if err["type"] == "missing":
        return f"lacks {loc}; is this a FastChat judgment file?"
    if err["type"] == "value_error":
        return str(err["ctx"]["error"])
    if err["type"] in _STRING_TYPES and len(err["loc"]) == 1:
        return f"{loc} must be {_STRING_TYPES[err['type']]}"
    return f"{loc}: {err['msg']}"


def _expand_choices(rec: dict[str, Any]) -> list[dict[str, Any]] | str:
    """A Swallow / Liquid4All single row (one per question and turn, `score` a list over
    choices, `judgment` and `user_prompt` lists beside it) as one row per choice; other
    rows as they are. A str: what is wrong with the lists."""
    scores = rec.get("score")
    if not isinstance(scores, list):
        return [rec]
    if not scores:
        return "score is an empty list"
    if "choice" in rec:
        return "choice with a list of scores (the list position is the choice)"
    lists = {k: rec[k] for k in CHOICE_LIST_FIELDS if isinstance(rec.get(k), list)}
    for k, v in lists.items():
        if len(v) != len(scores):
            return f"{k} has {len(v)} entries but score has {len(scores)}; one entry per choice"
    return [
        {**rec, "score": s, "choice": i, **{k: v[i] for k, v in lists.items()}} for i, s in enumerate(scores)
    ]


CHOICE_LIST_FIELDS = ("judgment", "user_prompt")


def read_judgment(rec: dict[str, Any], where: str, pairwise: bool, resume: bool = False) -> list[Any]:
    """One stored judgment line (a parsed JSON object) as typed rows: a SingleRow per choice
    (a Swallow list row is several) or one PairRow. A bad line is a one-line JobError naming
    `where` (file:line) and the field. `resume` (judge): the row must name its judge and turn
    and be one row (the judge writes no list rows)."""
    kind = "pairwise" if pairwise else "single"
    other = "model" if pairwise else "model_1"
    rows: list[dict[str, Any]] | str = [rec] if pairwise or resume else _expand_choices(rec)
    if isinstance(rows, str):
        raise JobError(f"{where}: invalid Swallow-style judgment ({rows})")
    if other in rec:  # resume tells the modes apart by these keys
        problem = "a single judgment has model, a pairwise one model_1/model_2; is this the right file?"
        raise JobError(f"{where}: invalid {kind} judgment ({problem})")
    for need in ("judge", "turn") if resume else ():
        if rec.get(need) is None:
            raise JobError(f"{where}: invalid {kind} judgment (lacks {need}; judge resume needs it)")
    model = PairRow if pairwise else SingleRow
    try:
        return [model.model_validate(r) for r in rows]
    except ValidationError as e:
        raise JobError(f"{where}: invalid {kind} judgment ({_problem(e)})") from None
