"""Options shared by several commands, with the short env names the launchers use."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from job.backends.hf_memory import DEVICE_MAPS

F = TypeVar("F", bound=Callable[..., Any])


def stack(f: F, options: list[Callable[[F], F]]) -> F:
    """Apply click options so --help lists them in the order given."""
    for deco in reversed(options):
        f = deco(f)
    return f


def env_option(name: str, envvar: str, **kw: Any) -> Callable[[F], F]:
    """An option the launchers set by its short env name, shown in --help."""
    return click.option(name, envvar=envvar, show_envvar=True, **kw)


BENCH_HELP = (
    "Bench name: mt_bench, japanese_mt_bench (Swallow v202411), japanese_mt_bench_v202407, "
    "japanese_mt_bench_stability, smoke, or any folder under --bench-data."
)


def bench_option(f: F) -> F:
    return env_option("--bench", "JOB_BENCH", required=True, help=BENCH_HELP)(f)


def bench_data_option(f: F) -> F:
    return env_option(
        "--bench-data",
        "JOB_BENCH_DATA",
        type=click.Path(file_okay=False),
        help="FastChat-layout data dir (default ~/.cache/mtbench-job/bench_data).",
    )(f)


def _set_s3_endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # one process-wide setting read by job.storage.s3, so no stage config has to carry it
    if value:
        os.environ["JOB_S3_ENDPOINT_URL"] = value


def s3_endpoint_option(f: F) -> F:
    """--s3-endpoint-url (MinIO, Ceph, R2; default: AWS_ENDPOINT_URL or AWS)."""
    return env_option(
        "--s3-endpoint-url",
        "JOB_S3_ENDPOINT_URL",
        expose_value=False,
        callback=_set_s3_endpoint,
        help="S3-compatible endpoint for s3:// outputs (default: AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL, else AWS).",
    )(f)


def output_option(f: F) -> F:
    """--output plus --s3-endpoint-url."""
    f = s3_endpoint_option(f)
    return env_option(
        "--output",
        "JOB_OUTPUT",
        default="./runs",
        show_default=True,
        help="Run root: a local dir or s3://bucket/prefix.",
    )(f)


def model_options(f: F, many: bool = False) -> F:
    """--model, --model-name, --num-choices, --max-new-tokens (generate; run with many=True)."""
    again = " Repeat it to run several models one after another (or use --models-file)." if many else ""
    return stack(
        f,
        [
            env_option(
                "--model",
                "JOB_MODEL",
                required=not many,
                multiple=many,
                help="provider/model: hf/<path-or-id>, hf-tiny, vllm/<path>, openai/<name>, mock/echo."
                + again,
            ),
            env_option(
                "--model-name",
                "JOB_MODEL_NAME",
                help="Answer file stem (default: last part of the model path).",
            ),
            env_option(
                "--num-choices",
                "JOB_NUM_CHOICES",
                type=int,
                default=1,
                help="Independent 2-turn conversations per question (Swallow: 5).",
            ),
            click.option("--max-new-tokens", type=int, default=1024, help="New tokens per turn."),
        ],
    )


def many_model_options(f: F) -> F:
    """model_options with a repeatable --model (job run)."""
    return model_options(f, many=True)


# keys of backend_options filled by local_model_options (hf/ and vllm/ backends)
LOCAL_OPTION_KEYS = (
    "dtype", "device", "device_map", "trust_remote_code",
    "tensor_parallel_size", "max_model_len", "gpu_memory_utilization", "enforce_eager", "tokenizer_mode",
    "gguf_file",
)  # fmt: skip


def local_model_options(f: F) -> F:
    """Options of models loaded in this process (hf/, vllm/): generation or judging."""
    return stack(
        f,
        [
            click.option("--dtype", default="auto", help="auto, float32, float16 or bfloat16 (hf/vllm)."),
            click.option("--device", default="auto", help="auto, cpu, cuda, cuda:N (hf)."),
            click.option(
                "--device-map",
                type=click.Choice(DEVICE_MAPS),
                help="Spread one model over all GPUs (and CPU) with accelerate, for models larger than "
                "one GPU (hf; instead of --device).",
            ),
            click.option(
                "--trust-remote-code", is_flag=True, help="Allow model repos to run their own code."
            ),
            click.option(
                "--gguf-file",
                help="Load this GGUF file of the hf/ model's folder or repo (dequantized on load; "
                "needs `pip install gguf`; hf). `job smoke-model --from-gguf` converts one once instead.",
            ),
            click.option(
                "--tensor-parallel-size",
                type=int,
                default=1,
                help="GPUs per model replica (vllm; GPUs per Ray actor).",
            ),
            click.option(
                "--max-model-len", type=int, help="Context length of the engine (vllm; default: the model's)."
            ),
            click.option(
                "--gpu-memory-utilization", type=float, default=0.9, help="GPU memory share (vllm)."
            ),
            click.option(
                "--enforce-eager",
                is_flag=True,
                help="Disable CUDA graphs (vllm; faster start, slower decode).",
            ),
            click.option(
                "--tokenizer-mode",
                help="vLLM's tokenizer mode: auto (default: mistral for Mistral-format folders), hf, "
                "slow, mistral, ... (vllm).",
            ),
        ],
    )


def question_options(f: F) -> F:
    """--question-ids and --first-n: a subset of the bench (debugging, CI smoke runs)."""
    f = click.option("--first-n", type=int, help="Only the first N questions of the file.")(f)
    return click.option(
        "--question-ids", multiple=True, help="Only these ids: '81,82' or ranges '81-90'. Repeatable."
    )(f)


def dry_run_option(f: F) -> F:
    return click.option("--dry-run", is_flag=True, help="Print the plan; load and send nothing.")(f)


# keys of backend_options filled by api_options (openai/<model> backend)
API_OPTION_KEYS = ("base_url", "concurrency", "request_timeout", "max_retries")


def api_options(f: F) -> F:
    """Options of OpenAI-compatible backends (generation and judging)."""
    return stack(
        f,
        [
            env_option(
                "--base-url",
                "OPENAI_BASE_URL",
                help="OpenAI-compatible endpoint of openai/ models (vLLM, SGLang, transformers serve); "
                "in `job run` the generator's. Key: OPENAI_API_KEY.",
            ),
            click.option(
                "--concurrency",
                type=int,
                default=32,
                show_default=True,
                help="Requests in flight at once (API backends).",
            ),
            click.option(
                "--request-timeout",
                type=float,
                default=600.0,
                show_default=True,
                help="Seconds per API request before it is retried.",
            ),
            click.option(
                "--max-retries",
                type=int,
                default=6,
                show_default=True,
                help="Retries on 429/5xx/timeouts/connection errors, with backoff.",
            ),
        ],
    )


def reasoning_options(f: F) -> F:
    """Reasoning models (generate and run): template kwargs, API body, the reasoning split."""
    return stack(
        f,
        [
            click.option(
                "--chat-template-kwargs",
                metavar="JSON",
                help="""JSON object passed to the chat template (hf/vllm), e.g. '{"enable_thinking": false}'.""",
            ),
            click.option(
                "--extra-body",
                metavar="JSON",
                help="""JSON object merged into every API request (openai/), e.g. '{"reasoning_effort": "low"}'.""",
            ),
            click.option(
                "--reasoning-pattern",
                metavar="REGEX",
                help="What is removed from each turn before it is judged and goes into turn 2's history "
                "(default: a leading <think>...</think> block; group `reasoning` = the reasoning, group "
                "`unterminated` = a block that never closed; 'none': nothing). The raw text is kept.",
            ),
        ],
    )


def pop_json_options(kw: dict[str, object]) -> dict[str, object]:
    """--chat-template-kwargs and --extra-body parsed (one-line error on bad JSON), for backend_options."""
    from job.generate.plan import parse_json_option

    names = ("chat_template_kwargs", "extra_body")
    return {k: parse_json_option("--" + k.replace("_", "-"), kw.pop(k)) for k in names}  # type: ignore[arg-type]


# keys filled by tracking_options (job report, job run); tracking_config pops them
TRACKING_OPTION_KEYS = ("log_to", "log_to_required", "tracking_project", "tracking_run_name")


def tracking_options(f: F) -> F:
    """--log-to mlflow|wandb and its settings (job.report.tracking)."""
    return stack(
        f,
        [
            click.option(
                "--log-to",
                type=click.Choice(["mlflow", "wandb"]),
                multiple=True,
                help="Also log the report's metrics (at the --step), params and files to MLflow or W&B "
                "(repeatable; pip install 'mtbench-job[mlflow]' / '[wandb]'; server and login from the "
                "tools' env vars: MLFLOW_TRACKING_URI, WANDB_MODE, WANDB_API_KEY, ...). A failure warns.",
            ),
            click.option(
                "--log-to-required",
                is_flag=True,
                help="Make a --log-to failure an error (exit 1); the report files are written either way.",
            ),
            click.option(
                "--tracking-project",
                help="MLflow experiment / W&B project (default: MLFLOW_EXPERIMENT_NAME or "
                "MLFLOW_EXPERIMENT_ID / WANDB_PROJECT, else the tool's default).",
            ),
            click.option(
                "--tracking-run-name",
                help="Run name (default: the model name; W&B: WANDB_NAME first); several models: NAME-<model>.",
            ),
        ],
    )


def tracking_config(kw: dict[str, Any]) -> Any:
    """Pop the tracking options from kw: a checked TrackingConfig, or None without --log-to."""
    from job.report.tracking import TrackingConfig, check_available

    log_to, required, project, name = (kw.pop(k) for k in TRACKING_OPTION_KEYS)
    if not log_to:
        return None
    cfg = TrackingConfig(list(dict.fromkeys(log_to)), project, name, bool(required))
    check_available(cfg)  # a missing extra fails now, before any work
    return cfg
