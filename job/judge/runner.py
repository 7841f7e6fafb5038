"""`job judge`: load answers, references and prompts, build FastChat's matches, send the
games not yet stored to the judge backend in batches, and append the judgments as they
arrive. Re-running completes an interrupted run without duplicate rows."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any

from tqdm import tqdm

from job.backends import load_backend
from job.backends.base import GenRequest, GenResult
from job.errors import JobError, Terminated
from job.judge import (
    GameResult,
    Match,
    game_key,
    judge_messages,
    make_record,
)
from job.judge.batch_state import StoredBatchState, batch_options, stored_batch_state
from job.judge.estimate import dry_run
from job.judge.manifest import merge_rows, update_manifest
from job.judge.plan import (
    JudgeConfig,
    Plan,
    judge_fingerprint,
    judge_name_of,
    judgment_key,
    make_plan,
)
from job.judge.recorder import Recorder
from job.judge.store import JudgmentStore
from job.judge.totals import Totals, finish_manifest
from job.layout import manifest_key
from job.provenance import git_revision, package_version
from job.storage import open_storage

log = logging.getLogger(__name__)

__all__ = ["JudgeConfig", "judge_fingerprint", "judge_name_of", "run"]


def _batches(plan: Plan, size: int) -> list[list[tuple[Match, int, str]]]:
    """Batches of whole matches, so both games of a pair are stored together."""
    out: list[list[tuple[Match, int, str]]] = [[]]
    for i, req in enumerate(plan.requests):
        starts_match = i == 0 or plan.requests[i - 1][0] is not req[0]
        if starts_match and len(out[-1]) >= size:
            out.append([])
        out[-1].append(req)
    return [b for b in out if b]


def _record_answer_errors(plan: Plan, judge: str, store: JudgmentStore) -> int:
    """Answers that failed in generation are recorded once, without a judge call."""
    failed = [m for m in plan.matches if m.failed and game_key(judge, m, m.games[0]) not in plan.cached]
    store.append(
        [
            make_record(
                judge,
                m,
                {
                    g: GameResult("", "", "answer_error", m.failed, "error" if m.pairwise else -1)
                    for g in m.games
                },
                plan.inputs[m],
            )
            for m in failed
        ]
    )
    return len(failed)


def execute(cfg: JudgeConfig, plan: Plan, judge: str, store: JudgmentStore, totals: Totals) -> None:
    """Send the plan's requests and store the judgments; `totals` gets the run's counts, calls
    and usage, also when it fails."""
    answer_errors = _record_answer_errors(plan, judge, store)
    if answer_errors:
        totals.counts["answer_error"] += answer_errors
    if not plan.requests:
        return
    state = stored_batch_state(cfg.backend_options, store, plan.provenance["models"])
    backend = load_backend(cfg.judge_model, **batch_options(cfg.backend_options, state))
    params = plan.params
    rec = Recorder(cfg, plan, judge, store, backend)
    rec.stop_early = state is None
    bar = tqdm(
        total=len(plan.requests),
        desc=f"judge {judge}",
        unit="call",
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )

    def request(m: Match, g: int, u: str) -> GenRequest:
        key = f"{m.question.question_id}/t{m.turn}/c{m.choice}/g{g}" + (f"/s{m.sample}" if m.sample else "")
        return GenRequest(judge_messages(m.prompt.system_prompt, u), params, key=key)

    stopped: BaseException | None = None
    try:
        if backend.streams_conversations:
            # API judges: every call in one stream, bounded by the backend's concurrency,
            # each reply recorded as it arrives, so no batch waits on its slowest call
            reqs = plan.requests

            def on_reply(i: int, r: GenResult) -> GenRequest | None:
                if not rec.add(*reqs[i], r):
                    return None
                bar.total = (bar.total or 0) + 1  # asked again: the conversation's next request
                return request(*reqs[i])

            backend.generate_conversations(
                [request(*q) for q in reqs], on_reply, lambda n, _t: _advance(bar, n)
            )
        else:
            # local judges (hf, vllm): batches, so work is stored as it is done
            # --openai-batch: every call in one Batch API batch
            size = len(plan.requests) if cfg.backend_options.get("openai_batch") else cfg.batch_size
            for batch in _batches(plan, size):
                while batch:  # then the games asked again, until none is left
                    results = backend.generate([request(*q) for q in batch], lambda n, _t: _advance(bar, n))
                    if len(results) != len(batch):
                        raise JobError(
                            f"judge backend {cfg.judge_model} returned {len(results)} results for {len(batch)} requests"
                        )
                    batch = [q for q, r in zip(batch, results, strict=True) if rec.add(*q, r)]
                    if state is not None:
                        _stored_then_cleared(rec, state)
                    bar.total = (bar.total or 0) + len(batch)
        rec.flush(final=True)
        if not rec.counts["ok"]:
            raise rec.all_failed()  # a failure is never a success, and never exit 0
    except (Terminated, KeyboardInterrupt) as e:
        stopped = e
        raise
    finally:
        bar.close()
        backend.close()  # API judges: joins the event-loop thread, so no reply is recorded after it
        totals.add(rec.counts, rec.replies, rec.retries, rec.usage)
        if stopped is not None:
            rec.save_pending()
            if isinstance(stopped, Terminated):
                stopped.kept = (
                    f"{rec.stored} judgments stored by this run ({len(plan.cached)} games before) in {store.uri}; "
                    "a re-run asks only the rest"
                )


def _stored_then_cleared(rec: Recorder, state: StoredBatchState) -> None:
    """--openai-batch: the batch's rows stored first, its state cleared after, so a run killed
    in between collects the same batch again instead of paying for it twice (the games asked
    again, --parse-retries, then go out as a new batch)."""
    try:
        rec.flush()
    finally:
        if not rec.pending:  # stored (also when flush stops the run): nothing left to collect
            state.clear()


def _advance(bar: tqdm[Any], n: int) -> None:
    bar.update(n)


def run(cfg: JudgeConfig) -> Counter[str]:
    judge = judge_name_of(cfg)
    key = judgment_key(cfg.bench, judge, cfg.mode)
    storage = open_storage(cfg.output)
    store = JudgmentStore(storage, key)
    if cfg.batch_size < 1:
        raise JobError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    dump_path_ok(cfg.dump)
    plan = make_plan(cfg, store, judge)
    for m, ids in plan.missing.items():
        log.warning("answers missing for %s: %s (skipped, --allow-missing)", m, ", ".join(ids))
    if cfg.dry_run:
        dry_run(cfg, plan)
        return Counter()
    storage.check_writable()
    mkey = manifest_key(key)
    # written before any row of this run: a crash leaves a manifest naming exactly the
    # rows that count (stored ones with these inputs), never stale ones; merged with the
    # stored one (compare-and-swap), so a concurrent run's rows are kept
    manifest = {**plan.provenance, "kind": "judgment", "file": key, "missing": plan.missing,
                "package_version": package_version(), "git_revision": git_revision(), "started_at": time.time()}  # fmt: skip
    update_manifest(storage, mkey, lambda prev: {**manifest, **merge_rows(plan, judge, prev, plan.stored)})
    if plan.stale:
        log.warning(
            "%d stored judgments were made with other inputs (answers, prompt file, reference or judge "
            "settings changed): they no longer count and are judged again",
            plan.stale,
        )
    log.info(
        "%d matches, %d calls to send, %d games already stored -> %s",
        len(plan.matches),
        len(plan.requests),
        len(plan.cached),
        store.uri,
    )
    totals = Totals()
    try:
        execute(cfg, plan, judge, store, totals)
    except BaseException as e:
        # fold in what was stored if the storage still answers; the first error (often
        # the storage itself failing) is the one to report, not a second one from here
        with suppress(JobError):
            store.compact()
            if isinstance(e, JobError) and totals.counts:  # a failed run's totals too
                finish_manifest(storage, mkey, manifest, plan, judge, store, totals)
                print(totals.line(cfg.price_per_mtok))
        raise
    store.compact()
    finish_manifest(storage, mkey, manifest, plan, judge, store, totals)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(totals.counts.items())) or "nothing new"
    print(
        f"judged {cfg.bench} with {judge}: {summary}; {len(plan.cached)} games were already stored -> {store.uri}"
    )
    print(totals.line(cfg.price_per_mtok))
    return totals.counts


def dump_path_ok(path: str | None) -> None:
    if path and not Path(path).parent.exists():
        raise JobError(f"--dump {path}: directory does not exist")
