"""`job reduce`: merge a model's committed shards into FastChat's model_answer file.

Only shards with a manifest count (the manifest is the commit marker). Every
(question, choice) of the run must be present; duplicates (a shard re-run with
another shard count) are resolved deterministically.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import shortuuid

from job.errors import IncompleteError, JobError
from job.layout import SHARD_RE, answer_key, answer_manifest_key, shard_of_manifest, shards_prefix
from job.names import check_model_name, check_name, name_of_path
from job.provenance import package_version
from job.records import (
    TRUNCATED_WARN,
    Answer,
    Choice,
    QuestionId,
    ShardItem,
    ShardManifest,
    empty_turns,
    id_sort_key,
    parse_records,
    truncation,
)
from job.records.jsonl import dumps_lines
from job.records.run_keys import run_diff
from job.signals import critical
from job.storage import Storage, open_storage

log = logging.getLogger(__name__)

READ_THREADS = 16
CHOICE_FIELDS = {"turns", "finish_reasons", "raw_turns", "reasoning", "reasoning_unterminated"}
"""What a shard item hands its answer-file choice (besides index, status and error)."""


@dataclass
class ReduceConfig:
    bench: str
    model_names: list[str]
    """Empty: every model that has shards under <bench>/shards/."""
    output: str = "./runs"
    allow_failed: bool = False
    wait: float = 0.0
    """Seconds to poll for shards still running before failing."""
    poll_interval: float = 10.0


@dataclass
class Merged:
    answers: list[Answer]
    manifests: list[ShardManifest]
    num_failed: int


def merge_items(items: list[tuple[ShardItem, str]]) -> dict[tuple[QuestionId, int], ShardItem]:
    """One item per (question, choice): ok beats failed, then newest, then shard key (stable)."""
    best: dict[tuple[QuestionId, int], tuple[tuple[int, float, str], ShardItem]] = {}
    for item, source in items:
        rank = (1 if item.status == "ok" else 0, item.tstamp, source)
        k = (item.question_id, item.choice)
        if k not in best or rank > best[k][0]:
            best[k] = (rank, item)
    return {k: v[1] for k, v in best.items()}


def answer_id(model_name: str, config_hash: str, qid: QuestionId) -> str:
    """22-char shortuuid, deterministic so a re-run of reduce writes identical ids."""
    return str(shortuuid.uuid(name=f"mtbench-job/{model_name}/{config_hash}/{qid}"))[:22]


def to_answers(
    model_name: str, config_hash: str, merged: dict[tuple[QuestionId, int], ShardItem]
) -> list[Answer]:
    by_q: dict[QuestionId, list[ShardItem]] = defaultdict(list)
    for (qid, _), item in merged.items():
        by_q[qid].append(item)
    out = []
    for qid in sorted(by_q, key=id_sort_key):
        items = sorted(by_q[qid], key=lambda i: i.choice)
        choices = []
        for it in items:
            kept = it.model_dump(include=CHOICE_FIELDS)
            if it.status == "ok":
                choices.append(Choice(index=it.choice, **kept))
            else:  # kept visible with its status; never judged as an answer
                choices.append(Choice(index=it.choice, status=it.status, error=it.error, **kept))
        out.append(
            Answer(
                question_id=qid,
                answer_id=answer_id(model_name, config_hash, qid),
                model_id=model_name,
                choices=choices,
                tstamp=max(i.tstamp for i in items),
            )
        )
    return out


def _read_many(storage: Storage, keys: list[str]) -> list[bytes]:
    """Objects in key order, fetched concurrently: on S3 each GET is a round trip, and
    1,000 shards read one by one spend most of the reduce waiting on the network."""
    if len(keys) < 2:
        return [storage.read_bytes(k) for k in keys]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(storage.read_bytes, keys))


def _manifests(storage: Storage, bench: str, model: str) -> list[tuple[str, ShardManifest]]:
    out = []
    keys = [k for k in storage.list(shards_prefix(bench, model)) if SHARD_RE.search(k)]
    for key, data in zip(keys, _read_many(storage, keys), strict=True):
        try:
            out.append((key, ShardManifest.model_validate_json(data)))
        except ValueError:
            raise JobError(
                f"{storage.uri(key)}: corrupt shard manifest; delete it and re-run that shard"
            ) from None
    return out


def data_key(mkey: str, m: ShardManifest) -> str:
    """The answers a manifest commits: its data_file beside it (older manifests: the shard key)."""
    return f"{mkey.rsplit('/', 1)[0]}/{m.data_file}" if m.data_file else shard_of_manifest(mkey)


def _missing_report(manifests: list[ShardManifest], missing: list[tuple[QuestionId, int]]) -> str:
    counts = sorted({m.num_shards for m in manifests})
    parts = []
    for n in counts:
        have = {m.shard_index for m in manifests if m.num_shards == n}
        lost = [i for i in range(n) if i not in have]
        if lost:
            parts.append(f"shards {', '.join(f'{i}' for i in lost[:20])} of {n} not committed")
    sample = ", ".join(f"{q}/choice {c}" for q, c in missing[:10])
    more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
    return f"{'; '.join(parts) or 'shards incomplete'}; missing {len(missing)} items: {sample}{more}"


def _different_runs(manifests: list[ShardManifest]) -> list[str]:
    """The config hashes of shards that are not one run ([] when all are). Hashes may differ
    within one run: a hub revision unknown to some tasks' cache at plan time, or shards of
    an older version without a key added since (job.records.run_keys)."""
    by_hash = {m.config_hash: m.sampling for m in manifests}
    configs = list(by_hash.values())
    if any(run_diff(a, b) for i, a in enumerate(configs) for b in configs[i + 1 :]):
        return sorted(by_hash)
    return []


def merge_model(storage: Storage, bench: str, model: str, allow_failed: bool) -> Merged:
    found = _manifests(storage, bench, model)
    if not found:
        raise IncompleteError(
            f"no committed shards for model {model!r} under {storage.uri(shards_prefix(bench, model))}; run `job generate` first"
        )
    hashes = _different_runs([m for _, m in found])
    if hashes:
        raise JobError(
            f"shards of {model!r} come from different runs (configs {', '.join(hashes)}); "
            f"delete the stale ones under {storage.uri(shards_prefix(bench, model))} or regenerate with --force"
        )
    manifests = [m for _, m in found]
    ref = manifests[0]
    items: list[tuple[ShardItem, str]] = []
    skeys = [data_key(mkey, m) for mkey, m in found]
    for skey, data in zip(skeys, _read_many(storage, skeys), strict=True):
        for it in parse_records(data, ShardItem, storage.uri(skey)):
            items.append((it, skey))
    merged = merge_items(items)
    expected = [(q, c) for q in ref.question_ids for c in range(ref.num_choices)]
    missing = [k for k in expected if k not in merged]
    if missing:
        raise IncompleteError(f"model {model!r}: {_missing_report(manifests, missing)}")
    failed = sorted(
        (k for k, v in merged.items() if v.status != "ok"), key=lambda k: (id_sort_key(k[0]), k[1])
    )
    if failed and not allow_failed:
        sample = ", ".join(f"{q}/choice {c} ({merged[(q, c)].error})" for q, c in failed[:5])
        raise JobError(
            f"model {model!r}: {len(failed)} conversations failed in generation: {sample}; "
            "re-run `job generate --force` for their shards, or pass --allow-failed to keep them as failed"
        )
    # only the run's own items (stray ids from a narrower selection are dropped)
    wanted = set(expected)
    merged = {k: v for k, v in merged.items() if k in wanted}
    return Merged(to_answers(model, ref.config_hash, merged), manifests, len(failed))


def _warn_truncated(model: str, answers: list[Answer]) -> tuple[int, int]:
    cut, known = truncation(answers)
    if known and cut / known > TRUNCATED_WARN:
        log.warning(
            "%s: %d of %d turns (%.0f%%) stopped at --max-new-tokens (finish_reason length): "
            "those answers are cut off; raise --max-new-tokens, or check the model's end-of-turn token",
            model,
            cut,
            known,
            100 * cut / known,
        )
    return cut, known


def _warn_empty(model: str, answers: list[Answer]) -> int:
    # FastChat judges an empty answer (usually a 1); dropping it would inflate the mean
    n = empty_turns(c.turns for a in answers for c in a.choices if c.status is None)
    if n:
        log.warning(
            "model %s: %d empty answers (turns with no text: the model stopped at once or used up "
            "--max-new-tokens); they are judged as they are, as FastChat does (usually a score of 1)",
            model,
            n,
        )
    return n


def reduce_model(cfg: ReduceConfig, storage: Storage, model: str) -> Merged:
    deadline = time.monotonic() + cfg.wait
    while True:
        try:
            merged = merge_model(storage, cfg.bench, model, cfg.allow_failed)
            break
        except IncompleteError as e:
            if time.monotonic() >= deadline:
                raise
            log.info("waiting for shards of %s: %s", model, e)
            time.sleep(min(cfg.poll_interval, max(deadline - time.monotonic(), 0.1)))
    ref = merged.manifests[0]
    truncated, known = _warn_truncated(model, merged.answers)
    empty = _warn_empty(model, merged.answers)
    answers = dumps_lines(a.model_dump(mode="json", exclude_none=True) for a in merged.answers)
    summary = {
        "kind": "model-answer",
        "bench": cfg.bench,
        "model": ref.model,
        "model_name": model,
        "config_hash": ref.config_hash,
        "bench_data_sha256": ref.bench_data_sha256,
        "sampling": ref.sampling,
        "num_questions": len(merged.answers),
        "num_choices": ref.num_choices,
        "num_failed": merged.num_failed,
        "turns_truncated": truncated,
        "turns_with_finish_reason": known,
        "empty_answers": empty,
        "tokens_generated": sum(m.tokens_generated for m in merged.manifests),
        "shards": sorted({f"{m.shard_index}/{m.num_shards}" for m in merged.manifests}),
        "generated_by": sorted({m.package_version for m in merged.manifests}),
        "git_revision": ref.git_revision,
        "package_version": package_version(),
        "reduced_at": time.time(),
    }
    with critical():  # a SIGTERM waits: the answer file and its manifest are replaced together
        storage.write_bytes(answer_key(cfg.bench, model), answers)
        storage.write_bytes(
            answer_manifest_key(cfg.bench, model), json.dumps(summary, indent=2, ensure_ascii=False).encode()
        )
    log.info(
        "%s: %d questions x %d choices -> %s",
        model,
        len(merged.answers),
        ref.num_choices,
        storage.uri(answer_key(cfg.bench, model)),
    )
    return merged


def _discover_models(storage: Storage, bench: str) -> list[str]:
    prefix = f"{bench}/shards/"
    dirs = {k[len(prefix) :].split("/", 1)[0] for k in storage.list(prefix) if SHARD_RE.search(k)}
    models = sorted(name_of_path(d) for d in dirs)  # org%2Fname/ holds the shards of org/name
    if not models:
        raise IncompleteError(
            f"no shards under {storage.uri(prefix)}; run `job generate` first or check --output/--bench"
        )
    return models


def run(cfg: ReduceConfig) -> dict[str, Merged]:
    check_name("bench name", cfg.bench)
    storage = open_storage(cfg.output)
    models = [check_model_name("model name", m) for m in cfg.model_names]
    deadline = time.monotonic() + cfg.wait
    while not models:
        # a reducer started before any task committed (k8s, Slurm without a dependency) waits too
        try:
            models = _discover_models(storage, cfg.bench)
        except IncompleteError as e:
            if time.monotonic() >= deadline:
                raise
            log.info("waiting for shards: %s", e)
            time.sleep(min(cfg.poll_interval, max(deadline - time.monotonic(), 0.1)))
    cfg = replace(cfg, wait=max(deadline - time.monotonic(), 0.0))
    return {m: reduce_model(cfg, storage, m) for m in models}
