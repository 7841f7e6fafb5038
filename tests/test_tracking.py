"""`--log-to mlflow|wandb` (job.report.tracking) against the real libraries: a real MLflow
tracking server (sqlite backend, artifacts served by it) read back with MlflowClient; W&B in
offline mode read back with wandb's own .wandb reader (`wandb leet inspect --json`). A down
server is a one-line warning (or an error with --log-to-required) and the report is kept.

The judgment file is written by hand; every expected number below is computed by hand from it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ci_gate import unavailable

from job.benches import packaged_data_dir
from job.report import tracking

SECRET = "sk-tracking-test-secret-4242"
BIN = Path(sys.executable).parent
# smoke bench: q1 writing, q2 roleplay, q4 math; -1 is FastChat's "no score parsed" (failed)
ROWS = [
    ("ckpt-a", 1, 1, 8), ("ckpt-a", 1, 2, 6), ("ckpt-a", 4, 1, 4), ("ckpt-a", 4, 2, 2), ("ckpt-a", 2, 1, -1),
    ("ckpt-b", 1, 1, 10, 0), ("ckpt-b", 1, 1, 8, 1), ("ckpt-b", 1, 2, 9, 0), ("ckpt-b", 1, 2, 9, 1),
]  # fmt: skip
# ckpt-a by hand: average (8+6+4+2)/4 = 5 over 4 scored, 1 failed; turn 1 (8+4)/2 = 6; turn 2 (6+2)/2 = 4;
# writing (8+6)/2 = 7; math (4+2)/2 = 3; roleplay: nothing scored, 1 failed. ckpt-b has 2 judge
# samples (`sample`): items (10+8)/2 and (9+9)/2, average 9; sample means 9.5 and 8.5, their std
# (ddof 1) sqrt(0.5)
EXPECTED_A = {
    "average": 5.0, "average/n_scored": 4.0, "average/n_failed": 1.0, "turn1": 6.0, "turn2": 4.0,
    "turn1/n_failed": 1.0, "category/writing": 7.0, "category/math": 3.0, "category/roleplay/n_failed": 1.0,
}  # fmt: skip


def need(*tools: str) -> None:
    """The tracking extras: a skip on a developer machine without them, a failure in CI."""
    for tool in tools:
        if importlib.util.find_spec(tool) is None:
            unavailable(f"{tool} is not installed", f"pip install -e '.[{tool}]' (.ci/run does)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def judgments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("judgments") / "gpt-4_single.jsonl"
    rows = [
        {"question_id": q, "model": m, "judge": ["gpt-4", "single-v1"], "score": s, "turn": t, **extra}
        for m, q, t, s, *k in ROWS
        for extra in [{"sample": k[0]} if k else {}]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a sqlite store; artifacts uploaded through the server."""
    need("mlflow", "wandb")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db"]
    cmd += ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    log = (root / "server.log").open("wb")
    # no background job runner (MLflow 3 starts seven huey consumers): only tracking is tested
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd + ["--workers", "1"], stdout=log, stderr=log, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: a session of their own
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def _report(run_job: Any, judgments: Path, out: Path, *extra: str, env: dict[str, str]) -> Any:
    args = ["report", "--bench", "smoke", "--judgments", str(judgments), "--output-dir", str(out), *extra]
    return run_job(*args, env={"OPENAI_API_KEY": SECRET, "JOB_JUDGE_API_KEY": SECRET, **env}, timeout=240)


