from __future__ import annotations

import click

from job.commands.common import (
    BENCH_HELP,
    bench_data_option,
    env_option,
    output_option,
    tracking_config,
    tracking_options,
)
from job.commands.models import step_option, step_pattern_option
from job.commands.stage_options import pairwise_options, publish_option, sample_agg_option


@click.command(context_settings={"show_default": True})
@env_option(
    "--bench",
    "JOB_BENCH",
    help=BENCH_HELP + " Default: a judge manifest's bench, else the one bench whose question file holds"
    " every question id of --judgments, else mt_bench (FastChat's default).",
)
@pairwise_options
@click.option(
    "--model-list", multiple=True, help="Only these models (pairwise: filters model_1, as FastChat)."
)
@click.option(
    "--judgments",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Judgment file(s), ours or FastChat's (default: <output>/<bench>/model_judgment/). Repeatable.",
)
@click.option("--judge-name", help="Pick one judge's files when several are stored.")
@output_option
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    help="Where to write scores.csv, pairwise.csv, report.json, report.md (default <output>/<bench>/reports/).",
)
@click.option(
    "--answers-dir",
    type=click.Path(file_okay=False, exists=True),
    help="FastChat model_answer folder for the Japanese character share.",
)
@bench_data_option
@click.option(
    "--ja-chars/--no-ja-chars",
    default=None,
    help="Japanese character share (default: on for Japanese benches).",
)
@click.option("--seed", type=int, default=0, help="Bootstrap seed.")
@sample_agg_option
@step_option
@step_pattern_option
# report.html + plots and publishing (job/report/publish.py)
@click.option("--html/--no-html", default=True, help="Also write report.html and the chart PNGs.")
@publish_option
@tracking_options
def report(**kw: object) -> None:
    """Aggregate judgments: FastChat show_result numbers, Swallow N-choice means and std,
    per category n_scored / n_failed and 95% bootstrap CIs."""
    from job.report.runner import ReportConfig, run

    for k in ("model_list", "judgments"):
        kw[k] = list(kw[k])  # type: ignore[call-overload]
    html, publish_to, step_pattern = kw.pop("html"), kw.pop("publish"), str(kw.pop("step_pattern"))
    tracking = tracking_config(kw)
    if tracking:
        tracking.step_pattern = step_pattern
    cfg = ReportConfig(**kw)  # type: ignore[arg-type]
    doc = run(cfg)
    if html or publish_to:
        from job.report.publish import publish, write_html

        storage, prefix, names = write_html(cfg, doc)
        if publish_to:
            from job.report.leaderboard import refresh

            publish(str(publish_to), storage, prefix, names, doc)
            refresh(str(publish_to), step_pattern)
    if tracking:  # after every file is written: a tracking failure never loses the report
        from job.report.tracking import track

        track(tracking, doc, cfg)
