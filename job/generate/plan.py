"""The shard plan: GenerateConfig, per-question sampling, the run config that names a run
(its hash decides resume), and `plan`, which resolves everything that needs no model."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job.backends import parse_spec
from job.backends.base import check_sampling
from job.backends.fingerprint import describe, fingerprint, output_options
from job.benches import Bench, resolve_bench, select_questions, sha256_file
from job.errors import JobError
from job.generate.sharding import resolve_shard, shard
from job.layout import shard_key
from job.names import check_model_name, default_model_name
from job.provenance import stable_hash
from job.records import Question, id_sort_key
from job.records.reasoning import compile_pattern
from job.records.run_keys import hashed_config
from job.storage import Storage

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
    reasoning_pattern: str | None = None
    """--reasoning-pattern (job.records.reasoning): None the <think> default, "none" off."""
    force: bool = False
    dry_run: bool = False
    backend_options: dict[str, Any] = field(default_factory=dict)
    """Includes chat_template_kwargs (hf/vllm) and extra_body (openai) when set."""


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
    opts = cfg.backend_options
    return {
        "bench": bench.name,
        "bench_data_sha256": data_sha,
        "model": cfg.model,
        # the weights behind the spec: an overwritten ./ckpt is another model
        "model_fingerprint": fingerprint(provider, model, opts.get("revision"), opts.get("gguf_file")),
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
        **_reasoning_config(cfg),
        **({"backend": backend} if (backend := output_options(provider, opts)) else {}),
    }


def _reasoning_config(cfg: GenerateConfig) -> dict[str, Any]:
    """Template kwargs, extra body and reasoning pattern, each only when set: they change the
    answers (and turn 2's history), while runs from before they existed keep their hash."""
    opts = cfg.backend_options
    out = {k: opts[k] for k in ("chat_template_kwargs", "extra_body") if opts.get(k)}
    if cfg.reasoning_pattern is not None:
        out["reasoning_pattern"] = cfg.reasoning_pattern
    return out


@dataclass(frozen=True)
class ShardPlan:
    """What `plan` resolved: the bench, its questions and (question, choice) items, the shards
    this process runs (indices of num_shards), the run config and its hash (resume key)."""

    bench: Bench
    data_sha: str
    questions: list[Question]
    items: list[tuple[Question, int]]
    indices: list[int]
    num_shards: int
    run_config: dict[str, Any]
    config_hash: str


SAMPLING_HINT = "set by --temperature, --category-temperature or the question's required_temperature"


def plan(cfg: GenerateConfig) -> ShardPlan:
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
    compile_pattern(cfg.reasoning_pattern)  # a bad regex fails before any model is loaded
    items = work_items(questions, cfg.num_choices)
    indices, num_shards = resolve_shard(cfg.shard_index, cfg.num_shards)
    rc = run_config(cfg, bench, data_sha, questions)
    return ShardPlan(bench, data_sha, questions, items, list(indices), num_shards, rc, config_hash(rc))


def config_hash(run_config: dict[str, Any]) -> str:
    """The run's hash: what names it in manifests (the fingerprint's display path left out)."""
    return stable_hash(hashed_config(run_config))


def print_plan(cfg: GenerateConfig, p: ShardPlan, storage: Storage) -> None:
    items = p.items
    n = p.num_shards
    print(
        f"bench {p.bench.name}: {len(p.questions)} questions x {cfg.num_choices} choices = {len(items)} conversations"
    )
    print(f"model {cfg.model} -> answers named {cfg.model_name!r}; config {p.config_hash}")
    fp = describe(p.run_config["model_fingerprint"])
    print(f"model fingerprint: {fp}; greedy dedupe {'on' if cfg.dedupe_greedy else 'off'}")
    if backend := p.run_config.get("backend"):
        print("backend options that change the answers: " + json.dumps(backend, ensure_ascii=False))
    if reasoning := _reasoning_config(cfg):
        print("reasoning and template settings: " + json.dumps(reasoning, ensure_ascii=False))
    for i in p.indices:
        part = shard(items, n, i)
        span = (
            f"{part[0][0].question_id}/{part[0][1]} .. {part[-1][0].question_id}/{part[-1][1]}"
            if part
            else "(empty)"
        )
        key = shard_key(p.bench.name, cfg.model_name or "", i, n)
        print(f"shard {i + 1}/{n} (index {i}): {len(part)} conversations [{span}] -> {storage.uri(key)}")
    temps = sorted({(q.category, temperature_of(q, cfg, p.bench)) for q in p.questions})
    print("temperatures: " + ", ".join(f"{c}={t}" for c, t in temps))


def backend_options(cfg: GenerateConfig) -> dict[str, Any]:
    """Keyword options for load_backend (the same for every executor)."""
    return dict(cfg.backend_options, system_prompt=cfg.system_prompt, chat_template=cfg.chat_template)


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


RESERVED_TEMPLATE_KWARGS = frozenset(
    {"chat_template", "tokenize", "add_generation_prompt", "conversation", "messages", "return_dict",
     "continue_final_message", "tools", "documents"}
)  # fmt: skip
"""Set by the renderer itself (vLLM refuses chat_template/tokenize from a request too)."""


def parse_json_option(option: str, text: str | None) -> dict[str, Any] | None:
    """--chat-template-kwargs / --extra-body: a JSON object, else a one-line error naming the option."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise JobError(f"{option}: not valid JSON ({e}); e.g. {option} '{{\"key\": false}}'") from None
    if not isinstance(value, dict):
        raise JobError(f"{option}: expected a JSON object {{...}}, got {type(value).__name__}")
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & value.keys()) if option == "--chat-template-kwargs" else []
    if reserved:
        raise JobError(f"{option}: {', '.join(reserved)} is set by the renderer; drop it from the object")
    return value
