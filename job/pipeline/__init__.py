"""`job run`: generate -> reduce -> judge -> report (-> publish) -> gate, on one machine,
by calling each stage's own run() with its own config. Every stage stays resumable, so a
re-run after a crash only does the missing work.

The gate compares the new report with a baseline report.json (or a `latest` pointer) and
returns the exit code (job.gate: 0 pass, 3 regression); bad input raises JobError (exit 2).

Owns: one model's run (here) and several models' one after another with their done markers
(models.py). Imports every stage and the gate; imported only by commands (import-linter).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from job import gate as g
from job.backends import parse_spec
from job.backends.endpoints import Generator, judge_endpoint
from job.errors import JobError
from job.generate import GenerateConfig
from job.judge.plan import JudgeConfig, judge_name_of
from job.names import check_model_name, check_name, default_model_name
from job.report.leaderboard import DEFAULT_STEP_PATTERN, compile_step_pattern, step_of

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    generate: GenerateConfig
    judge: JudgeConfig
    """The judge's settings (model, name, reference, sampling; backend_options as given, the
    endpoint resolved by judge_options); bench, model, questions and output come from generate."""
    allow_failed: bool = False
    report_dir: str | None = None
    """Where report files go (default <output>/<bench>/reports/)."""
    publish: str | None = None
    baseline: str | None = None
    baseline_name: str | None = None
    max_drop: float | None = None
    junit_xml: str | None = None
    allow_mismatch: bool = False
    """Gate even against a baseline made with another bench, judge, reference set or prompt file."""
    models: list[tuple[str, str | None]] = field(default_factory=list)
    """(spec, name or None) of each model to run one after another; empty: generate.model alone."""
    step: int | None = None
    """Checkpoint step for report provenance; None: from step_pattern on the model name."""
    step_pattern: str = DEFAULT_STEP_PATTERN
    sample_agg: str = "mean"
    """how an item's judge samples make its score (job.report.runner.ReportConfig.sample_agg)"""
    tracking: Any = None
    """job.report.tracking.TrackingConfig from --log-to; None: no experiment tracking"""


@dataclass
class RunResult:
    exit_code: int
    doc: dict[str, Any] | None = None
    gate: list[g.GateResult] = field(default_factory=list)
    summary: str = ""
    report: str | None = None
    """Where this run's report.json can be read back (the published copy when published)."""


def model_name(cfg: RunConfig) -> str:
    return check_model_name(
        "model name (set --model-name)", cfg.generate.model_name or default_model_name(cfg.generate.model)
    )


def judge_options(cfg: RunConfig) -> dict[str, Any]:
    """The judge's backend options, its endpoint and key resolved apart from the generator's."""
    opts = dict(cfg.judge.backend_options)
    url, key_env = opts.pop("base_url", None), opts.pop("api_key_env", None)
    api_generator = parse_spec(cfg.generate.model)[0] == "openai"
    generator = Generator(cfg.generate.backend_options.get("base_url")) if api_generator else None
    return {**opts, **judge_endpoint(cfg.judge.judge_model, url, key_env, generator)}


def check(cfg: RunConfig) -> dict[str, Any] | None:
    """Everything that can be wrong with the input, before a model is loaded; returns the baseline."""
    judge_options(cfg)
    if cfg.max_drop is not None and not cfg.baseline:
        raise JobError(
            "--max-drop needs --baseline REPORT (a report.json or a latest/<bench>/<model>.json pointer)"
        )
    if cfg.baseline and cfg.max_drop is None:
        raise JobError(
            "--baseline needs --max-drop POINTS (the largest allowed drop of the average, 1-10 scale)"
        )
    if cfg.junit_xml and not Path(cfg.junit_xml).resolve().parent.is_dir():
        raise JobError(f"--junit-xml {cfg.junit_xml}: directory does not exist")
    # names that become paths later are checked now, so --dry-run catches them too
    judge = judge_name_of(cfg.judge)
    if cfg.judge.reference:
        check_name("reference set (--reference)", cfg.judge.reference)
    if not cfg.baseline:
        return None
    from job.report.publish import load_report

    base = load_report(cfg.baseline)
    g.pair_models(base, {"scores": [{"model": model_name(cfg)}]}, cfg.baseline_name, None)
    # what is known before any work (the rest is compared at the gate, from the new report)
    early = {
        "provenance": {"bench": cfg.generate.bench, "judges": [judge], "judge_model": cfg.judge.judge_model}
    }
    g.check_comparable(base, early, cfg.allow_mismatch)
    return base


def step_for(cfg: RunConfig, name: str) -> int | None:
    return cfg.step if cfg.step is not None else step_of(name, compile_step_pattern(cfg.step_pattern))[0]


