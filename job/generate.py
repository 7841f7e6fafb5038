"""`job generate`: answer the shard's (question, choice) conversations in batched waves.

Turn 1 of every conversation in the shard goes to the backend as one batch;
turn 2 (each conversation with its own turn-1 answer) is the next batch. The
shard object and its manifest are written atomically at the end, so a crashed
task leaves nothing half-written and a re-run of a finished shard is a no-op.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from job.backends import load_backend, parse_spec
from job.backends.base import Backend, GenRequest, GenResult, Message, SamplingParams, check_sampling
from job.benches import Bench, resolve_bench, sha256_file
from job.errors import JobError, Terminated
from job.jsonl import dumps_lines
from job.layout import manifest_key, shard_key, shards_prefix
from job.model_fingerprint import describe, fingerprint
from job.names import check_model_name, default_model_name
from job.provenance import git_revision, host, package_version, stable_hash
from job.records import Question, QuestionId, ShardItem, ShardManifest, id_sort_key
from job.sharding import resolve_shard, shard
from job.storage import Storage, open_storage
from job.terminate import critical

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    bench: str
    model: str
    model_name: str | None = None
    num_choices: int = 1
    max_new_tokens: int = 1024
    question_ids: list[str] = field(default_factory=list)
    first_n: int | None = None
    output: str = "./runs"
    bench_data: str | None = None
    shard_index: int | None = None
    num_shards: int | None = None
    temperature: float | None = None
    """Force one temperature for every question (FastChat --force-temperature)."""
    category_temperature: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    """Choice i samples with seed `seed + i` (FastChat: torch.manual_seed(i))."""
    system_prompt: str | None = None
    chat_template: str | None = None
    dedupe_greedy: bool | None = None
    """Greedy requests with identical messages are generated once and copied. None: on where
    greedy decoding is deterministic (local models, mocks), off for API models, whose
    temperature-0 replies vary (copying would shrink the Swallow std across choices)."""
    force: bool = False
    dry_run: bool = False
    backend_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Conversation:
    question: Question
    choice: int
    params: SamplingParams
    answers: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    num_tokens: int = 0
    status: str = "ok"
    error: str | None = None

    def messages_for_turn(self, turn: int) -> list[Message]:
        msgs: list[Message] = []
        for t in range(turn):
            msgs.append({"role": "user", "content": self.question.turns[t]})
            msgs.append({"role": "assistant", "content": self.answers[t]})
        msgs.append({"role": "user", "content": self.question.turns[turn]})
        return msgs


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


def temperature_of(q: Question, cfg: GenerateConfig, bench: Bench) -> float:
    """Precedence as FastChat gen_api_answer: forced, question's own, category override, table."""
    if cfg.temperature is not None:
        return cfg.temperature
    required = getattr(q, "required_temperature", None)
    if isinstance(required, (int, float)):
        return float(required)
    return cfg.category_temperature.get(q.category, bench.behaviour.temperature(q.category))


def work_items(questions: list[Question], num_choices: int) -> list[tuple[Question, int]]:
    """Every (question, choice), sorted by question id then choice: the order shards cut."""
    ordered = sorted(questions, key=lambda q: id_sort_key(q.question_id))
    return [(q, c) for q in ordered for c in range(num_choices)]


EXACT_GREEDY = frozenset({"hf", "hf-tiny", "vllm", "mock"})
"""Providers whose greedy decoding gives one answer, so copying it to every choice is exact."""


def run_config(cfg: GenerateConfig, bench: Bench, data_sha: str, questions: list[Question]) -> dict[str, Any]:
    """Everything that changes the answers; its hash ties the shards of one run together."""
    template_sha = sha256_file(Path(cfg.chat_template)) if cfg.chat_template else None
    provider, model = parse_spec(cfg.model)
    return {
        "bench": bench.name,
        "bench_data_sha256": data_sha,
        "model": cfg.model,
        # the weights behind the spec: an overwritten ./ckpt is another model
        "model_fingerprint": fingerprint(provider, model, cfg.backend_options.get("revision")),
        "model_name": cfg.model_name,
        "num_choices": cfg.num_choices,
        "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "category_temperature": dict(sorted(cfg.category_temperature.items())),
        "temperatures": {str(q.question_id): temperature_of(q, cfg, bench) for q in questions},
        "seed": cfg.seed,
        "system_prompt": cfg.system_prompt,
        "chat_template_sha256": template_sha,
        "dtype": cfg.backend_options.get("dtype"),
        "dedupe_greedy": cfg.dedupe_greedy,
        "question_ids": [q.question_id for q in sorted(questions, key=lambda q: id_sort_key(q.question_id))],
    }


