from __future__ import annotations

import click

from job.commands.common import bench_option, output_option


@click.command("reduce", context_settings={"show_default": True})
@bench_option
@click.option(
    "--model-name",
    "model_names",
    multiple=True,
    envvar="JOB_MODEL_NAME",
    help="Model(s) to reduce (default: every model with shards).",
)
@output_option
@click.option(
    "--allow-failed", is_flag=True, help="Keep failed conversations (marked with status) instead of failing."
)
@click.option("--wait", type=float, default=0.0, help="Seconds to poll for shards still running.")
@click.option("--poll-interval", type=float, default=10.0, help="Seconds between polls with --wait.")
def reduce_cmd(**kw: object) -> None:
    """Merge committed shards into <output>/<bench>/model_answer/<model>.jsonl.

    Fails, listing them, if shards or (question, choice) items are missing. Each choice keeps
    its turns' finish_reasons; a warning names a model with over 5% of turns cut at
    --max-new-tokens.
    """
    from job.reduce import ReduceConfig, run

    kw["model_names"] = list(kw["model_names"])  # type: ignore[call-overload]
    run(ReduceConfig(**kw))  # type: ignore[arg-type]