@pytest.mark.slow  # a real mlflow server: ~20-40 s to start on a loaded 2-core machine
def test_mlflow_server_gets_metrics_at_the_step_params_and_artifacts(
    run_job: Any, judgments: Path, mlflow_server: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    out = tmp_path / "rep"
    args = ["--step", "1200", "--log-to", "mlflow", "--tracking-project", "mt-exp"]
    p = _report(
        run_job,
        judgments,
        out,
        *args,
        "--tracking-run-name",
        "nightly",
        env={"MLFLOW_TRACKING_URI": mlflow_server},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("mt-exp")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"nightly-ckpt-a", "nightly-ckpt-b"}  # one run per model of the report
    run = runs["nightly-ckpt-a"]
    assert run.info.status == "FINISHED"
    for key, value in EXPECTED_A.items():
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] == [(1200, value)]
    assert "category/roleplay" not in run.data.metrics  # nothing scored: no number, only the count
    doc = json.loads((out / "report.json").read_text())
    (avg,) = [s for s in doc["scores"] if (s["model"], s["category"], s["turn"]) == ("ckpt-a", "all", "all")]
    assert (
        run.data.metrics["average/ci_low"]
        == avg["ci_low"]
        <= 5
        <= avg["ci_high"]
        == run.data.metrics["average/ci_high"]
    )
    b = runs["nightly-ckpt-b"].data.metrics
    assert (b["average"], b["judge_samples"]) == (9.0, 2) and b["judge_spread"] == pytest.approx(0.5**0.5)
    assert "judge_spread" not in run.data.metrics  # one sample: no spread
    question_file = packaged_data_dir() / "smoke" / "question.jsonl"
    expected = {
        "bench": "smoke", "mode": "single", "model": "ckpt-a", "judge": "gpt-4", "num_choices": "1",
        "step": "1200", "reference": "smoke-reference",
        "bench_data_sha256": hashlib.sha256(question_file.read_bytes()).hexdigest(),
    }  # fmt: skip
    assert expected.items() <= run.data.params.items()
    assert "model_spec" not in run.data.params  # job report does not know how the answers were made
    logged = json.dumps([run.data.params, run.data.tags, list(run.data.metrics)])
    assert SECRET not in logged and "sk-" not in logged
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert arts == {"report/report.html", "report/report.json", "report/scores.csv"}
    got = client.download_artifacts(run.info.run_id, "report/report.json", str(tmp_path))
    assert Path(got).read_bytes() == (out / "report.json").read_bytes()
    assert p.stdout.count("logged to mlflow: ") == 2


