"""Judge planning: the run's config, answers and references indexed per question, the
matches still to send (stored rows whose inputs are unchanged are reused) and --dry-run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from job.backends import parse_spec
from job.backends.base import SamplingParams, check_sampling
from job.backends.fingerprint import endpoint_of, fingerprint, judge_key
from job.benches import Bench, resolve_bench, select_questions, sha256_bytes
from job.errors import JobError
from job.judge import (
    JUDGE_MAX_TOKENS,
    JUDGE_PARAMS,
    JUDGE_TEMPERATURE,
    MODES,
    GameKey,
    GameResult,
    Match,
    build_judge_prompt,
    build_matches,
    game_key,
    inputs_sha256,
    needs_ref,
    stored_games,
)
from job.judge.prompts import load_prompt_set, select
from job.judge.store import JudgmentStore
from job.layout import judgment_dir
from job.names import check_model_name, check_name, default_model_name
from job.records import Answer, Question, QuestionId, parse_records
from job.records.judgments import read_judgment
from job.records.reasoning import judged_view
from job.records.run_keys import spec_identity
from job.storage.answers import load_answers

log = logging.getLogger(__name__)


@dataclass
class JudgeConfig:
    bench: str
    judge_model: str
    judge_name: str | None = None
    mode: str = "single"
    baseline_model: str = "gpt-3.5-turbo"
    model_list: list[str] = field(default_factory=list)
    reference: str | None = None
    judge_prompts: str | None = None
    question_ids: list[str] = field(default_factory=list)
    first_n: int | None = None
    output: str = "./runs"
    answers_dir: str | None = None
    bench_data: str | None = None
    allow_missing: bool = False
    dry_run: bool = False
    dump: str | None = None
    batch_size: int = 64
    backend_options: dict[str, Any] = field(default_factory=dict)
    keep_reasoning: bool = False
    """--keep-reasoning: judge each answer's raw text (raw_turns) instead of its final answer"""
    judge_samples: int = 1
    """K judgments per game (rows with a `sample` index when K > 1)"""
    judge_temperature: float = JUDGE_TEMPERATURE
    parse_retries: int = 0
    """asks again up to N times for a reply with no rating/verdict (0: FastChat, none)"""
    price_per_mtok: tuple[float, float] | None = None
    """USD per million (prompt, completion) tokens, for the cost estimate and summary"""


def judge_name_of(cfg: JudgeConfig) -> str:
    return check_name("judge name (set --judge-name)", cfg.judge_name or default_model_name(cfg.judge_model))


def judgment_key(bench: str, judge: str, mode: str) -> str:
    return f"{judgment_dir(bench)}{judge}_{'single' if mode == 'single' else 'pair'}.jsonl"


def index_answers(
    questions: list[Question],
    models: list[str],
    loaded: dict[str, list[Answer]],
    where: str,
    allow_missing: bool,
) -> tuple[dict[str, dict[QuestionId, Answer]], dict[str, list[str]]]:
    """Answers keyed by question (last line wins, as FastChat); missing ones listed."""
    unknown = [m for m in models if m not in loaded]
    if unknown:
        have = ", ".join(sorted(loaded)) or "none"
        raise JobError(
            f"no answer file for model(s) {', '.join(unknown)} in {where} (have: {have}); run `job reduce`"
        )
    answers: dict[str, dict[QuestionId, Answer]] = {}
    missing: dict[str, list[str]] = {}
    for m in models:
        by_id = {str(a.question_id): a for a in loaded[m]}
        answers[m] = {
            q.question_id: by_id[str(q.question_id)] for q in questions if str(q.question_id) in by_id
        }
        lost = [str(q.question_id) for q in questions if str(q.question_id) not in by_id]
        if lost:
            missing[m] = lost
    if missing and not allow_missing:
        detail = "; ".join(
            f"{m}: {', '.join(ids[:20])}{' …' if len(ids) > 20 else ''}" for m, ids in missing.items()
        )
        raise JobError(f"answers missing in {where} for {detail}; generate them or pass --allow-missing")
    return answers, missing


