"""Shard generation, commit (answers first, manifest last) and resume; `run` is `job generate`
on one process (job.generate.ray_executor is the Ray one)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from job.backends import load_backend, parse_spec
from job.backends.base import Backend, SamplingParams
from job.backends.fingerprint import describe, endpoint_of
from job.benches import Bench
from job.errors import JobError, Terminated
from job.generate.plan import GenerateConfig, ShardPlan, backend_options, plan, print_plan, temperature_of
from job.generate.sharding import shard
from job.generate.waves import Conversation, Progress, run_waves
from job.layout import manifest_key, shard_key, shards_prefix
from job.provenance import git_revision, host, package_version
from job.records import ShardItem, ShardManifest, empty_turns, id_sort_key
from job.records.jsonl import dumps_lines
from job.records.reasoning import compile_pattern, record_fields
from job.records.run_keys import FINGERPRINT, describe_diff, run_diff
from job.signals import critical
from job.storage import Storage, open_storage

log = logging.getLogger(__name__)


def _load_manifest(storage: Storage, key: str) -> ShardManifest | None:
    if not storage.exists(key):
        return None
    try:
        return ShardManifest.model_validate_json(storage.read_bytes(key))
    except ValueError:
        raise JobError(
            f"{storage.uri(key)}: corrupt shard manifest; delete it and re-run this shard"
        ) from None


def generate_shard(
    cfg: GenerateConfig, p: ShardPlan, index: int, storage: Storage, backend: Backend
) -> ShardManifest:
    """Generate one shard and commit it (answers first, manifest last)."""
    n = p.num_shards
    bench: Bench = p.bench
    assert cfg.model_name
    key = shard_key(bench.name, cfg.model_name, index, n)
    part = shard(p.items, n, index)
    started = time.time()
    pattern = compile_pattern(cfg.reasoning_pattern)
    convs = [
        Conversation(
            q, c, SamplingParams(temperature_of(q, cfg, bench), cfg.max_new_tokens, cfg.seed + c),
            reasoning_pattern=pattern,
        )
        for q, c in part
    ]  # fmt: skip
    log.info("shard %d/%d: %d conversations -> %s", index + 1, n, len(convs), storage.uri(key))
    bar = Progress(sum(len(c.question.turns) for c in convs), f"shard {index + 1}/{n}")
    try:
        run_waves(backend, convs, bool(cfg.dedupe_greedy), bar)
    finally:
        bar.close()
    fatal = backend.fatal_error
    if fatal:  # bad key / model / endpoint: commit nothing, so a re-run redoes the shard
        raise JobError(f"{fatal}; shard {index + 1}/{n} was not written")
    if convs and all(c.status != "ok" for c in convs):
        # nothing to judge: a failed run, not a shard of failures that reports and gates accept
        raise JobError(
            f"shard {index + 1}/{n}: all {len(convs)} conversations failed, e.g. {convs[0].error}; "
            "nothing was written for this shard; fix the cause and re-run"
        )
    now = time.time()
    items = [
        ShardItem(
            question_id=c.question.question_id,
            choice=c.choice,
            **record_fields(c.splits),
            status=c.status,
            error=c.error,
            finish_reasons=c.finish_reasons,
            num_tokens=c.num_tokens,
            tstamp=now,
        )
        for c in convs
    ]
    manifest = ShardManifest(
        bench=bench.name,
        bench_data_sha256=p.data_sha,
        model=cfg.model,
        model_name=cfg.model_name,
        config_hash=p.config_hash,
        sampling=p.run_config,
        endpoint=endpoint_of(parse_spec(cfg.model)[0], cfg.backend_options),
        shard_index=index,
        num_shards=n,
        question_ids=[q.question_id for q in sorted(p.questions, key=lambda q: id_sort_key(q.question_id))],
        num_choices=cfg.num_choices,
        num_items=len(items),
        num_failed=sum(1 for i in items if i.status != "ok"),
        num_empty=empty_turns(i.turns for i in items if i.status == "ok"),
        tokens_generated=sum(i.num_tokens for i in items),
        package_version=package_version(),
        git_revision=git_revision(),
        started_at=started,
        finished_at=now,
        wall_seconds=round(now - started, 3),
        host=host(),
    )
    with critical():  # a SIGTERM waits for the commit: answers, then the manifest
        committed = commit_shard(storage, key, items, manifest, cfg.force)
    if not committed:
        log.warning("shard %d/%d was committed by another task first; keeping theirs", index + 1, n)
    elif manifest.num_failed:
        log.warning(
            "shard %d/%d: %d of %d conversations failed (recorded with status)",
            index + 1,
            n,
            manifest.num_failed,
            len(items),
        )
    return manifest


def commit_shard(
    storage: Storage, key: str, items: list[ShardItem], manifest: ShardManifest, force: bool
) -> bool:
    """Write the answers, then the manifest (the commit marker); False if another task won.

    Two tasks may run the same shard (a Slurm requeue, a slow pod replaced). The answers go
    to the shard key only if it is free (else to a key of their own), and the manifest names
    them, so the loser of the manifest race never touches the data the winner's manifest
    describes; it deletes only its own copy. --force owns the shard and overwrites, and so
    does a shard regenerated for new weights: the old one stays valid until this commit.
    """
    data = dumps_lines(i.model_dump(mode="json") for i in items)
    mkey = manifest_key(key)
    old = _load_manifest(storage, mkey) if force else _stale_manifest(storage, mkey, manifest)
    data_key = key
    if not storage.write_bytes(key, data, if_absent=True):  # the old answers stay until the commit
        data_key = f"{key.removesuffix('.jsonl')}.{uuid.uuid4().hex[:12]}.jsonl"
        storage.write_bytes(data_key, data)
    manifest.data_file = data_key.rsplit("/", 1)[-1]
    body = manifest.model_dump_json(indent=2).encode()
    if storage.write_bytes(mkey, body, if_absent=old is None and not force):
        old_data = (old.data_file or key.rsplit("/", 1)[-1]) if old else None
        if old_data and old_data != manifest.data_file:  # answers the new manifest replaced
            storage.delete(f"{key.rsplit('/', 1)[0]}/{old_data}")
        return True
    storage.delete(data_key)
    return False


def _stale_manifest(storage: Storage, mkey: str, manifest: ShardManifest) -> ShardManifest | None:
    """The committed manifest this one replaces: the same run on weights changed since."""
    existing = _load_manifest(storage, mkey)
    return existing if existing and _model_changed(existing, manifest.sampling) else None


def pending_shards(
    cfg: GenerateConfig, p: ShardPlan, storage: Storage
) -> tuple[list[int], list[ShardManifest]]:
    """(shard indices still to generate, manifests of shards already complete).

    Shared by every executor (local loop, Ray actors) so they skip exactly the same shards.
    A shard of the same run on changed weights is regenerated, but its manifest stays until
    the new one is committed (commit_shard), so a failed or killed run loses nothing.
    """
    assert cfg.model_name
    todo: list[int] = []
    done: list[ShardManifest] = []
    for i in p.indices:
        mkey = manifest_key(shard_key(p.bench.name, cfg.model_name, i, p.num_shards))
        existing = _load_manifest(storage, mkey)
        if existing is None or cfg.force:
            todo.append(i)
            continue
        diff = [] if existing.config_hash == p.config_hash else run_diff(existing.sampling, p.run_config)
        if diff == [FINGERPRINT]:
            log.warning(
                "shard %d/%d: regenerating, the model changed since it was generated (%s, now %s)",
                i + 1,
                p.num_shards,
                describe(existing.sampling.get(FINGERPRINT)),
                describe(p.run_config[FINGERPRINT]),
            )
            todo.append(i)
        elif diff:
            raise JobError(
                f"{storage.uri(mkey)} holds a shard of a different run (config {existing.config_hash}, "
                f"now {p.config_hash}: {describe_diff(existing.sampling, p.run_config, diff)}); "
                "use another --model-name or --output, or --force to replace it"
            )
        else:
            log.info(
                "shard %d/%d already complete (%d items); nothing to do",
                i + 1,
                p.num_shards,
                existing.num_items,
            )
            done.append(existing)
    return todo, done


def _model_changed(existing: ShardManifest, run_config: dict[str, Any]) -> bool:
    """Only the model's fingerprint differs: the same run on new weights (regenerate, no --force)."""
    return run_diff(existing.sampling, run_config) == [FINGERPRINT]


def run(cfg: GenerateConfig) -> list[ShardManifest]:
    p = plan(cfg)
    storage = open_storage(cfg.output)
    if cfg.dry_run:
        print_plan(cfg, p, storage)
        return []
    storage.check_writable()
    todo, done = pending_shards(cfg, p, storage)
    if not todo:
        return done
    backend = load_backend(cfg.model, **backend_options(cfg))
    try:
        for i in todo:
            done.append(generate_shard(cfg, p, i, storage, backend))
    except Terminated as e:
        e.kept = committed_note(cfg, p, storage)
        raise
    finally:
        backend.close()
    return done


def committed_note(cfg: GenerateConfig, p: ShardPlan, storage: Storage) -> str:
    """What a terminated generate kept (for the CLI's last line)."""
    name, bench, n = cfg.model_name or "", p.bench.name, p.num_shards
    done = sum(storage.exists(manifest_key(shard_key(bench, name, i, n))) for i in p.indices)
    return (
        f"{done} of {len(p.indices)} shards committed under {storage.uri(shards_prefix(bench, name))}; "
        "a shard in progress wrote nothing, a re-run generates only the missing shards"
    )
