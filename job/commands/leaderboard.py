from __future__ import annotations

import click

from job.commands import common as opt
from job.commands.models import step_pattern_option


@click.command("leaderboard", context_settings={"show_default": True})
@click.argument("root", metavar="ROOT")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    help="Write index.html, leaderboard.csv and leaderboard.json here instead of into ROOT.",
)
@step_pattern_option
@opt.s3_endpoint_option
def leaderboard(root: str, output_dir: str | None, step_pattern: str) -> None:
    """Index every report published under ROOT (a directory or s3://bucket/prefix, as written by
    --publish): a sortable table and a score-vs-step trend chart per bench, in a self-contained
    index.html, plus leaderboard.csv and leaderboard.json."""
    from job.report.leaderboard import write

    write(root, output_dir, step_pattern)
