"""Experiment tracking (`--log-to mlflow|wandb` on `job report` and `job run`): one tracking
run per model of a written report, holding the report's numbers as metrics at the checkpoint
step, its provenance as params and report.html / scores.csv / report.json as artifacts.

Only the report document (report.json) and the files beside it are read. The libraries are
optional extras (mtbench-job[mlflow], [wandb]) imported when used (job.report.tracking_sinks).
A tracking failure never loses the report (it is written first): a one-line warning, or with
--log-to-required a TrackingError (exit 1) after every tool was tried.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.layout import reports_dir
from job.report import leaderboard
from job.report.leaderboard import DEFAULT_STEP_PATTERN
from job.report.runner import ReportConfig, bench_of
from job.report.tracking_sinks import SINKS, TrackedRun
from job.storage import LocalStorage, Storage, open_storage

log = logging.getLogger(__name__)
TOOLS = {"mlflow": "mlflow", "wandb": "wandb"}  # --log-to value -> the module (and extra) it needs
ARTIFACTS = ("report.html", "report.json", "scores.csv", "pairwise.csv")
SCORE_FIELDS = ("ci_low", "ci_high", "std", "n_scored", "n_failed")
PAIR_FIELDS = ("win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted")


class TrackingError(JobError):
    """A tracking server refused or was down and --log-to-required was given (the report is written)."""

    exit_code = 1


@dataclass
class TrackingConfig:
    log_to: list[str]
    project: str | None = None
    """MLflow experiment / W&B project (None: the tools' env vars, else their defaults)"""
    run_name: str | None = None
    """None: the model name (W&B: WANDB_NAME first)"""
    required: bool = False
    step_pattern: str = DEFAULT_STEP_PATTERN
    """Without --step: the step is this regex's first group in the model name (job leaderboard's)"""


def check_available(cfg: TrackingConfig) -> None:
    """Fail before any work when a --log-to tool is not installed."""
    for tool in cfg.log_to:
        if tool not in TOOLS:
            raise JobError(f"--log-to {tool}: unknown tool; use one of {', '.join(TOOLS)}")
        if importlib.util.find_spec(TOOLS[tool]) is None:
            raise JobError(missing(tool))


def missing(tool: str) -> str:
    return f"--log-to {tool}: the {TOOLS[tool]} package is not installed; pip install 'mtbench-job[{tool}]'"


def _base(category: str, turn: str) -> str | None:
    """Metric name of a scores row: average, turn1, turn2, category/<name> (turn splits per
    category are in report.json only)."""
    if category == "all":
        return "average" if turn == "all" else f"turn{turn}"
    return f"category/{category}" if turn == "all" else None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and v == v else None


def metrics_of(doc: dict[str, Any], model: str) -> dict[str, float]:
    """The model's numbers in report.json as flat metric names (None/NaN left out)."""
    out: dict[str, float] = {}
    for row in doc.get("scores", []):
        base = _base(str(row.get("category")), str(row.get("turn")))
        if row.get("model") != model or base is None:
            continue
        for key, name in (("mean", base), *((f, f"{base}/{f}") for f in SCORE_FIELDS)):
            if (v := _number(row.get(key))) is not None:
                out[name] = v
    for row in doc.get("pairwise", []):
        if row.get("model") == model:
            out.update({f: v for f in PAIR_FIELDS if (v := _number(row.get(f))) is not None})
    spread = (doc.get("judge_spread") or {}).get(model)
    spread = spread if isinstance(spread, dict) else {}
    if (v := _number(spread.get("std"))) is not None:
        out["judge_spread"] = v
    if (v := _number(spread.get("k"))) is not None:
        out["judge_samples"] = v
    return out


def params_of(doc: dict[str, Any], model: str, model_spec: str | None) -> dict[str, str]:
    """Provenance that identifies the numbers; never backend options (no key, no endpoint)."""
    prov = doc.get("provenance", {})
    judges = prov.get("judges") or []
    params = {
        "bench": prov.get("bench"), "mode": prov.get("mode"), "model": model, "model_spec": model_spec,
        "judge": ",".join(map(str, judges)) or None, "judge_model": prov.get("judge_model"),
        "reference": prov.get("reference"), "num_choices": (prov.get("num_choices") or {}).get(model),
        "bench_data_sha256": prov.get("bench_data_sha256"), "reference_sha256": prov.get("reference_sha256"),
        "judge_prompts_sha256": prov.get("judge_prompts_sha256"), "step": prov.get("step"),
        "sample_scoring": prov.get("sample_scoring"),
        "package_version": prov.get("package_version"), "git_revision": prov.get("git_revision"),
    }  # fmt: skip
    return {k: str(v) for k, v in params.items() if v is not None}


def step_of(doc: dict[str, Any], model: str = "", step_pattern: str = DEFAULT_STEP_PATTERN) -> int:
    """The model's checkpoint step as `job leaderboard` reads it: provenance (--step), else
    --step-pattern on the model name; else 0, with a warning."""
    step = doc.get("provenance", {}).get("step")
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    named = leaderboard.step_of(model, leaderboard.compile_step_pattern(step_pattern))[0]
    if named is not None:
        return named
    log.warning("report.json has no checkpoint step (--step): tracking metrics are logged at step 0")
    return 0


def models_of(doc: dict[str, Any]) -> list[str]:
    rows = [*doc.get("scores", []), *doc.get("pairwise", [])]
    return list(dict.fromkeys(str(r["model"]) for r in rows))


def report_files(cfg: ReportConfig) -> dict[str, bytes]:
    """The artifact files where `job report` wrote them (local or s3://)."""
    dest: Storage = LocalStorage(cfg.output_dir) if cfg.output_dir else open_storage(cfg.output)
    prefix = "" if cfg.output_dir else reports_dir(bench_of(cfg))
    return {n: dest.read_bytes(prefix + n) for n in ARTIFACTS if dest.exists(prefix + n)}


def one_line(e: BaseException) -> str:
    """An exception as one short line, credentials in URLs (scheme://user:pass@) masked."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = re.sub(r"(://)[^/@\s]+@", r"\1***@", text)
    return text if len(text) <= 300 else text[:297] + "..."


def tracked_runs(
    cfg: TrackingConfig, doc: dict[str, Any], paths: list[Path], model_spec: str | None
) -> list[TrackedRun]:
    models = models_of(doc)
    steps = {m: step_of(doc, m, cfg.step_pattern) for m in models}
    several = len(models) > 1 and cfg.run_name
    return [
        TrackedRun(
            model=m,
            name=f"{cfg.run_name}-{m}" if several else cfg.run_name,
            project=cfg.project,
            step=steps[m],
            metrics=metrics_of(doc, m),
            params={**params_of(doc, m, model_spec), **({"step": str(steps[m])} if steps[m] else {})},
            artifacts=paths,
        )  # fmt: skip
        for m in models
    ]


def _log(tool: str, runs: list[TrackedRun]) -> tuple[list[str], str | None]:
    """Where each run went; on the first failure, the models left unlogged (a down server is
    not asked again for each model)."""
    logged: list[str] = []
    for i, run in enumerate(runs):
        try:
            logged.append(SINKS[tool](run))
        except ImportError:
            return logged, missing(tool)
        except Exception as e:  # a server down or refusing: the report stays written
            left = ", ".join(r.model for r in runs[i:])
            return logged, f"--log-to {tool}: {left} not logged ({one_line(e)})"
    return logged, None


def track(
    cfg: TrackingConfig, doc: dict[str, Any], rcfg: ReportConfig, model_spec: str | None = None
) -> list[str]:
    """Log every model of the report to every --log-to tool; returns where each run went."""
    logged, failed = [], []
    with tempfile.TemporaryDirectory(prefix="mtbench-tracking-") as tmp:
        paths = []
        for name, data in report_files(rcfg).items():
            (path := Path(tmp) / name).write_bytes(data)
            paths.append(path)
        runs = tracked_runs(cfg, doc, paths, model_spec)
        for tool in cfg.log_to:
            where, error = _log(tool, runs)
            logged += [f"{tool}: {w}" for w in where]
            failed += [error] if error else []
    for line in logged:
        print(f"logged to {line}")
    if failed and cfg.required:
        raise TrackingError("; ".join(failed) + " (--log-to-required; the report files are written)")
    for line in failed:
        log.warning("%s; the report files are written", line)
    return logged
