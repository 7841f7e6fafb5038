"""Option groups of one stage that several commands take, defined once so their names,
defaults and --help texts cannot drift apart: the judge's (job judge, job run), generation's
(job generate, job run), pairwise selection (job judge, job report), publishing and judge-sample
aggregation (job report, job run)."""

from __future__ import annotations

from typing import Any

import click

from job.commands.common import (
    API_OPTION_KEYS,
    LOCAL_OPTION_KEYS,
    F,
    env_option,
    local_model_options,
    pop_json_options,
    reasoning_options,
    stack,
)

JUDGE_SAMPLING_KEYS = ("judge_samples", "judge_temperature", "parse_retries")
JUDGE_KEYS = ("judge_model", "judge_name", "reference", *JUDGE_SAMPLING_KEYS, "keep_reasoning")
"""JudgeConfig fields of judge_options (the endpoint options go into backend_options)"""
BATCH_OPTION_KEYS = ("openai_batch", "openai_batch_wait")


def judge_endpoint_options(f: F) -> F:
    """The judge's own endpoint and key (job run, job judge): never the generator's by default."""
    return stack(
        f,
        [
            env_option(
                "--judge-base-url",
                "JOB_JUDGE_BASE_URL",
                help="OpenAI-compatible endpoint of an openai/ judge (default api.openai.com; where no "
                "generator uses an API, as in `job judge`: --base-url / OPENAI_BASE_URL).",
            ),
            click.option(
                "--judge-api-key-env",
                metavar="VAR",
                help="Environment variable holding the judge's API key (default JOB_JUDGE_API_KEY; "
                "else OPENAI_API_KEY, unless an openai/ generator on another endpoint owns it).",
            ),
        ],
    )


def judge_sampling_options(f: F) -> F:
    """--judge-samples, --judge-temperature, --parse-retries (JudgeConfig fields of the same names)."""
    return stack(
        f,
        [
            click.option("--judge-samples", type=click.IntRange(min=1), default=1,
                help="K judgments per game, stored as rows with a sample index 0..K-1 (resumed per "
                "sample); 1 writes FastChat's rows."),
            click.option("--judge-temperature", type=float, default=0.0,
                help="Judge sampling temperature (FastChat: 0); part of what decides a stored judgment."),
            click.option("--parse-retries", type=click.IntRange(min=0), default=0,
                help="Ask the judge again, up to N times, when its reply has no rating/verdict; every "
                "attempt is recorded (0: FastChat's behaviour, the reply is stored as parse_error)."),
        ],
    )  # fmt: skip


def judge_options(f: F) -> F:
    """Who judges, against what, where and how often (job judge, job run)."""
    return stack(
        f,
        [
            env_option(
                "--judge-model",
                "JOB_JUDGE_MODEL",
                required=True,
                help="Judge backend spec: openai/gpt-4o-2024-08-06, hf/<path>, vllm/<path>, mock/judge, "
                "mock/fixed:TEXT.",
            ),
            click.option(
                "--judge-name", help="Name in records and file names (default: last part of the judge spec)."
            ),
            click.option(
                "--reference", help="Reference answer set (reference_answer/<NAME>.jsonl); default per bench."
            ),
            judge_endpoint_options,
            judge_sampling_options,
            click.option(
                "--keep-reasoning",
                is_flag=True,
                help="Judge the raw text of reasoning models' turns (with their <think> block) instead of "
                "the final answer; switching re-judges the answers it changes.",
            ),
        ],
    )


def sample_agg_option(f: F) -> F:
    """--sample-agg (job report, job run): ReportConfig.sample_agg."""
    return click.option(
        "--sample-agg",
        type=click.Choice(["mean", "median"]),
        default="mean",
        help="How an item's judge samples (--judge-samples K) make its score (pairwise: each game's verdict).",
    )(f)


def openai_batch_options(f: F) -> F:
    """--openai-batch (job judge, job run): the judge's calls as one OpenAI Batch API batch."""
    return stack(
        f,
        [
            click.option(
                "--openai-batch",
                is_flag=True,
                help="Send the judge's calls (openai/ judges) as one Batch API batch (files + batches "
                "endpoints: half the price, results within 24 h); a re-run resumes polling the same batch.",
            ),
            click.option(
                "--openai-batch-wait",
                type=click.FloatRange(min=0),
                metavar="SECONDS",
                help="With --openai-batch: stop waiting after this long (exit 2, the batch id kept: the same "
                "command later collects it); default: until the batch ends.",
            ),
        ],
    )


def generation_options(f: F) -> F:
    """Sampling, prompt and the local model's loading options (job generate, job run)."""
    return stack(
        f,
        [
            click.option("--seed", type=int, default=0, help="Choice i samples with seed SEED+i."),
            click.option("--temperature", type=float, help="Force one temperature for all questions."),
            click.option("--system-prompt", help="System message prepended to every conversation."),
            click.option(
                "--chat-template",
                type=click.Path(exists=True, dir_okay=False),
                help="Jinja chat template file (hf/vllm) for models without one.",
            ),
            local_model_options,
            reasoning_options,
            click.option(
                "--batch-size", type=int, help="Rows decoded at once (hf; default: by token budget)."
            ),
        ],
    )


def pop_generation_backend_options(kw: dict[str, Any], *extra: str) -> dict[str, Any]:
    """GenerateConfig.backend_options from generation_options + api_options (+ `extra` keys)."""
    keys = (*LOCAL_OPTION_KEYS, "batch_size", *extra, *API_OPTION_KEYS)
    return {k: kw.pop(k) for k in keys} | pop_json_options(kw)


def pairwise_options(f: F) -> F:
    """--mode and --baseline-model (job judge, job report: FastChat's gen_judgment / show_result)."""
    return stack(
        f,
        [
            click.option(
                "--mode", type=click.Choice(["single", "pairwise-baseline", "pairwise-all"]), default="single"
            ),
            click.option(
                "--baseline-model",
                default="gpt-3.5-turbo",
                help="Baseline model (answer file stem) of pairwise-baseline.",
            ),
        ],
    )


def publish_option(f: F) -> F:
    """--publish (job report, job run; job.report.publish)."""
    return click.option(
        "--publish",
        metavar="DIR|s3://...",
        help="Copy the report files (html, json, md, csv, plots) to DIR/<bench>/<run-id>/ and write "
        "DIR/latest/<bench>/<model>.json.",
    )(f)
