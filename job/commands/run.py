from __future__ import annotations

import click

from job.commands import common as opt
from job.commands import models as many
from job.commands import stage_options as stage


@click.command("run", context_settings={"show_default": True})
@opt.bench_option
@opt.many_model_options
@many.models_options
@opt.question_options
@click.option(
    "--num-shards", type=int, help="Generate in this many shards, one after another (resume points)."
)
@stage.generation_options
@opt.api_options
@stage.openai_batch_options
@stage.judge_options
@click.option("--judge-concurrency", type=int, default=32, help="Judge requests in flight.")
@click.option(
    "--allow-failed",
    is_flag=True,
    help="Keep failed conversations (counted, not scored) instead of stopping.",
)
@opt.output_option
@opt.bench_data_option
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False),
    help="Write report files here (default <output>/<bench>/reports/).",
)
@stage.publish_option
@stage.sample_agg_option
@click.option(
    "--baseline",
    metavar="REPORT",
    help="Baseline report.json (path, s3:// or a latest pointer) to gate against.",
)
@click.option(
    "--baseline-name",
    help="Model in the baseline report to compare with (default: same name, or its only model).",
)
@click.option(
    "--max-drop", type=float, help="Largest allowed drop of the average (points on the 1-10 scale)."
)
@click.option("--junit-xml", type=click.Path(dir_okay=False), help="Write the gate result as JUnit XML.")
@click.option(
    "--allow-mismatch",
    is_flag=True,
    help="Gate even against a baseline made with another bench, question file, judge, reference set or judge prompt file.",
)
@opt.tracking_options
@opt.dry_run_option
@click.pass_context
def run_cmd(ctx: click.Context, **kw: object) -> None:
    """generate -> reduce -> judge -> report in one command, then gate against a baseline.

    Exit codes: 0 pass; 3 regression (the model's average dropped by more than --max-drop
    points below the baseline, or nothing was scored); 2 bad input; 1 any other failure.
    The last stdout line is a one-line summary for CI logs (GATE PASS / GATE FAIL / RESULT).

    Several models (--model repeated, --models-file) run one after another, each resumable
    (a re-run skips every model finished with the same settings); a failing model does not
    stop the others but makes the exit non-zero; the last line is then MODELS: ... .
    With --publish, the publish root's leaderboard (job leaderboard) is refreshed at the end.
    """
    from job.backends import check_openai_batch
    from job.generate import GenerateConfig
    from job.judge.plan import JudgeConfig
    from job.pipeline import RunConfig, run

    opts = stage.pop_generation_backend_options(kw)
    judge_opts = {
        "base_url": kw.pop("judge_base_url"), "api_key_env": kw.pop("judge_api_key_env"),
        "concurrency": kw.pop("judge_concurrency"),
        "request_timeout": opts["request_timeout"], "max_retries": opts["max_retries"],
    }  # fmt: skip
    judge_opts |= {k: kw.pop(k) for k in stage.BATCH_OPTION_KEYS}
    if judge_opts["openai_batch"]:  # before generation, not after it
        check_openai_batch(str(kw["judge_model"]))
    jkw = {k: kw.pop(k) for k in stage.JUDGE_KEYS}
    jcfg = JudgeConfig(bench=str(kw["bench"]), backend_options=judge_opts, **jkw)  # type: ignore[arg-type]
    run_keys = (
        "allow_failed",
        "report_dir",
        "publish",
        "baseline",
        "baseline_name",
        "max_drop",
        "sample_agg",
    )
    rkw = {k: kw.pop(k) for k in (*run_keys, "junit_xml", "allow_mismatch")}
    rkw |= many.pop_models(kw)
    rkw["tracking"] = tracking = opt.tracking_config(kw)
    if tracking:  # a model whose name the pattern does not match: no other pattern tried
        tracking.step_pattern = rkw["step_pattern"]
    kw["question_ids"] = list(kw.pop("question_ids"))  # type: ignore[call-overload]
    gcfg = GenerateConfig(**kw, backend_options=opts)  # type: ignore[arg-type]
    ctx.exit(run(RunConfig(generate=gcfg, judge=jcfg, **rkw)).exit_code)  # type: ignore[arg-type]
