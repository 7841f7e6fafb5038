from __future__ import annotations

import click
from click.core import ParameterSource

from job.commands import common as opt
from job.commands import stage_options as stage


@click.command(context_settings={"show_default": True})
@opt.bench_option
@stage.judge_options
@stage.pairwise_options
@click.option(
    "--model-list", multiple=True, help="Models (answer file stems) to judge; default: all. Repeatable."
)
@click.option(
    "--judge-prompts", type=click.Path(dir_okay=False), help="Judge prompt file (default: the bench's)."
)
@opt.question_options
@opt.output_option
@click.option(
    "--answers-dir",
    type=click.Path(file_okay=False, exists=True),
    help="A FastChat model_answer folder to read instead of <output>/<bench>/model_answer/.",
)
@opt.bench_data_option
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Skip the questions a model has no answer for, for that model only (listed), instead of failing.",
)
@click.option(
    "--batch-size",
    type=int,
    default=64,
    help="Judgments stored per write (API judges stream their calls; at most 5 s between writes); "
    "for hf/vllm judges also the calls per generate batch.",
)
@opt.api_options
@opt.local_model_options
@stage.openai_batch_options
@opt.dry_run_option
@click.option(
    "--price-per-mtok",
    metavar="IN,OUT",
    help="USD per million prompt and completion tokens: --dry-run estimates the cost, a run prints "
    "the cost of the usage the API reported (no built-in prices).",
)
@click.option(
    "--dump", type=click.Path(dir_okay=False), help="With --dry-run: write every request as a JSON line here."
)
def judge(**kw: object) -> None:
    """Judge answers with FastChat's prompts (single or pairwise) and store every judgment.

    Writes <output>/<bench>/model_judgment/<judge>_single.jsonl (or _pair.jsonl) in FastChat's
    format plus choice, status, error and inputs_sha256 (sample, usage, attempts when set).
    Every choice is judged. Re-running
    skips judgments already stored for the same inputs (answers, filled prompt, reference,
    judge spec and sampling), so an interrupted run is completed without duplicates and
    changed inputs are judged again. Exits 2 when no judgment of the run came back ok.
    """
    from job.backends.endpoints import judge_endpoint, launcher_generator
    from job.judge.estimate import parse_price
    from job.judge.runner import JudgeConfig, run

    backend_options = {
        k: kw.pop(k) for k in (*opt.API_OPTION_KEYS, *opt.LOCAL_OPTION_KEYS, *stage.BATCH_OPTION_KEYS)
    }
    # --judge-base-url, else an explicit --base-url; OPENAI_BASE_URL only if no openai/
    # JOB_MODEL beside this step owns it (job.backends.endpoints)
    explicit = click.get_current_context().get_parameter_source("base_url") is ParameterSource.COMMANDLINE
    generator = launcher_generator()
    url = kw.pop("judge_base_url") or (backend_options["base_url"] if explicit or not generator else None)
    key_env = kw.pop("judge_api_key_env")
    backend_options |= judge_endpoint(str(kw["judge_model"]), url, key_env, generator)  # type: ignore[arg-type]
    kw["model_list"] = list(kw.pop("model_list"))  # type: ignore[call-overload]
    kw["question_ids"] = list(kw.pop("question_ids"))  # type: ignore[call-overload]
    kw["price_per_mtok"] = parse_price(kw["price_per_mtok"])  # type: ignore[arg-type]
    run(JudgeConfig(**kw, backend_options=backend_options))  # type: ignore[arg-type]
