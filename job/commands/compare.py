from __future__ import annotations

import click

from job.commands.common import _set_s3_endpoint


@click.command(context_settings={"show_default": True})
@click.argument("report_a")
@click.argument("report_b")
@click.option("--model-a", help="Model of A to compare (default: same name as B's, or A's only model).")
@click.option("--model-b", help="Model of B to compare (default: every model of B).")
@click.option(
    "--allow-mismatch",
    is_flag=True,
    help="Compare even if the reports differ in bench, question file, judge, reference set or judge prompt file.",
)
@click.option(
    "--s3-endpoint-url",
    envvar="JOB_S3_ENDPOINT_URL",
    expose_value=False,
    callback=_set_s3_endpoint,
    help="S3-compatible endpoint for s3:// reports.",
)
def compare(
    report_a: str, report_b: str, model_a: str | None, model_b: str | None, allow_mismatch: bool
) -> None:
    """Per-category score deltas B - A with CIs, from two report.json files.

    REPORT_A / REPORT_B: report.json paths, s3:// URIs or latest/<bench>/<model>.json pointers
    written by `job report --publish`. Reports made with another bench, question file, judge,
    reference set or judge prompt file are refused (exit 2) unless --allow-mismatch. The delta
    CI is paired: a bootstrap over the questions both reports scored. Categories whose delta CI
    excludes 0 are flagged.
    """
    from job.gate import format_compare
    from job.report.publish import load_report

    a, b = load_report(report_a), load_report(report_b)
    text = format_compare(a, b, model_a, model_b, allow_mismatch)  # refuses before printing anything
    click.echo(f"A: {report_a}\nB: {report_b}\n")
    click.echo(text)
