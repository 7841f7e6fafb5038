"""`job report`: read judgment files (ours or FastChat's, unchanged), aggregate with
job.report, write scores.csv / pairwise.csv / report.json / report.md, print a
show_result-like table."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from job.benches import Bench, resolve_bench, sha256_bytes
from job.errors import JobError
from job.layout import judgment_dir, reports_dir
from job.names import check_model_name, check_name
from job.provenance import git_revision, package_version
from job.records.judgments import JudgmentRow, PairRow
from job.report import aggregate as agg
from job.report import answer_stats, bias
from job.report.bench import DEFAULT_BENCH, infer_bench
from job.report.loading import Loaded, judge_usage, read_files, read_stored
from job.report.markdown import render_markdown
from job.storage import LocalStorage, Storage, open_storage
from job.storage.answers import load_answers

log = logging.getLogger(__name__)


@dataclass
class ReportConfig:
    bench: str | None = None
    """None: the bench the --judgments files' question ids identify (job.report.bench)"""
    mode: str = "single"
    baseline_model: str = "gpt-3.5-turbo"
    model_list: list[str] = field(default_factory=list)
    judgments: list[str] = field(default_factory=list)
    judge_name: str | None = None
    output: str = "./runs"
    output_dir: str | None = None
    answers_dir: str | None = None
    bench_data: str | None = None
    ja_chars: bool | None = None
    """None: on for Japanese benches"""
    seed: int = agg.BOOTSTRAP_SEED
    sample_agg: str = "mean"
    """how an item's judge samples (--judge-samples K) make its score (pairwise: each game's verdict): mean | median"""
    step: int | None = None
    """Checkpoint step of the model(s), recorded in provenance for `job leaderboard`"""


def bench_of(cfg: ReportConfig) -> str:
    """The bench given or inferred (run() infers it first), else FastChat's default."""
    return cfg.bench or DEFAULT_BENCH


def load_judgments(cfg: ReportConfig, storage: Storage) -> Loaded:
    pairwise = cfg.mode != "single"
    if cfg.judgments:
        return read_files(cfg.judgments, pairwise)
    return read_stored(storage, judgment_dir(bench_of(cfg)), cfg.judge_name, pairwise)


def provenance(
    cfg: ReportConfig, bench: Bench, data_sha: str, loaded: Loaded, judges: list[str], n_runs: dict[str, int]
) -> dict[str, Any]:
    man = loaded.manifests[0] if loaded.manifests else {}
    prov: dict[str, Any] = {
        "bench": bench.name, "mode": cfg.mode, "judges": judges,
        "judge_model": man.get("judge_model"), "judgment_files": loaded.files,
        "bench_data_sha256": man.get("bench_data_sha256", data_sha),
        "judge_prompts_sha256": man.get("judge_prompts_sha256"), "reference": man.get("reference"),
        "reference_sha256": man.get("reference_sha256"), "num_choices": n_runs,
        "source": "judge manifest" if man else "no judge manifest (FastChat file?): prompt/reference hashes are the bench defaults",
        "package_version": package_version(), "git_revision": git_revision(), "created_at": time.time(),
        "bootstrap": {"samples": agg.BOOTSTRAP_SAMPLES, "seed": cfg.seed, "unit": "question"},
        "step": cfg.step,
    }  # fmt: skip
    if not man:
        if bench.judge_prompts_path.is_file():
            prov["judge_prompts_sha256"] = sha256_bytes(bench.judge_prompts_path.read_bytes())
        if bench.default_reference and bench.reference_path(bench.default_reference).is_file():
            prov["reference"] = bench.default_reference
            prov["reference_sha256"] = sha256_bytes(
                bench.reference_path(bench.default_reference).read_bytes()
            )
    return prov


