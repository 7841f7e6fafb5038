"""`--openai-batch`: where the judge remembers its submitted batch (job.backends.openai_batch)
between runs: `<judge>_<mode>.batch-<models>.json` next to the judgments, through job.storage
(so an S3 run resumes as a local one does). It holds ids and hashes only, never a key.

One file per set of judged models: runs that judge other models into the same judgment file
at once (two CI jobs for two checkpoints, job.judge.manifest) each keep their own batch,
instead of taking the other's for a stale one and cancelling it. A run warns of the pending
batches of other model sets (a model added since a run was stopped: re-run that set to
collect its batch)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from job.judge.store import JudgmentStore
from job.storage import Storage

log = logging.getLogger(__name__)


def batch_state_key(judgment_key: str, models: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(sorted(models)).encode()).hexdigest()[:12]
    return f"{judgment_key.removesuffix('.jsonl')}.batch-{digest}.json"


class StoredBatchState:
    """The BatchState of job.backends.openai_batch, kept in the run's storage."""

    def __init__(self, storage: Storage, key: str, models: list[str] | None = None):
        self.storage, self.key, self.models = storage, key, sorted(models or [])

    def load(self) -> dict[str, Any] | None:
        if not self.storage.exists(self.key):
            return None
        try:
            state = json.loads(self.storage.read_bytes(self.key))
        except ValueError:  # a torn write cannot happen (atomic), a hand edit can: start afresh
            state = None
        if not _well_formed(state):
            log.warning(
                "%s is not a batch state: ignored (a new batch is submitted)", self.storage.uri(self.key)
            )
            return None
        return dict(state)

    def save(self, state: dict[str, Any]) -> None:
        doc = {**state, "models": self.models}  # for the warning of a run judging other models
        self.storage.write_bytes(self.key, json.dumps(doc, indent=1, ensure_ascii=False).encode())

    def clear(self) -> None:
        if self.storage.exists(self.key):
            self.storage.delete(self.key)


def _well_formed(state: Any) -> bool:
    """What the backend reads of a state (openai_batch._submit wrote it): the batch id and a
    {custom_id: {sha256, ...}} map."""
    if not isinstance(state, dict) or not isinstance(state.get("batch_id"), str):
        return False
    lines = state.get("lines")
    return isinstance(lines, dict) and all(isinstance(v, dict) for v in lines.values())


def stored_batch_state(
    options: dict[str, Any], store: JudgmentStore, models: list[str]
) -> StoredBatchState | None:
    """Where --openai-batch keeps the batch of a run judging `models`; None without it."""
    if not options.get("openai_batch"):
        return None
    key = batch_state_key(store.key, models)
    _warn_of_others(store, key)
    return StoredBatchState(store.storage, key, models)


def _warn_of_others(store: JudgmentStore, key: str) -> None:
    stem = store.key.removesuffix(".jsonl") + ".batch-"
    prefix = stem[: stem.rfind("/") + 1]
    for other in store.storage.list(prefix):
        if other.startswith(stem) and other.endswith(".json") and other != key:
            state = StoredBatchState(store.storage, other).load() or {}
            models = " ".join(f"--model-list {m}" for m in state.get("models") or []) or "its models"
            log.warning(
                "%s: batch %s of another set of models is pending; run again with %s to collect it",
                store.storage.uri(other), state.get("batch_id"), models,
            )  # fmt: skip


def batch_options(options: dict[str, Any], state: StoredBatchState | None) -> dict[str, Any]:
    """The judge backend's options, with the stored batch state when --openai-batch is on."""
    return options if state is None else {**options, "batch_state": state}