class _Progress:
    """tqdm over conversation turns with a tokens/s postfix; calm output when not a TTY."""

    def __init__(self, total: int, desc: str):
        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=total, desc=desc, unit="turn", mininterval=0.5 if tty else 10.0, file=sys.stderr
        )
        self.tokens = 0
        self.start = time.monotonic()

    def __call__(self, done: int, tokens: int) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens} tok, {rate:.0f} tok/s", refresh=False)
        self.bar.update(done)

    def close(self) -> None:
        self.bar.close()


def run_waves(
    backend: Backend, convs: list[Conversation], dedupe_greedy: bool, progress: Callable[[int, int], None]
) -> None:
    """Generate every turn of every conversation: one backend call per turn index."""
    if hasattr(backend, "generate_conversations"):
        # API backends: each conversation's turn 2 goes out when its own turn 1 returns
        from job.conversations import run_conversations

        return run_conversations(backend, convs, dedupe_greedy, progress)
    max_turns = max((len(c.question.turns) for c in convs), default=0)
    for turn in range(max_turns):
        live = [c for c in convs if c.status == "ok" and len(c.question.turns) > turn]
        if not live:
            continue
        # identical greedy requests (e.g. choices of a temperature-0 question) are generated once
        unique: dict[str, int] = {}
        slot_of: list[int] = []
        requests: list[GenRequest] = []
        for c in live:
            msgs = c.messages_for_turn(turn)
            params = c.params
            key = (
                json.dumps([msgs, params.temperature, params.max_new_tokens], ensure_ascii=False)
                if dedupe_greedy and params.greedy
                else f"#{len(requests)}-{id(c)}"
            )
            if key not in unique:
                unique[key] = len(requests)
                requests.append(
                    GenRequest(msgs, params, key=f"{c.question.question_id}/{c.choice}/t{turn + 1}")
                )
            slot_of.append(unique[key])
        t0 = time.monotonic()
        results: list[GenResult] = backend.generate(requests, progress=progress)
        if len(results) != len(requests):
            raise JobError(
                f"backend {backend.spec} returned {len(results)} results for {len(requests)} requests"
            )
        if len(live) > len(requests):
            progress(len(live) - len(requests), 0)
        tokens = sum(r.num_tokens for r in results)
        dt = time.monotonic() - t0
        log.info(
            "turn %d: %d conversations, %d requests, %d tokens in %.1fs (%.0f tok/s)",
            turn + 1,
            len(live),
            len(requests),
            tokens,
            dt,
            tokens / max(dt, 1e-9),
        )
        counted: set[int] = set()
        for c, slot in zip(live, slot_of, strict=True):
            res = results[slot]
            c.finish_reasons.append(res.finish_reason)
            if not res.ok:
                c.status, c.error = res.status, f"turn {turn + 1}: {res.error}"
                continue
            c.answers.append(res.text)
            # a copied greedy answer costs nothing extra; count tokens once per request
            if slot not in counted:
                counted.add(slot)
                c.num_tokens += res.num_tokens


def _load_manifest(storage: Storage, key: str) -> ShardManifest | None:
    if not storage.exists(key):
        return None
    try:
        return ShardManifest.model_validate_json(storage.read_bytes(key))
    except ValueError:
        raise JobError(
            f"{storage.uri(key)}: corrupt shard manifest; delete it and re-run this shard"
        ) from None


SAMPLING_HINT = "set by --temperature, --category-temperature or the question's required_temperature"


