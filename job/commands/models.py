"""Several checkpoints in one `job run` (--model A --model B, --models-file) and the
checkpoint step recorded for `job leaderboard` (--step on run and report, --step-pattern)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from job.errors import JobError
from job.report.leaderboard import DEFAULT_STEP_PATTERN

F = TypeVar("F", bound=Callable[..., Any])
STEP_HELP = "Checkpoint step of the model, recorded in report.json provenance (the leaderboard's x axis)."


def step_option(f: F) -> F:
    return click.option("--step", type=click.IntRange(min=0), help=STEP_HELP)(f)


def step_pattern_option(f: F) -> F:
    """--step-pattern, the same for job run and job leaderboard."""
    return click.option(
        "--step-pattern",
        default=DEFAULT_STEP_PATTERN,
        help="Without --step: the step is this regex's first group found in the model name (case-insensitive).",
    )(f)


def models_options(f: F) -> F:
    """--models-file, --step, --step-pattern (job run)."""
    f = step_pattern_option(f)
    f = step_option(f)
    return click.option(
        "--models-file",
        type=click.Path(exists=True, dir_okay=False),
        help="One model per line: SPEC [NAME] (blank lines and # comments skipped); run one after another "
        "like repeated --model.",
    )(f)


def read_models_file(path: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    try:
        text = Path(path).read_text("utf-8")
    except UnicodeDecodeError as e:
        raise JobError(f"{path}: not UTF-8 text (byte {e.start}); one SPEC [NAME] per line") from None
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if len(parts) > 2:
            raise JobError(
                f"{path}:{i}: expected SPEC [NAME], got {len(parts)} fields; quote nothing, one model per line"
            )
        if parts:
            out.append((parts[0], parts[1] if len(parts) == 2 else None))
    if not out:
        raise JobError(f"{path}: no models (one SPEC [NAME] per line)")
    return out


def pop_models(kw: dict[str, Any]) -> dict[str, Any]:
    """RunConfig's models/step/step_pattern from the options; kw['model'] becomes the first spec."""
    models: list[tuple[str, str | None]] = [(m, None) for m in kw.pop("model")]
    if kw.get("models_file"):
        models += read_models_file(kw["models_file"])
    kw.pop("models_file")
    if not models:
        raise JobError("no model: pass --model SPEC (repeatable) or --models-file FILE")
    if len(models) > 1 and kw.get("model_name"):
        raise JobError(
            "--model-name names one model; with several, name them in --models-file (SPEC NAME per line)"
        )
    kw["model"] = models[0][0]
    return {"models": models, "step": kw.pop("step"), "step_pattern": kw.pop("step_pattern")}
