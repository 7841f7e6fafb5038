"""Reading judgment files for a report: every line parsed into typed rows as it is read
(job.records.judgments.read_judgment), then only the rows the judge manifest names current
kept (job.judge.store.current_rows); the manifests come along (provenance, token usage)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.benches import sha256_bytes
from job.errors import JobError
from job.judge.store import JudgmentStore, current_rows
from job.records.jsonl import iter_jsonl
from job.records.judgments import JudgmentRow, PairRow, SingleRow, read_judgment
from job.storage import Storage


@dataclass
class Loaded:
    records: list[JudgmentRow]
    """typed rows (job.records.judgments.read_judgment): a Swallow list row is one per choice"""
    files: list[dict[str, Any]]
    manifests: list[dict[str, Any]]

    def single(self) -> list[SingleRow]:
        return [r for r in self.records if isinstance(r, SingleRow)]

    def pairs(self) -> list[PairRow]:
        return [r for r in self.records if isinstance(r, PairRow)]


class _Reader:
    """Parses each stored line as it is read (file:line on a bad one) and keeps its rows, so
    the rows the manifest names current are taken without parsing twice."""

    def __init__(self, pairwise: bool) -> None:
        self.pairwise = pairwise
        self.rows: dict[int, list[JudgmentRow]] = {}

    def __call__(self, rec: dict[str, Any], where: str) -> None:
        self.rows[id(rec)] = read_judgment(rec, where, self.pairwise)

    def of(self, current: list[dict[str, Any]]) -> list[JudgmentRow]:
        return [row for r in current for row in self.rows[id(r)]]


def _manifest(data: bytes, where: str) -> dict[str, Any]:
    try:
        man = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, absurd nesting
        raise JobError(
            f"{where}: unreadable judge manifest ({type(e).__name__}); delete it or re-run `job judge`"
        ) from None
    if not isinstance(man, dict):
        raise JobError(f"{where}: judge manifest is not a JSON object; delete it or re-run `job judge`")
    return man


def read_files(paths: list[str], pairwise: bool) -> Loaded:
    """`job report --judgments FILE...`, each with the judge manifest beside it if any."""
    out = Loaded([], [], [])
    for f in paths:
        p = Path(f)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise JobError(f"--judgments {p}: {e.strerror}") from None
        reader, raw = _Reader(pairwise), []
        for lineno, r in iter_jsonl(data, str(p)):
            reader(r, f"{p}:{lineno}")
            raw.append(r)
        mpath = p.with_name(p.name.removesuffix(".jsonl") + ".manifest.json")
        man = _manifest(mpath.read_bytes(), str(mpath)) if mpath.is_file() else None
        _add(out, raw, man, reader, {"path": str(p), "sha256": sha256_bytes(data)})
    return out


def read_stored(storage: Storage, prefix: str, judge_name: str | None, pairwise: bool) -> Loaded:
    """The one judge's judgment file under `prefix` (<bench>/model_judgment/) in storage."""
    suffix = "_pair.jsonl" if pairwise else "_single.jsonl"
    out = Loaded([], [], [])
    keys = sorted(
        {k.split(".parts/")[0] for k in storage.list(prefix) if k.split(".parts/")[0].endswith(suffix)}
    )
    if judge_name:
        keys = [k for k in keys if k == f"{prefix}{judge_name}{suffix}"]
    if not keys:
        raise JobError(
            f"no *{suffix} judgments under {storage.uri(prefix)}; run `job judge` or pass --judgments FILE"
        )
    if len(keys) > 1:
        names = ", ".join(k[len(prefix) : -len(suffix)] for k in keys)
        raise JobError(
            f"judgments of several judges under {storage.uri(prefix)} ({names}); pick one with --judge-name"
        )
    for key in keys:
        store = JudgmentStore(storage, key)
        reader = _Reader(pairwise)
        raw = store.read(check=reader)
        mkey = key.removesuffix(".jsonl") + ".manifest.json"
        man = _manifest(storage.read_bytes(mkey), storage.uri(mkey)) if storage.exists(mkey) else None
        _add(out, raw, man, reader, {"path": store.uri})
    return out


def _add(
    out: Loaded,
    raw: list[dict[str, Any]],
    man: dict[str, Any] | None,
    reader: _Reader,
    file: dict[str, Any],
) -> None:
    """Count only the rows the judge manifest names as current (all rows of a file without
    one; a Swallow list row as one row per choice); provenance says how many of the stored."""
    current = current_rows(raw, man)
    out.records += reader.of(current)
    out.files.append({**file, "rows": len(current), "stored_rows": len(raw)})
    if man is not None:
        out.manifests.append(man)


def judge_usage(manifests: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per judge: the API token usage its manifest sums (`usage_total`), where it has one."""
    out: dict[str, dict[str, int]] = {}
    for man in manifests:
        u = man.get("usage_total")
        if isinstance(u, dict):
            name = str(man.get("judge") or man.get("judge_model") or "?")
            out[name] = {k: int(u.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")}
    return out
