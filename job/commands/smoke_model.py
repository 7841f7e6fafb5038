from __future__ import annotations

import click


@click.command("smoke-model")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
def smoke_model(directory: str, seed: int) -> None:
    """Build the tiny random chat model into DIRECTORY (offline, a few seconds).

    Use it as --model hf/DIRECTORY to check a cluster setup before spending GPU hours;
    --model hf-tiny builds and uses a cached copy.
    """
    from job.errors import JobError

    try:
        from job.smoke_model import build
    except ImportError:
        raise JobError(
            "smoke-model needs torch and transformers; run: pip install 'mtbench-job[hf]'"
        ) from None
    path = build(directory, seed=seed)
    click.echo(str(path))