def plan(cfg: GenerateConfig) -> dict[str, Any]:
    """Resolve everything that needs no model: bench, questions, shard slices, keys."""
    provider, _ = parse_spec(cfg.model)
    if cfg.dedupe_greedy is None:
        cfg.dedupe_greedy = provider in EXACT_GREEDY
    if cfg.num_choices < 1:
        raise JobError(f"--num-choices must be >= 1, got {cfg.num_choices}")
    if cfg.max_new_tokens < 1:
        raise JobError(f"--max-new-tokens must be >= 1, got {cfg.max_new_tokens}")
    cfg.model_name = check_model_name("model name", cfg.model_name or default_model_name(cfg.model))
    bench = resolve_bench(cfg.bench, cfg.bench_data)
    questions, data_sha = bench.load_questions()
    questions = select_questions(questions, cfg.question_ids, cfg.first_n)
    for q in questions:  # a value the engine would reject fails here, before any model is loaded
        check_sampling(temperature=temperature_of(q, cfg, bench), max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                       where=f"question {q.question_id} ({q.category})", hint=SAMPLING_HINT)  # fmt: skip
    items = work_items(questions, cfg.num_choices)
    indices, num_shards = resolve_shard(cfg.shard_index, cfg.num_shards)
    rc = run_config(cfg, bench, data_sha, questions)
    return {
        "bench": bench,
        "data_sha": data_sha,
        "questions": questions,
        "items": items,
        "indices": indices,
        "num_shards": num_shards,
        "run_config": rc,
        "config_hash": stable_hash(rc),
    }


def print_plan(cfg: GenerateConfig, p: dict[str, Any], storage: Storage) -> None:
    items = p["items"]
    n = p["num_shards"]
    print(
        f"bench {p['bench'].name}: {len(p['questions'])} questions x {cfg.num_choices} choices = {len(items)} conversations"
    )
    print(f"model {cfg.model} -> answers named {cfg.model_name!r}; config {p['config_hash']}")
    fp = describe(p["run_config"]["model_fingerprint"])
    print(f"model fingerprint: {fp}; greedy dedupe {'on' if cfg.dedupe_greedy else 'off'}")
    for i in p["indices"]:
        part = shard(items, n, i)
        span = (
            f"{part[0][0].question_id}/{part[0][1]} .. {part[-1][0].question_id}/{part[-1][1]}"
            if part
            else "(empty)"
        )
        key = shard_key(p["bench"].name, cfg.model_name or "", i, n)
        print(f"shard {i + 1}/{n} (index {i}): {len(part)} conversations [{span}] -> {storage.uri(key)}")
    temps = sorted({(q.category, temperature_of(q, cfg, p["bench"])) for q in p["questions"]})
    print("temperatures: " + ", ".join(f"{c}={t}" for c, t in temps))