def _clean(obj: Any) -> Any:
    """NaN -> null for JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def print_fastchat(cfg: ReportConfig, res: dict[str, Any], inputs: list[str]) -> None:
    print(f"Mode: {cfg.mode}")
    print(f"Input file: {', '.join(inputs)}")
    if cfg.mode != "single":
        print(res["pairwise_table"].set_index("model").to_string())
        return
    for title, key in (("First turn", "turn1"), ("Second turn", "turn2"), ("Average", "average")):
        print(f"\n########## {title} ##########")
        print(res["fastchat"][key].to_frame("score").to_string())


def _single(
    cfg: ReportConfig, loaded: Loaded, categories: dict[str, str], res: dict[str, Any], out: dict[str, bytes]
) -> list[str]:
    """Single mode into res/out; returns the models reported. Each item is scored by its
    judge samples' mean (or median); the judge's spread is taken before that collapse."""
    sampled = agg.single_frame(loaded.single(), categories)
    df = agg.collapse_samples(sampled, cfg.sample_agg)
    res["fastchat"] = agg.fastchat_single(df, cfg.model_list or None)
    table = agg.score_table(df, cfg.model_list or None, seed=cfg.seed)
    models = list(dict.fromkeys(table["model"]))
    res["n_runs"] = {m: int(df[(df["model"] == m)]["choice"].nunique()) for m in models}
    runs = {m: {t: agg.run_means(df, m, t) for t in ("1", "2", "all")} for m in models}
    out["scores.csv"] = table[agg.SINGLE_COLUMNS].to_csv(index=False).encode()
    res.update(scores=table, runs=runs, per_question=agg.per_question(df, models), frame=df)
    if (k := agg.judge_samples(sampled)) > 1:
        res["judge_spread"] = {**agg.judge_spread(sampled, models), "sample_agg": cfg.sample_agg}
        res["sample_scoring"] = f"{cfg.sample_agg} of {k} judge samples"
    return models


def _pairwise(cfg: ReportConfig, loaded: Loaded, res: dict[str, Any], out: dict[str, bytes]) -> list[str]:
    """Pairwise mode into res/out: an item's judge samples make one pair of games first, so
    the table and the bias diagnostics count games, not samples."""
    rows = loaded.pairs()
    games = agg.collapse_pair_samples(rows, cfg.sample_agg)
    pdf = agg.pair_frame(games)
    base = cfg.baseline_model if cfg.mode == "pairwise-baseline" else None
    ptable, n_err = agg.fastchat_pairwise(pdf, cfg.mode, base, cfg.model_list or None)
    models = list(ptable["model"])
    res["n_runs"] = {
        m: int(pdf[(pdf["model_1"] == m) | (pdf["model_2"] == m)]["choice"].nunique()) for m in models
    }
    out["pairwise.csv"] = ptable.to_csv(index=False).encode()
    res.update(pairwise_table=ptable, n_error_rows=n_err, games=games)
    if (k := len({r.sample_index for r in rows})) > 1:
        res["sample_scoring"] = f"{cfg.sample_agg} of {k} judge samples"
    return models


def answer_models(models: list[str], records: list[JudgmentRow]) -> list[str]:
    """The reported models and both sides of every pair (a pairwise table drops its baseline)."""
    pairs = (m for r in records if isinstance(r, PairRow) for m in (r.model_1, r.model_2))
    return list(dict.fromkeys([*models, *pairs]))


def run(cfg: ReportConfig) -> dict[str, Any]:
    if cfg.mode not in ("single", "pairwise-baseline", "pairwise-all"):
        raise JobError(f"--mode must be single, pairwise-baseline or pairwise-all, got {cfg.mode!r}")
    # names given on the command line are checked like everywhere else, even where only compared
    if cfg.judge_name:
        check_name("judge name (--judge-name)", cfg.judge_name)
    for m in cfg.model_list:
        check_model_name("model name (--model-list)", m)
    if cfg.mode == "pairwise-baseline":
        check_model_name("baseline model (--baseline-model)", cfg.baseline_model)
    storage = open_storage(cfg.output)
    loaded = load_judgments(cfg, storage) if cfg.judgments else None  # files first: they may name the bench
    if cfg.bench is None:
        where = ", ".join(cfg.judgments)
        cfg.bench = infer_bench(loaded.records, loaded.manifests, where, cfg.bench_data) if loaded else None
    bench = resolve_bench(bench_of(cfg), cfg.bench_data)
    questions, data_sha = bench.load_questions()
    categories = {str(q.question_id): q.category for q in questions}
    loaded = loaded or load_judgments(cfg, storage)
    if not loaded.records:  # an empty file (FastChat's, or a judge killed before its first write)
        files = ", ".join(f["path"] for f in loaded.files)
        raise JobError(f"{files}: no judgments in file; run `job judge` first")
    judges = sorted({r.judge_name or "?" for r in loaded.records})
    res: dict[str, Any] = {}
    out: dict[str, bytes] = {}
    if cfg.mode == "single":
        models = _single(cfg, loaded, categories, res, out)
    else:
        models = _pairwise(cfg, loaded, res, out)
    want_ja = cfg.ja_chars if cfg.ja_chars is not None else bench.name.startswith("japanese")
    # both sides of every pair: the bias diagnostics need the baseline's answers too
    everyone = answer_models(models, loaded.records)
    answers = load_answers(cfg.output, bench_of(cfg), cfg.answers_dir, everyone)[0]
    lengths = bias.answer_lengths(answers)
    answers = {m: a for m, a in answers.items() if m in models}
    if cfg.mode == "single":
        res["bias"] = {"single": bias.single_bias(res.pop("frame"), lengths, models)}
    else:
        res["bias"] = {"pairwise": bias.pair_bias(res.pop("games"), lengths)}
    prov = provenance(cfg, bench, data_sha, loaded, judges, res.pop("n_runs"))
    prov["sample_scoring"] = res.pop("sample_scoring", None)  # None: one judgment per item (FastChat)
    doc = {
        "provenance": prov,
        "fastchat": {k: v.to_dict() for k, v in res.get("fastchat", {}).items()},
        "scores": res["scores"].to_dict(orient="records") if "scores" in res else [],
        "runs": res.get("runs", {}),
        "judge_spread": res.get("judge_spread", {}),
        "per_question": res.get("per_question", {}),
        "pairwise": res["pairwise_table"].to_dict(orient="records") if "pairwise_table" in res else [],
        "japanese_char_share": answer_stats.japanese_share(answers, categories) if want_ja else {},
        "truncation": answer_stats.truncation_shares(answers, models),
        "reasoning": answer_stats.reasoning_stats(answers, models),
        "judge_bias": res["bias"],
        "judge_usage": judge_usage(loaded.manifests),
    }
    doc = _clean(doc)
    out["report.json"] = json.dumps(doc, indent=2, ensure_ascii=False).encode()
    out["report.md"] = render_markdown(doc).encode()
    dest: Storage = LocalStorage(cfg.output_dir) if cfg.output_dir else storage
    prefix = "" if cfg.output_dir else reports_dir(bench_of(cfg))
    for name, data in out.items():
        dest.write_bytes(prefix + name, data)
    print_fastchat(cfg, res, [f["path"] for f in loaded.files])
    print(render_markdown(doc, stdout=True))
    print(f"\nwrote {', '.join(out)} to {dest.uri(prefix) if prefix else dest.root}")
    return doc