def run(cfg: RunConfig) -> RunResult:
    """One model (generate.model, or the only entry of cfg.models), or each of several."""
    if len(cfg.models) > 1:
        from job.pipeline.models import run_models

        return run_models(cfg)
    if cfg.models:
        spec, name = cfg.models[0]
        cfg = replace(
            cfg, generate=replace(cfg.generate, model=spec, model_name=name or cfg.generate.model_name)
        )
    return run_model(cfg)


def refresh_leaderboard(cfg: RunConfig) -> None:
    """Re-index the publish root; a failure here never loses the run's own report."""
    if not cfg.publish or cfg.generate.dry_run:
        return
    from job.report.leaderboard import refresh

    refresh(cfg.publish, cfg.step_pattern)


def run_model(cfg: RunConfig, leaderboard: bool = True) -> RunResult:
    """generate -> ... -> gate for one model; `leaderboard`: refresh the publish root's after it."""
    from job import generate, reduce
    from job.judge import runner as judge_run
    from job.report import runner as report_run
    from job.report.publish import publish, write_html

    gcfg = replace(cfg.generate, model_name=model_name(cfg))
    name = str(gcfg.model_name)
    baseline = check(cfg)
    if gcfg.dry_run:
        generate.run(gcfg)
        print(f"then: reduce {name}; judge with {cfg.judge.judge_model}; report" + (f"; publish to {cfg.publish}" if cfg.publish else "")
              + (f"; gate against {cfg.baseline} (max drop {cfg.max_drop:g})" if baseline else ""))  # fmt: skip
        return RunResult(g.EXIT_OK)
    log.info("[1/4] generate %s on %s -> %s", gcfg.model, gcfg.bench, gcfg.output)
    generate.run(gcfg)
    log.info("[2/4] reduce %s", name)
    reduce.run(
        reduce.ReduceConfig(
            bench=gcfg.bench, model_names=[name], output=gcfg.output, allow_failed=cfg.allow_failed
        )
    )
    log.info("[3/4] judge %s with %s", name, cfg.judge.judge_model)
    jcfg = replace(
        cfg.judge, bench=gcfg.bench, model_list=[name], question_ids=list(gcfg.question_ids),
        first_n=gcfg.first_n, output=gcfg.output, bench_data=gcfg.bench_data,
        backend_options=judge_options(cfg),
    )  # fmt: skip
    judge_run.run(jcfg)
    log.info("[4/4] report")
    rcfg = report_run.ReportConfig(
        bench=gcfg.bench, model_list=[name], judge_name=judge_name_of(jcfg), output=gcfg.output,
        output_dir=cfg.report_dir, bench_data=gcfg.bench_data, step=step_for(cfg, name),
        sample_agg=cfg.sample_agg,
    )  # fmt: skip
    doc = report_run.run(rcfg)
    storage, prefix, names = write_html(rcfg, doc)
    where = storage.uri(prefix + "report.json")
    if cfg.publish:
        where = publish(cfg.publish, storage, prefix, names, doc) + "report.json"
    if cfg.tracking:  # after the report files: a tracking failure never loses them
        from job.report.tracking import track

        track(cfg.tracking, doc, rcfg, model_spec=gcfg.model)
    if leaderboard:
        refresh_leaderboard(cfg)  # before finish(): its summary stays the last stdout line
    return replace(finish(cfg, doc, baseline), report=where)


def finish(cfg: RunConfig, doc: dict[str, Any], baseline: dict[str, Any] | None) -> RunResult:
    """Gate, one summary line, JUnit XML: the parts CI reads."""
    bench = str(doc["provenance"].get("bench"))
    if baseline is None:
        by = {(s["model"], s["category"], s["turn"]): s for s in doc["scores"]}
        results = [
            g.GateResult(m, "-", g.Delta("all", None, by.get((m, "all", "all"))), float("inf"))
            for m in g.models_of(doc)
        ]
        line = "RESULT (no baseline): " + "; ".join(r.line() for r in results)
        code = g.EXIT_REGRESSION if any(r.regressed for r in results) else g.EXIT_OK
    else:
        results = g.gate(baseline, doc, float(cfg.max_drop or 0.0), cfg.baseline_name, cfg.allow_mismatch)
        line = g.summary(results)
        code = g.EXIT_REGRESSION if any(r.regressed for r in results) else g.EXIT_OK
    if cfg.junit_xml:
        Path(cfg.junit_xml).write_bytes(g.junit_xml(results, bench))
    print(line, flush=True)
    return RunResult(code, doc, results, line)
