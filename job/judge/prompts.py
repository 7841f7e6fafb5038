"""Judge prompt files: FastChat's judge_prompts.jsonl (8 prompts), loaded and checked.

A prompt is used with Python `str.format` exactly as FastChat does, so the file's
placeholders must be the ones FastChat fills for that prompt kind.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, replace
from pathlib import Path

from job.benches import sha256_bytes
from job.benches.behaviour import FASTCHAT, BenchBehaviour
from job.errors import JobError
from job.records.jsonl import iter_jsonl

REQUIRED_FIELDS = ("name", "type", "system_prompt", "prompt_template", "output_format")


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    type: str
    """single | pairwise"""
    system_prompt: str
    prompt_template: str
    output_format: str
    """[[rating]] | [[A]] (or the bench's rating_format)"""
    line: int = 0
    """line of the prompt file, for error messages"""
    rating_res: tuple[re.Pattern[str], ...] = FASTCHAT.rating_res
    """How a reply to this prompt is read: the bench's rating patterns (set by select())."""

    @property
    def placeholders(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.prompt_template) if f}

    def template_problem(self) -> str | None:
        """Why str.format would fail or misbehave on this template, or None. FastChat's
        templates use plain {name} fields only: positional fields, conversions (!r) and
        format specs (a width can allocate gigabytes) are refused up front."""
        try:
            fields = list(string.Formatter().parse(self.prompt_template))
        except ValueError as e:  # a lone { or }
            return f"{e} (write a literal brace as {{{{ or }}}})"
        for _, name, spec, conv in fields:
            if name is not None and (not name or spec or conv):
                return f"field {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} is not a plain {{name}}"
        return None


@dataclass(frozen=True)
class PromptSet:
    path: str
    sha256: str
    prompts: dict[str, JudgePrompt]

    def get(self, name: str) -> JudgePrompt:
        p = self.prompts.get(name)
        if p is None:
            have = ", ".join(sorted(self.prompts)) or "none"
            raise JobError(
                f"{self.path}: judge prompt {name!r} is missing (has: {have}); "
                "add it or pass --judge-prompts with a complete 8-prompt file"
            )
        return p


def load_prompt_set(path: str | Path) -> PromptSet:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise JobError(f"judge prompt file {p}: {e.strerror}; pass --judge-prompts FILE") from None
    prompts: dict[str, JudgePrompt] = {}
    for lineno, obj in iter_jsonl(data, str(p)):
        missing = [k for k in REQUIRED_FIELDS if not isinstance(obj.get(k), str)]
        if missing:
            raise JobError(f"{p}:{lineno}: judge prompt lacks {', '.join(missing)} (each a string)")
        if obj["name"] in prompts:
            first = prompts[obj["name"]].line
            raise JobError(f"{p}:{lineno}: judge prompt {obj['name']!r} again (first on line {first})")
        prompts[obj["name"]] = JudgePrompt(**{k: obj[k] for k in REQUIRED_FIELDS}, line=lineno)
    return PromptSet(str(p), sha256_bytes(data), prompts)


def expected_placeholders(mode: str, turn: int, ref: bool) -> set[str]:
    """The keyword arguments FastChat passes to .format() for this prompt kind."""
    if mode == "single":
        base = {"question", "answer"} if turn == 1 else {"question_1", "question_2", "answer_1", "answer_2"}
    elif turn == 1:
        base = {"question", "answer_a", "answer_b"}
    else:
        base = {"question_1", "question_2", "answer_a_1", "answer_a_2", "answer_b_1", "answer_b_2"}
    if ref:
        base |= {"ref_answer_1"} | ({"ref_answer_2"} if turn == 2 else set())
    return base


def select(
    pset: PromptSet, mode: str, kinds: set[tuple[int, bool]], behaviour: BenchBehaviour = FASTCHAT
) -> dict[tuple[int, bool], JudgePrompt]:
    """The prompts needed for the (turn, needs-ref) kinds in play, named and tagged as the
    bench says, each checked for its format and carrying the bench's rating patterns."""
    out = {}
    want_type, want_fmt = mode, behaviour.output_format(mode)  # mode: single | pairwise
    for turn, ref in sorted(kinds):
        name = behaviour.prompt_name(mode, turn, ref)
        jp = pset.get(name)
        where = f"{pset.path}:{jp.line}"
        if jp.type != want_type or jp.output_format != want_fmt:
            raise JobError(
                f"{where}: prompt {name!r} has type {jp.type!r} / output_format "
                f"{jp.output_format!r}; expected {want_type!r} / {want_fmt!r}"
            )
        problem = jp.template_problem()
        if problem:
            raise JobError(
                f"{where}: prompt {name!r}: prompt_template is not a valid format string: {problem}"
            )
        # str.format ignores unused kwargs but fails on unknown ones: check both ways
        unknown = jp.placeholders - expected_placeholders(mode, turn, ref)
        if unknown:
            raise JobError(f"{where}: prompt {name!r} uses unknown placeholders {sorted(unknown)}")
        out[(turn, ref)] = replace(jp, rating_res=behaviour.rating_res)
    return out
