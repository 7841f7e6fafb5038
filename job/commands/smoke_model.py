from __future__ import annotations

import click


@click.command("smoke-model")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--from-gguf",
    "gguf_file",
    type=click.Path(dir_okay=False),
    help="Instead: rebuild this GGUF checkpoint (e.g. a real instruct model) as a plain HF "
    "checkpoint in DIRECTORY (float32 weights, tokenizer, chat template); needs `pip install gguf`.",
)
def smoke_model(directory: str, seed: int, gguf_file: str | None) -> None:
    """Build the tiny random chat model into DIRECTORY (offline, a few seconds).

    Use it as --model hf/DIRECTORY to check a cluster setup before spending GPU hours;
    --model hf-tiny builds and uses a cached copy. With --from-gguf FILE, DIRECTORY gets
    that model instead, loadable by hf/DIRECTORY, vllm/DIRECTORY and `transformers serve`.
    """
    from job.errors import JobError

    try:
        from job.backends.smoke_model import build, from_gguf
    except ImportError:
        raise JobError(
            "smoke-model needs torch and transformers; run: pip install 'mtbench-job[hf]'"
        ) from None
    path = from_gguf(gguf_file, directory) if gguf_file else build(directory, seed=seed)
    click.echo(str(path))