def load_references(
    bench: Bench, name: str, questions: list[Question]
) -> tuple[dict[QuestionId, Answer], str | None]:
    need = [q for q in questions if needs_ref(q, bench.behaviour)]
    if not need:
        return {}, None
    path = bench.reference_path(name)
    data = bench.read_verified(path, f"reference_answer/{name}")
    by_id = {str(a.question_id): a for a in parse_records(data, Answer, str(path))}
    lost = [str(q.question_id) for q in need if str(q.question_id) not in by_id]
    if lost:
        raise JobError(
            f"{path}: no reference answer for question(s) {', '.join(lost)} (categories need one); "
            "pick another set with --reference NAME"
        )
    # a judged turn 2 fills in the reference's turn 2 (FastChat's ref_answer_2)
    short = [
        str(q.question_id)
        for q in need
        if len(by_id[str(q.question_id)].choices[0].turns) < _last_judged_turn(q, bench)
    ]
    if short:
        raise JobError(
            f"{path}: the reference answer of question(s) {', '.join(short)} has fewer turns than "
            "the question's judged turns; give it one per turn, or pick another set with --reference NAME"
        )
    return {q.question_id: by_id[str(q.question_id)] for q in need}, sha256_bytes(data)


def _last_judged_turn(q: Question, bench: Bench) -> int:
    return max((t for t in bench.behaviour.judged_turns if t <= len(q.turns)), default=1)


@dataclass
class Plan:
    matches: list[Match]
    requests: list[tuple[Match, int, str]]
    """(match, game, user prompt) of every game still to be asked"""
    cached: dict[GameKey, GameResult]
    """stored final games whose inputs are this run's (content-addressed reuse)"""
    provenance: dict[str, Any]
    missing: dict[str, list[str]]
    params: SamplingParams = JUDGE_PARAMS
    """what every request of this run sends"""
    inputs: dict[Match, str] = field(default_factory=dict)
    """inputs_sha256 of every match"""
    stored: list[dict[str, Any]] = field(default_factory=list)
    stale: int = 0
    """stored final games of this plan's keys that judged other inputs"""
    answer_ids: dict[str, str] = field(default_factory=dict)
    """answers_sha256 of every model's judged answers (job.judge.manifest)"""


def answers_sha256(answers: list[Answer]) -> str:
    """Identity of a model's judged answers (the whole file, whatever the question selection)."""
    return sha256_bytes(b"".join(a.model_dump_json().encode() + b"\n" for a in answers))


def judge_fingerprint(spec: str, gguf_file: str | None = None) -> dict[str, Any] | None:
    """The weights behind a local judge (`hf/DIR`, `vllm/DIR`): a checkpoint saved over the
    same directory is another judge. None for the rest: API judges, and hub ids, whose cached
    revision is unknown until the first run downloads them (it would re-judge everything
    once the cache knows it)."""
    fp = fingerprint(*parse_spec(spec), gguf_file=gguf_file)
    return fp if fp and fp.get("kind") == "local" else None


