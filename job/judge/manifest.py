"""The judge manifest's `rows` (the judgments a report counts), merged, never overwritten.

Several runs may write one judgment file at once (two CI `job run`s for two checkpoints,
same judge, same --output): each run's manifest write re-reads the stored manifest and
writes the union of its rows and this run's (compare-and-swap: S3 If-Match ETag, a lock
file locally), so the last writer never drops another run's rows. Another run's rows stay
current while the settings are the same and the answers of their models are unchanged
(`answers_sha256`: the judged answers of each model, so `generate --force` + `reduce` of a
model retires its old judgments even when another model is judged)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from job.judge import row_key, stored_row_key
from job.judge.plan import Plan
from job.judge.store import cas_update
from job.storage import Storage

log = logging.getLogger(__name__)

SAME_SETTINGS = (
    "bench", "bench_data_sha256", "judge_model", "mode", "baseline_model", "judge_prompts_sha256",
    "reference", "reference_sha256", "temperature", "max_tokens", "bench_behaviour", "judge_fingerprint",
)  # fmt: skip
"""Manifest fields that must match another run's for its rows to stay current."""

ModelRows = dict[str, set[str]]


def plan_rows(plan: Plan) -> ModelRows:
    """This run's rows per model (a pairwise row under both of its models)."""
    out: ModelRows = {}
    for m, h in plan.inputs.items():
        for model in m.models:
            out.setdefault(model, set()).add(h)
    return out


def _their_rows(prev: dict[str, Any], stored: list[dict[str, Any]]) -> ModelRows:
    """Another run's rows per model: its `model_rows`, or (older manifests) the stored rows
    it names, by the models in each."""
    listed = prev.get("model_rows")
    if isinstance(listed, dict):
        return {m: {h for h in hs if isinstance(h, str)} for m, hs in listed.items() if isinstance(hs, list)}
    before = {h for h in prev["rows"] if isinstance(h, str)}
    out: ModelRows = {}
    for r in stored:
        if r.get("inputs_sha256") in before:
            for model in stored_row_key(r)[4]:
                out.setdefault(model, set()).add(r["inputs_sha256"])
    return out


def merge_rows(
    plan: Plan, judge: str, prev: dict[str, Any] | None, stored: list[dict[str, Any]], warn: bool = True
) -> dict[str, Any]:
    """The manifest fields `rows`, `model_rows`, `models`, `answers_sha256`: this run's rows
    plus those of `prev` (the stored manifest) that are still current."""
    rows = plan_rows(plan)
    models = list(plan.provenance["models"])
    theirs = _their_rows(prev, stored) if prev and isinstance(prev.get("rows"), list) else {}
    if theirs and prev is not None:
        mine = _union(rows.values())
        # stored rows of a match this run judges (with other inputs, or other --judge-samples)
        planned = {row_key(judge, m)[:-1] for m in plan.matches}
        replaced = {r.get("inputs_sha256") for r in stored if stored_row_key(r)[:-1] in planned} - mine
        changed = [k for k in SAME_SETTINGS if prev.get(k) != plan.provenance.get(k)]
        others = _union(theirs.values()) - mine - replaced
        if changed and others and warn:
            log.warning(
                "%d stored judgments outside this run (other models or questions) were made with other "
                "settings (%s): they no longer count; judge them again with these settings to include them",
                len(others),
                ", ".join(changed),
            )
        elif not changed:
            kept = _carry(plan, prev, theirs, mine | replaced, warn)
            for model, hs in kept.items():
                rows.setdefault(model, set()).update(hs)
            if kept:
                models = sorted({*models, *(m for m in prev.get("models", []) if m in kept)})
    ids = {m: plan.answer_ids[m] for m in rows if m in plan.answer_ids}
    if prev and isinstance(prev.get("answers_sha256"), dict):
        ids = {**{m: v for m, v in prev["answers_sha256"].items() if m in rows}, **ids}
    return {
        "models": models,
        "rows": sorted(_union(rows.values())),
        "model_rows": {m: sorted(hs) for m, hs in sorted(rows.items())},
        "answers_sha256": ids,
    }


def _carry(plan: Plan, prev: dict[str, Any], theirs: ModelRows, drop: set[Any], warn: bool) -> ModelRows:
    """Another run's rows that stay current: not in `drop`, and not of a model whose answers
    changed since that run."""
    ids = prev.get("answers_sha256")
    before: dict[str, Any] = ids if isinstance(ids, dict) else {}
    changed = {m for m in theirs if m in before and m in plan.answer_ids and before[m] != plan.answer_ids[m]}
    retired = _union(theirs[m] for m in changed) - drop
    outside = sorted(changed - set(plan.provenance["models"]))  # judged now: the stale warning says it
    if outside and warn:
        log.warning(
            "%d stored judgments of %s judged answers that changed since (generate --force + reduce): "
            "they no longer count; judge those models again to include them",
            len(_union(theirs[m] for m in outside) - drop),
            ", ".join(outside),
        )
    kept = {m: hs - drop - retired for m, hs in theirs.items() if m not in changed}
    return {m: hs for m, hs in kept.items() if hs}


def _union(sets: Iterable[set[str]]) -> set[str]:
    return set().union(*sets)


def previous_manifest(storage: Storage, key: str, data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        man = json.loads(data)
    except (ValueError, RecursionError):
        log.warning("%s: unreadable judge manifest; it is replaced", storage.uri(key))
        return None
    return man if isinstance(man, dict) else None


def update_manifest(
    storage: Storage, key: str, build: Callable[[dict[str, Any] | None], dict[str, Any]]
) -> dict[str, Any]:
    """Write `build(the stored manifest or None)`, compare-and-swap: a concurrent writer's
    manifest is merged in, never overwritten. Returns what was written."""
    written: dict[str, Any] = {}

    def fn(data: bytes | None) -> bytes:
        written.clear()
        written.update(build(previous_manifest(storage, key, data)))
        return json.dumps(written, indent=2, ensure_ascii=False).encode()

    cas_update(storage, key, fn)
    return written
