"""The tracking tools behind --log-to, each imported only when asked for. Each sink takes a
TrackedRun and returns where the run went (a URL or a local directory); any exception is
the caller's to turn into a warning or a TrackingError."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrackedRun:
    """What one tracking run gets, independent of the tool."""

    model: str
    name: str | None
    project: str | None
    step: int
    metrics: dict[str, float]
    params: dict[str, str]
    artifacts: list[Path] = field(default_factory=list)


# MLflow retries a down server for minutes by default (7 retries, backoff factor 2); a report
# job should warn within seconds. The user's own settings win.
MLFLOW_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# W&B waits 90 s for a server that does not answer; 30 s is still generous for a live one
WANDB_INIT_TIMEOUT_DEFAULT = "30"


def _mlflow_experiment(client: object, name: str | None) -> str:
    """The experiment id: --tracking-project or MLFLOW_EXPERIMENT_NAME (created when new),
    else MLFLOW_EXPERIMENT_ID, else MLflow's Default experiment."""
    from mlflow.exceptions import MlflowException

    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name:
        return os.environ.get("MLFLOW_EXPERIMENT_ID") or "0"
    exp = client.get_experiment_by_name(name)  # type: ignore[attr-defined]
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(client.create_experiment(name))  # type: ignore[attr-defined]
    except MlflowException:  # created by a concurrent job since the lookup
        return str(client.get_experiment_by_name(name).experiment_id)  # type: ignore[attr-defined]


def log_mlflow(run: TrackedRun) -> str:
    """MLFLOW_TRACKING_URI (and MLflow's other env vars) pick the server, as for any MLflow client."""
    for k, v in MLFLOW_RETRY_DEFAULTS.items():
        os.environ.setdefault(k, v)
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient()
    exp_id = _mlflow_experiment(client, run.project)
    tags = {"mtbench-job.model": run.model, "mtbench-job.bench": run.params.get("bench", "")}
    created = client.create_run(exp_id, run_name=run.name or run.model, tags=tags)
    run_id = created.info.run_id
    try:
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, run.step) for k, v in run.metrics.items()]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in run.params.items()])
        for path in run.artifacts:
            client.log_artifact(run_id, str(path), artifact_path="report")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return f"{client.tracking_uri} run {run_id} (experiment {exp_id})"


def _wandb_name(text: str) -> str:
    """An artifact name W&B accepts (letters, digits, - _ .)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "report"


def log_wandb(run: TrackedRun) -> str:
    """WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY, WANDB_DIR, WANDB_API_KEY ... as for any W&B client."""
    os.environ.setdefault("WANDB_INIT_TIMEOUT", WANDB_INIT_TIMEOUT_DEFAULT)
    import wandb

    name = run.name or os.environ.get("WANDB_NAME") or run.model
    # console="off": the job's stdout is not copied into the run (nor anything printed in it)
    settings = wandb.Settings(console="off", silent=True)
    wrun = wandb.init(
        project=run.project, name=name, config=run.params, job_type="mtbench-eval", settings=settings
    )
    try:
        wrun.log(dict(run.metrics), step=run.step)
        art = wandb.Artifact(_wandb_name(f"mtbench-report-{run.model}"), type="mtbench-report")
        for path in run.artifacts:
            art.add_file(str(path), name=path.name)
        wrun.log_artifact(art)
    except BaseException:
        wrun.finish(exit_code=1)
        raise
    wrun.finish()
    return str(wrun.url or f"offline run {os.path.dirname(wrun.dir)} (`wandb sync` uploads it)")


SINKS: dict[str, Callable[[TrackedRun], str]] = {"mlflow": log_mlflow, "wandb": log_wandb}