def make_plan(cfg: JudgeConfig, store: JudgmentStore | None, judge: str) -> Plan:
    if cfg.mode not in MODES:
        raise JobError(f"--mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    params = judge_params(cfg)
    bench = resolve_bench(cfg.bench, cfg.bench_data)
    questions, data_sha = bench.load_questions()
    questions = select_questions(questions, cfg.question_ids, cfg.first_n)
    loaded, where = load_answers(cfg.output, cfg.bench, cfg.answers_dir)
    loaded = {m: [judged_view(a, cfg.keep_reasoning) for a in v] for m, v in loaded.items()}
    answer_ids = {m: answers_sha256(v) for m, v in loaded.items()}
    models = [check_model_name("model name", m) for m in cfg.model_list] or sorted(loaded)
    if not models:
        raise JobError(
            f"no answer files in {where}; run `job generate` and `job reduce` first, or pass --answers-dir"
        )
    pairwise = cfg.mode != "single"
    if cfg.mode == "pairwise-baseline":
        base = check_model_name("baseline model (--baseline-model)", cfg.baseline_model)
        models = [*models, base] if base not in models else models
    answers, missing = index_answers(questions, models, loaded, where, cfg.allow_missing)
    if cfg.mode == "pairwise-baseline":
        models = [m for m in models if m != cfg.baseline_model]
    bb = bench.behaviour  # judged turns, prompt names, rating format: the bench's
    kinds = {(t, needs_ref(q, bb)) for q in questions for t in bb.judged_turns if t == 1 or len(q.turns) == 2}
    pset = load_prompt_set(cfg.judge_prompts or bench.judge_prompts_path)
    prompts = select(pset, "pairwise" if pairwise else "single", kinds, bb)
    ref_name = cfg.reference or bench.default_reference
    if cfg.reference:  # checked even when no question in the selection needs a reference
        check_name("reference set (--reference)", cfg.reference)
    refs: dict[QuestionId, Answer] = {}
    ref_sha = None
    if any(needs_ref(q, bb) for q in questions):
        if not ref_name:
            raise JobError(f"bench {bench.name!r} has no default reference set; pass --reference NAME")
        refs, ref_sha = load_references(bench, ref_name, questions)
    matches = build_matches(questions, models, answers, prompts, refs, cfg.mode, cfg.baseline_model, bb)
    if cfg.judge_samples > 1:  # each sample its own row, resumed on its own
        matches = [replace(m, sample=s) for m in matches for s in range(cfg.judge_samples)]
    judge_fp = judge_fingerprint(cfg.judge_model, cfg.backend_options.get("gguf_file"))
    # weights, loading options, endpoint (job.backends.fingerprint.judge_key)
    key = judge_key(parse_spec(cfg.judge_model)[0], judge_fp, cfg.backend_options)
    spec = spec_identity(cfg.judge_model, judge_fp)  # a copied checkpoint is the same judge
    inputs = {m: inputs_sha256(spec, params, m, key) for m in matches}

    # stored records are checked before resume keys are built from them (file:line on a bad one)
    def check(rec: dict[str, Any], where: str) -> None:
        read_judgment(rec, where, pairwise, resume=True)  # typed: file:line and the field

    stored = store.read(repair=not cfg.dry_run, check=check) if store else []
    current = {game_key(judge, m, g): h for m, h in inputs.items() for g in m.games}
    # a stored game is reused only if it judged exactly these inputs (no hash: older or FastChat's row)
    final = [(k, r, rec.get("inputs_sha256")) for rec in stored for k, r in stored_games(rec) if k in current]
    cached = {k: r for k, r, h in final if h == current[k]}
    stale = len({k for k, _, h in final if h != current[k]} - cached.keys())
    requests = [
        (m, g, build_judge_prompt(m, g))
        for m in matches
        if m.failed is None
        for g in m.games
        if game_key(judge, m, g) not in cached
    ]
    prov = {
        "bench": bench.name, "bench_data_sha256": data_sha, "judge": judge, "judge_model": cfg.judge_model,
        "mode": cfg.mode, "baseline_model": cfg.baseline_model if cfg.mode == "pairwise-baseline" else None,
        "models": models, "judge_prompts": pset.path, "judge_prompts_sha256": pset.sha256,
        "reference": ref_name if refs else None, "reference_sha256": ref_sha,
        "num_questions": len(questions), "temperature": params.temperature, "max_tokens": params.max_new_tokens,
        "bench_behaviour": bb.as_dict(), "judge_fingerprint": judge_fp, "judge_samples": cfg.judge_samples,
        "parse_retries": cfg.parse_retries,
        # which text was judged (raw or final answer); None unless on, as in older manifests
        "keep_reasoning": True if cfg.keep_reasoning else None,
        "judge_endpoint": endpoint_of(parse_spec(cfg.judge_model)[0], cfg.backend_options),
    }  # fmt: skip
    return Plan(matches, requests, cached, prov, missing, params, inputs, stored, stale, answer_ids)


def judge_params(cfg: JudgeConfig) -> SamplingParams:
    """FastChat's judge sampling at --judge-temperature (0 by default); the run's counts checked."""
    if cfg.judge_samples < 1:
        raise JobError(f"--judge-samples must be >= 1, got {cfg.judge_samples}")
    if cfg.parse_retries < 0:
        raise JobError(f"--parse-retries must be >= 0, got {cfg.parse_retries}")
    check_sampling(
        temperature=cfg.judge_temperature, max_new_tokens=JUDGE_MAX_TOKENS, where="--judge-temperature"
    )
    return SamplingParams(temperature=cfg.judge_temperature, max_new_tokens=JUDGE_MAX_TOKENS)
