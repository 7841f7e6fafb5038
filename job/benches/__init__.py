"""Benches: the registry (where a bench's files live, their checksums), its behaviour
(behaviour.py: temperatures, reference categories, prompt names, rating format), pulling
and checking the data (sync.py) and question selection (--question-ids, --first-n).

A bench is a FastChat-layout folder `<data>/<name>/question.jsonl` (optionally
`reference_answer/*.jsonl`, its own `judge_prompts.jsonl` and a `bench.json` of
behaviour fields). Registered benches (bench_data/registry.json) also carry pinned
upstream URLs, sha256 and their behaviour; any other folder works as a custom bench,
without checksum verification.

Imports core only (records, errors, names): never backends, storage or a stage (import-linter).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from job.benches.behaviour import FASTCHAT, BenchBehaviour, load_behaviour
from job.errors import JobError
from job.names import check_name
from job.records import Question, check_unique_ids, parse_numbered

SMOKE_BENCH = "smoke"
BENCH_JSON = "bench.json"
"""A custom bench folder's optional behaviour file (the fields of job.benches.behaviour)."""
DEFAULT_DATA_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtbench-job" / "bench_data"
)


def packaged_data_dir() -> Path:
    """bench_data/ shipped with the package (wheel) or beside it (source checkout)."""
    here = Path(__file__).resolve().parent.parent  # job/
    for cand in (here / "bench_data", here.parent / "bench_data"):
        if (cand / "registry.json").is_file():
            return cand
    raise JobError("the package's bench_data/registry.json is missing; reinstall mtbench-job")


@cache
def registry() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((packaged_data_dir() / "registry.json").read_text("utf-8"))
    return data["benches"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


@dataclass
class Bench:
    name: str
    data_dir: Path
    """Root of the FastChat-style data tree the bench was resolved in."""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Registered files: logical name -> {path, url, sha256}; empty for custom benches."""
    default_reference: str | None = None
    behaviour: BenchBehaviour = FASTCHAT
    """Temperatures, reference categories, prompt names, rating format, judged turns."""

    @property
    def registered(self) -> bool:
        return bool(self.files)

    def _registered_path(self, logical: str) -> Path | None:
        entry = self.files.get(logical)
        return self.data_dir / entry["path"] if entry else None

    @property
    def question_path(self) -> Path:
        return self._registered_path("question") or self.data_dir / self.name / "question.jsonl"

    @property
    def judge_prompts_path(self) -> Path:
        reg = self._registered_path("judge_prompts")
        if reg:
            return reg
        own = self.data_dir / self.name / "judge_prompts.jsonl"
        return own if own.is_file() else self.data_dir / "judge_prompts.jsonl"

    def reference_path(self, name: str) -> Path:
        check_name("reference set (--reference)", name)  # a file name under reference_answer/
        reg = self._registered_path(f"reference_answer/{name}")
        return reg or self.question_path.parent / "reference_answer" / f"{name}.jsonl"

    def read_verified(self, path: Path, logical: str | None = None) -> bytes:
        """Read a bench file; a registered file must match its pinned sha256."""
        if not self.data_dir.is_dir():
            raise JobError(
                f"bench data dir {self.data_dir} does not exist; run `job bench pull {self.name} "
                f"--bench-data {self.data_dir}` or point --bench-data / JOB_BENCH_DATA at the data"
            )
        if not path.is_file():
            hint = f"run `job bench pull {self.name}`" if self.registered else "check --bench-data"
            raise JobError(f"{path}: missing file of bench {self.name!r}; {hint}")
        data = path.read_bytes()
        entry = self.files.get(logical) if logical else None
        if entry and sha256_bytes(data) != entry["sha256"]:
            raise JobError(
                f"{path}: sha256 mismatch for bench {self.name!r} (got {sha256_bytes(data)[:12]}…, "
                f"expected {entry['sha256'][:12]}…); re-run `job bench pull {self.name}`"
            )
        return data

    def load_questions(self) -> tuple[list[Question], str]:
        """Questions in file order, and the sha256 of the question file."""
        data = self.read_verified(self.question_path, "question")
        numbered = parse_numbered(data, Question, str(self.question_path))
        qs = [q for _, q in numbered]
        if not qs:
            raise JobError(f"{self.question_path}: no questions in file")
        check_unique_ids(qs, str(self.question_path), [n for n, _ in numbered])
        return qs, sha256_bytes(data)


def custom_bench(name: str, data_dir: Path) -> Bench:
    """A FastChat-layout folder; its optional bench.json sets the behaviour (and default reference)."""
    path = data_dir / name / BENCH_JSON
    if not path.is_file():
        return Bench(name, data_dir)
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise JobError(f"{path}: not valid JSON ({e}); fix the file or remove it") from None
    if not isinstance(doc, dict):
        raise JobError(f"{path}: must hold a JSON object of bench behaviour fields")
    ref = doc.pop("default_reference", None)
    if ref is not None and not isinstance(ref, str):
        raise JobError(f"{path}: default_reference must be a string (a reference_answer/ file stem)")
    return Bench(name, data_dir, default_reference=ref, behaviour=load_behaviour(doc, str(path)))


def resolve_data_dir(bench_data: str | os.PathLike[str] | None) -> Path:
    value = bench_data or os.environ.get("JOB_BENCH_DATA")
    return Path(value).expanduser() if value else DEFAULT_DATA_DIR


def resolve_bench(name: str, bench_data: str | os.PathLike[str] | None = None) -> Bench:
    """Find a bench by name: registered, the packaged smoke bench, or a custom folder."""
    check_name("bench name", name)
    data_dir = resolve_data_dir(bench_data)
    reg = registry()
    if name in reg:
        entry = reg[name]
        where = f"{packaged_data_dir() / 'registry.json'} (bench {name})"
        behaviour = load_behaviour(entry.get("behaviour", {}), where)
        return Bench(name, data_dir, entry["files"], entry.get("default_reference"), behaviour)
    if (data_dir / name / "question.jsonl").is_file():
        return custom_bench(name, data_dir)
    if name == SMOKE_BENCH:
        return Bench(name, packaged_data_dir(), default_reference="smoke-reference")
    if bench_data and not data_dir.is_dir():
        raise JobError(
            f"bench data dir {data_dir} does not exist; pass --bench-data DIR or set JOB_BENCH_DATA"
        )
    known = ", ".join(sorted([*reg, SMOKE_BENCH]))
    raise JobError(
        f"unknown bench {name!r}: not registered and no {data_dir / name / 'question.jsonl'}; known: {known}"
    )


def select_questions(questions: list[Question], ids: list[str], first_n: int | None) -> list[Question]:
    """--question-ids (comma lists, ranges a-b) then --first-n, in file order."""
    if ids:
        wanted: list[str] = []
        for part in ",".join(ids).split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            if sep and lo.isdigit() and hi.isdigit():
                wanted.extend(str(i) for i in range(int(lo), int(hi) + 1))
            else:
                wanted.append(part)
        by_id = {str(q.question_id): q for q in questions}
        missing = [w for w in wanted if w not in by_id]
        if missing:
            raise JobError(f"--question-ids: no question with id {', '.join(missing[:10])} in the bench")
        keep = set(wanted)
        questions = [q for q in questions if str(q.question_id) in keep]
    if first_n is not None:
        if first_n < 1:
            raise JobError(f"--first-n must be >= 1, got {first_n}")
        questions = questions[:first_n]
    return questions
