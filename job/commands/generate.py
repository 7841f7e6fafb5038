from __future__ import annotations

import click

from job.commands import common as opt
from job.commands import stage_options as stage


@click.command(context_settings={"show_default": True})
@opt.bench_option
@opt.model_options
@opt.question_options
@opt.output_option
@opt.bench_data_option
@click.option(
    "--shard-index",
    type=int,
    help="This task's shard (default: SLURM_ARRAY_TASK_ID, then JOB_COMPLETION_INDEX; none: all shards).",
)
@opt.env_option(
    "--num-shards",
    "JOB_NUM_SHARDS",
    type=int,
    help="Shard count (default: SLURM_ARRAY_TASK_COUNT, else 1).",
)
@click.option(
    "--category-temperature",
    multiple=True,
    metavar="CAT=T",
    help="Override the FastChat category table, e.g. writing=0.5. Repeatable.",
)
@stage.generation_options
@click.option(
    "--token-budget",
    type=int,
    help="Padded tokens (rows x (prompt + new tokens)) per batch when --batch-size is unset (hf; default: "
    "what the KV cache fits in free GPU memory, or in free host memory on CPU up to 131072; lowered for the run "
    "after an out-of-memory).",
)
@click.option(
    "--dedupe-greedy/--no-dedupe-greedy",
    default=None,
    show_default=False,
    help="Generate identical greedy requests (temperature-0 choices) once and copy the answer. "
    "Default: on for hf/vllm/mock (exact: greedy decoding repeats itself), off for openai/ "
    "(an API's temperature-0 replies vary).",
)
@click.option("--force", is_flag=True, help="Regenerate shards that are already complete.")
@opt.env_option(
    "--executor",
    "JOB_EXECUTOR",
    type=click.Choice(["local", "ray"]),
    default="local",
    help="local: this process runs its shards; ray: Ray actors (one model replica each) run them.",
)
@click.option("--num-replicas", type=int, help="Ray actors (default: GPUs // tensor-parallel size, or 1).")
@click.option("--cpus-per-replica", type=float, default=1.0, help="CPUs reserved per Ray actor.")
@opt.api_options
@opt.dry_run_option
def generate(**kw: object) -> None:
    """Generate answers for this task's shard of (question, choice) conversations.

    Turn 1 of every conversation is one batch, turn 2 the next. The shard is written
    atomically with a manifest under <output>/<bench>/shards/<model-name>/; re-running a
    complete shard does nothing.
    """
    from job.generate import GenerateConfig, parse_category_temperatures, run

    backend_options = stage.pop_generation_backend_options(kw, "token_budget")
    kw["category_temperature"] = parse_category_temperatures(kw.pop("category_temperature"))  # type: ignore[arg-type]
    kw["question_ids"] = list(kw.pop("question_ids"))  # type: ignore[call-overload]
    executor, replicas, cpus = kw.pop("executor"), kw.pop("num_replicas"), kw.pop("cpus_per_replica")
    cfg = GenerateConfig(**kw, backend_options=backend_options)  # type: ignore[arg-type]
    if executor == "ray":
        from job.generate.ray_executor import RayOptions, run_ray

        tp, device = backend_options["tensor_parallel_size"], backend_options["device"]
        run_ray(cfg, RayOptions(replicas, cpus, tp, device))  # type: ignore[arg-type]
    else:
        run(cfg)
