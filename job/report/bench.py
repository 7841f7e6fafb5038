"""Which bench a judgment file belongs to, when `job report --judgments FILE` has no --bench.

A judge manifest beside the file names it. Otherwise the file's question ids decide: the one
known bench (registered and present, smoke, or a folder under --bench-data) whose question file
holds them all; when none or several do, FastChat's default mt_bench if it holds them, else a
one-line error naming what fits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from job.benches import SMOKE_BENCH, registry, resolve_bench, resolve_data_dir
from job.errors import JobError
from job.records import QuestionId, id_sort_key

log = logging.getLogger(__name__)
DEFAULT_BENCH = "mt_bench"  # FastChat's --bench-name default


def known_benches(bench_data: str | os.PathLike[str] | None) -> list[str]:
    data_dir = resolve_data_dir(bench_data)
    custom = sorted(p.parent.name for p in data_dir.glob("*/question.jsonl")) if data_dir.is_dir() else []
    return list(dict.fromkeys([*registry(), SMOKE_BENCH, *custom]))


def _question_ids(name: str, bench_data: str | os.PathLike[str] | None) -> set[str] | None:
    """The bench's ids as text (as answers are matched), or None when its data is not here."""
    try:
        questions, _ = resolve_bench(name, bench_data).load_questions()
    except JobError:  # not pulled, a folder that is no bench: it cannot be the one
        return None
    return {str(q.question_id) for q in questions}


def _ids_text(ids: Iterable[QuestionId], limit: int = 5) -> str:
    shown = sorted(set(ids), key=id_sort_key)
    return ", ".join(map(str, shown[:limit])) + (", ..." if len(shown) > limit else "")


def infer_bench(
    records: Sequence[Any], manifests: list[dict[str, Any]], where: str, bench_data: str | None
) -> str:
    named = {str(m["bench"]) for m in manifests if m.get("bench")}
    if len(named) == 1:
        return named.pop()
    ids = {r.question_id for r in records}
    wanted = {str(q) for q in ids}
    fits = []
    for name in known_benches(bench_data):
        have = _question_ids(name, bench_data)
        if have is not None and wanted <= have:
            fits.append(name)
    if len(fits) == 1:
        log.info(
            "%s: bench %s (the only bench whose questions hold its ids; --bench to override)", where, fits[0]
        )
        return fits[0]
    if DEFAULT_BENCH in fits:
        log.info(
            "%s: bench %s (FastChat's default; its ids fit %s too)", where, DEFAULT_BENCH, ", ".join(fits)
        )
        return DEFAULT_BENCH
    if fits:
        raise JobError(
            f"{where}: question ids fit several benches ({', '.join(fits)}), not {DEFAULT_BENCH} "
            "(FastChat's default); pass --bench"
        )
    raise JobError(
        f"{where}: question ids {_ids_text(ids)} are in no known bench's question file "
        f"({DEFAULT_BENCH} is FastChat's default); pass --bench NAME or --bench-data DIR"
    )