def generate_shard(
    cfg: GenerateConfig, p: dict[str, Any], index: int, storage: Storage, backend: Backend
) -> ShardManifest:
    """Generate one shard and commit it (answers first, manifest last)."""
    n = p["num_shards"]
    bench: Bench = p["bench"]
    assert cfg.model_name
    key = shard_key(bench.name, cfg.model_name, index, n)
    part = shard(p["items"], n, index)
    started = time.time()
    convs = [
        Conversation(q, c, SamplingParams(temperature_of(q, cfg, bench), cfg.max_new_tokens, cfg.seed + c))
        for q, c in part
    ]
    log.info("shard %d/%d: %d conversations -> %s", index + 1, n, len(convs), storage.uri(key))
    bar = _Progress(sum(len(c.question.turns) for c in convs), f"shard {index + 1}/{n}")
    try:
        run_waves(backend, convs, bool(cfg.dedupe_greedy), bar)
    finally:
        bar.close()
    fatal = getattr(backend, "fatal_error", None)
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
            turns=c.answers,
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
        bench_data_sha256=p["data_sha"],
        model=cfg.model,
        model_name=cfg.model_name,
        config_hash=p["config_hash"],
        sampling=p["run_config"],
        shard_index=index,
        num_shards=n,
        question_ids=[
            q.question_id for q in sorted(p["questions"], key=lambda q: id_sort_key(q.question_id))
        ],
        num_choices=cfg.num_choices,
        num_items=len(items),
        num_failed=sum(1 for i in items if i.status != "ok"),
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
    describes; it deletes only its own copy. --force owns the shard and overwrites.
    """
    data = dumps_lines(i.model_dump(mode="json") for i in items)
    data_key = key
    if force:
        storage.write_bytes(key, data)
    elif not storage.write_bytes(key, data, if_absent=True):
        data_key = f"{key.removesuffix('.jsonl')}.{uuid.uuid4().hex[:12]}.jsonl"
        storage.write_bytes(data_key, data)
    manifest.data_file = data_key.rsplit("/", 1)[-1]
    body = manifest.model_dump_json(indent=2).encode()
    if storage.write_bytes(manifest_key(key), body, if_absent=not force):
        return True
    storage.delete(data_key)
    return False


def pending_shards(
    cfg: GenerateConfig, p: dict[str, Any], storage: Storage
) -> tuple[list[int], list[ShardManifest]]:
    """(shard indices still to generate, manifests of shards already complete).

    Shared by every executor (local loop, Ray actors) so they skip exactly the same shards.
    """
    assert cfg.model_name
    todo: list[int] = []
    done: list[ShardManifest] = []
    for i in p["indices"]:
        mkey = manifest_key(shard_key(p["bench"].name, cfg.model_name, i, p["num_shards"]))
        existing = _load_manifest(storage, mkey)
        if existing and not cfg.force and _model_changed(existing, p["run_config"]):
            log.warning(
                "shard %d/%d: regenerating, the model changed since it was generated (%s, now %s)",
                i + 1,
                p["num_shards"],
                describe(existing.sampling.get("model_fingerprint")),
                describe(p["run_config"]["model_fingerprint"]),
            )
            storage.delete(mkey)
            todo.append(i)
        elif existing and not cfg.force:
            if existing.config_hash != p["config_hash"]:
                raise JobError(
                    f"{storage.uri(mkey)} holds a shard of a different run (config {existing.config_hash}, "
                    f"now {p['config_hash']}); use another --model-name or --output, or --force to replace it"
                )
            log.info(
                "shard %d/%d already complete (%d items); nothing to do",
                i + 1,
                p["num_shards"],
                existing.num_items,
            )
            done.append(existing)
        else:
            if existing and cfg.force:
                storage.delete(mkey)
            todo.append(i)
    return todo, done


def _model_changed(existing: ShardManifest, run_config: dict[str, Any]) -> bool:
    """Only the model's fingerprint differs: the same run on new weights (regenerate, no --force)."""
    key = "model_fingerprint"
    old, new = dict(existing.sampling), dict(run_config)
    if key not in old or old.pop(key) == new.pop(key):
        return False
    return stable_hash(old) == stable_hash(new)


def backend_options(cfg: GenerateConfig) -> dict[str, Any]:
    """Keyword options for load_backend (the same for every executor)."""
    return dict(cfg.backend_options, system_prompt=cfg.system_prompt, chat_template=cfg.chat_template)


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


def committed_note(cfg: GenerateConfig, p: dict[str, Any], storage: Storage) -> str:
    """What a terminated generate kept (for the CLI's last line)."""
    name, bench, n = cfg.model_name or "", p["bench"].name, p["num_shards"]
    done = sum(storage.exists(manifest_key(shard_key(bench, name, i, n))) for i in p["indices"])
    return (
        f"{done} of {len(p['indices'])} shards committed under {storage.uri(shards_prefix(bench, name))}; "
        "a shard in progress wrote nothing, a re-run generates only the missing shards"
    )


def parse_category_temperatures(pairs: tuple[str, ...] | list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs:
        cat, sep, val = pair.partition("=")
        try:
            if not sep or not cat:
                raise ValueError
            out[cat] = float(val)
        except ValueError:
            raise JobError(
                f"--category-temperature {pair!r}: expected CATEGORY=FLOAT, e.g. writing=0.5"
            ) from None
    return out


__all__ = ["GenerateConfig", "run", "plan", "pending_shards", "backend_options", "QuestionId"]