def _inspect(*args: str) -> str:
    p = subprocess.run(
        [str(BIN / "wandb"), "leet", "inspect", *args], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def wandb_env(root: Path) -> dict[str, str]:
    dirs = {
        k: str(root / k.lower())
        for k in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")
    }
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_SILENT": "true", **dirs}


def test_wandb_offline_run_read_back_with_wandbs_own_reader(
    run_job: Any, judgments: Path, tmp_path: Path, s3: Any
) -> None:
    """The report on S3 (moto): the artifacts are read back from where `job report` wrote them."""
    need("wandb")
    root = tmp_path / "wb"
    env = {**wandb_env(root), **s3.env, "WANDB_PROJECT": "proj-from-env", "OPENAI_API_KEY": SECRET}
    args = ["report", "--bench", "smoke", "--judgments", str(judgments), "--output", s3.uri("runs")]
    p = run_job(*args, "--model-list", "ckpt-a", "--log-to", "wandb", env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "no checkpoint step (--step): tracking metrics are logged at step 0" in p.stderr
    (run_dir,) = (root / "wandb").glob("offline-run-*")
    summary = json.loads(_inspect("--summary", "--json", str(run_dir)))
    assert (summary["project"], summary["name"], summary["state"], summary["step"]) == (
        "proj-from-env",
        "ckpt-a",
        "finished",
        0,
    )
    assert {k: summary["summary"][k] for k in EXPECTED_A} == EXPECTED_A
    assert summary["config"]["bench"] == "smoke" and summary["config"]["model"] == "ckpt-a"
    records = [json.loads(line) for line in _inspect("--json", str(run_dir)).splitlines()]
    (hist,) = [r["history"] for r in records if r["type"] == "history"]
    assert hist["step"].get("num", 0) == 0 and hist["item"]["turn2"] == 4.0
    (art,) = [r["artifact"] for r in records if r["type"] == "artifact"]
    assert art["type"] == "mtbench-report" and art["name"] == "mtbench-report-ckpt-a"
    assert {c["path"] for c in art["manifest"]["contents"]} == {"report.html", "report.json", "scores.csv"}
    sizes = {c["path"]: int(c["size"]) for c in art["manifest"]["contents"]}
    assert sizes["report.json"] == len(s3.get("runs/smoke/reports/report.json"))
    log = (run_dir / f"run-{summary['run_id']}.wandb").read_bytes().decode("utf-8", "replace")
    assert SECRET not in log and s3.env["AWS_SECRET_ACCESS_KEY"] not in log


@pytest.mark.slow  # three `job report` processes, MLflow's bounded retries
def test_down_server_warns_or_fails_and_keeps_the_report(
    run_job: Any, judgments: Path, tmp_path: Path
) -> None:
    need("mlflow", "wandb")
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_free_port()}"}  # nothing listens there
    p = _report(run_job, judgments, tmp_path / "warn", "--log-to", "mlflow", "--no-html", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    (line,) = [ln for ln in p.stderr.splitlines() if "--log-to mlflow" in ln]
    assert (
        "WARNING" in line and "ckpt-a, ckpt-b not logged" in line and "the report files are written" in line
    )
    assert json.loads((tmp_path / "warn" / "report.json").read_text())["scores"]
    p = _report(
        run_job, judgments, tmp_path / "req", "--log-to", "mlflow", "--log-to-required", "--no-html", env=env
    )
    assert p.returncode == 1
    (line,) = [ln for ln in p.stderr.splitlines() if "--log-to mlflow" in ln]
    assert (
        line.startswith("error: --log-to mlflow: ckpt-a, ckpt-b not logged") and "--log-to-required" in line
    )
    assert (tmp_path / "req" / "report.json").is_file() and (tmp_path / "req" / "scores.csv").is_file()
    # W&B online without a login refuses: the same one warning line
    env = {**wandb_env(tmp_path / "wb"), "WANDB_MODE": "online", "WANDB_BASE_URL": env["MLFLOW_TRACKING_URI"]}
    p = _report(run_job, judgments, tmp_path / "wandb", "--log-to", "wandb", "--no-html", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    (line,) = [ln for ln in p.stderr.splitlines() if "--log-to wandb" in ln]
    assert "WARNING" in line and "ckpt-a, ckpt-b not logged" in line and "API key" in line
    assert (tmp_path / "wandb" / "report.json").is_file()


def test_missing_library_is_a_one_line_error_naming_the_extra(
    job_env: dict[str, str], tmp_path: Path
) -> None:
    # the package made unimportable in the real CLI's process, as where the extra is not installed
    code = "import sys; sys.modules['wandb'] = None; from job.cli import main; main()"
    args = ["report", "--bench", "smoke", "--log-to", "wandb", "--output", str(tmp_path)]
    p = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=job_env, timeout=120
    )
    assert p.returncode == 2
    assert p.stderr.strip() == (
        "error: --log-to wandb: the wandb package is not installed; pip install 'mtbench-job[wandb]'"
    )


def test_metric_and_param_mapping_of_a_hand_written_report() -> None:
    doc = {
        "provenance": {
            "bench": "mt_bench", "mode": "pairwise-baseline", "judges": ["gpt-4"], "step": 3,
            "judge_model": "openai/gpt-4", "num_choices": {"m": 2}, "reference": None,
        },
        "scores": [
            {"model": "m", "category": "all", "turn": "all", "mean": 6.5, "ci_low": None, "n_scored": 8},
            {"model": "m", "category": "coding", "turn": "1", "mean": 2.0},  # category x turn: report.json only
            {"model": "other", "category": "all", "turn": "all", "mean": 1.0},
        ],
        "pairwise": [{"model": "m", "win": 3, "loss": 1, "tie": 0, "win_rate": 0.75, "loss_rate": float("nan")}],
        "judge_spread": {"m": {"k": 3, "means": [6, 6.5, 7], "std": 0.5}},
    }  # fmt: skip
    assert tracking.metrics_of(doc, "m") == {
        "average": 6.5, "average/n_scored": 8.0, "win": 3.0, "loss": 1.0, "tie": 0.0, "win_rate": 0.75,
        "judge_spread": 0.5, "judge_samples": 3.0,
    }  # fmt: skip
    assert tracking.params_of(doc, "m", "hf/org/ckpt") == {
        "bench": "mt_bench", "mode": "pairwise-baseline", "model": "m", "model_spec": "hf/org/ckpt",
        "judge": "gpt-4", "judge_model": "openai/gpt-4", "num_choices": "2", "step": "3",
    }  # fmt: skip
    assert tracking.step_of(doc) == 3 and tracking.models_of(doc) == ["m", "other"]
    err = ValueError("POST https://bob:pw@mlflow.example/api failed\n  retry")
    assert tracking.one_line(err) == "POST https://***@mlflow.example/api failed retry"


@pytest.mark.slow  # a real mlflow server: ~20-40 s to start on a loaded 2-core machine
def test_job_run_logs_each_model_to_both_tools_with_its_spec_and_step(
    run_job: Any, mlflow_server: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    (tmp_path / "models.txt").write_text("mock/echo echo-step-40\nmock/echo echo-step-80\n")
    env = {**wandb_env(tmp_path / "wb"), "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "ci"}
    args = ["run", "--bench", "smoke", "--models-file", "models.txt", "--judge-model", "mock/judge"]
    args += ["--log-to", "mlflow", "--log-to", "wandb", "--log-to-required", "--tracking-run-name", "nightly"]
    p = run_job(*args, env={"OPENAI_API_KEY": SECRET, **env}, timeout=280)
    assert p.returncode == 0, p.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    runs = {
        r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("ci").experiment_id])
    }
    assert set(runs) == {"nightly-echo-step-40", "nightly-echo-step-80"}
    wandb_runs = [
        json.loads(_inspect("--summary", "--json", str(d)))
        for d in (tmp_path / "wb" / "wandb").glob("offline-run-*")
    ]
    assert sorted(w["name"] for w in wandb_runs) == sorted(runs)
    for step in (40, 80):
        doc = json.loads(
            (tmp_path / "runs" / "smoke" / "reports" / f"echo-step-{step}" / "report.json").read_text()
        )
        (avg,) = [s for s in doc["scores"] if (s["category"], s["turn"]) == ("all", "all")]
        run = runs[f"nightly-echo-step-{step}"]
        # the step from the model name (job run's --step-pattern default), the spec from the command line
        history = client.get_metric_history(run.info.run_id, "average")
        assert [(m.step, m.value) for m in history] == [(step, avg["mean"])]
        assert {k: run.data.params[k] for k in ("model_spec", "judge_model", "step")} == {
            "model_spec": "mock/echo", "judge_model": "mock/judge", "step": str(step),
        }  # fmt: skip
        (w,) = [w for w in wandb_runs if w["name"] == f"nightly-echo-step-{step}"]
        assert (w["step"], w["summary"]["average"], w["config"]["model_spec"]) == (
            step,
            avg["mean"],
            "mock/echo",
        )
        assert SECRET not in json.dumps([run.data.params, run.data.tags, w])


def test_without_step_each_model_is_logged_at_the_step_of_its_name() -> None:
    """`job report` without --step: the leaderboard puts llm-step-200 at step 200 (its name);
    tracking logged it at step 0, so the two disagreed. Now both read the step the same way."""
    row = {"category": "all", "turn": "all", "mean": 5.0}
    doc = {"provenance": {"bench": "smoke", "step": None},
           "scores": [{**row, "model": "llm-step-200"}, {**row, "model": "iter7"}]}  # fmt: skip
    runs = tracking.tracked_runs(tracking.TrackingConfig(["mlflow"]), doc, [], None)
    assert [(r.model, r.step, r.params.get("step")) for r in runs] == [
        ("llm-step-200", 200, "200"),
        ("iter7", 0, None),
    ]
    custom = tracking.TrackingConfig(["mlflow"], step_pattern=r"iter(\d+)")
    assert [r.step for r in tracking.tracked_runs(custom, doc, [], None)] == [0, 7]
    pinned = {**doc, "provenance": {"step": 3}}  # --step names the checkpoint: it wins
    assert [r.step for r in tracking.tracked_runs(custom, pinned, [], None)] == [3, 3]
