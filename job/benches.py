"""Bench registry: where a bench's files live, their checksums, and FastChat's tables.

A bench is a FastChat-layout folder `<data>/<name>/question.jsonl` (optionally
`reference_answer/*.jsonl` and its own `judge_prompts.jsonl`). Registered benches
(bench_data/registry.json) also carry pinned upstream URLs and sha256; any other
folder works as a custom bench, without checksum verification.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.names import check_name
from job.records import Question, check_unique_ids, parse_numbered

# FastChat common.py `temperature_config`; categories not listed get 0.7.
TEMPERATURE_BY_CATEGORY: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
DEFAULT_TEMPERATURE = 0.7
# Categories whose judge prompts include a reference answer (FastChat NEED_REF_CATS).
NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")

SMOKE_BENCH = "smoke"
DEFAULT_DATA_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtbench-job" / "bench_data"
)


def temperature_for(category: str) -> float:
    return TEMPERATURE_BY_CATEGORY.get(category, DEFAULT_TEMPERATURE)


def packaged_data_dir() -> Path:
    """bench_data/ shipped with the package (wheel) or beside it (source checkout)."""
    here = Path(__file__).resolve().parent
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
        return Bench(name, data_dir, entry["files"], entry.get("default_reference"))
    if (data_dir / name / "question.jsonl").is_file():
        return Bench(name, data_dir)
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
