"""`job run` end to end on the smoke bench: the built-in tiny hf model, the mock judge,
report.html + publish + JUnit, exactly as the README's quick start runs it."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_job_run_tiny_model_end_to_end(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    args = ["run", "--bench", "smoke", "--model", "hf-tiny", "--num-choices", "2", "--max-new-tokens", "16"]
    args += ["--judge-model", "mock/judge", "--publish", "pub", "--junit-xml", "gate.xml"]
    p = run_job(*args, timeout=380)
    assert p.returncode == 0, p.stderr[-3000:]
    for stage in ("[1/4] generate", "[2/4] reduce", "[3/4] judge", "[4/4] report"):
        assert stage in p.stderr
    reports = tmp_path / "runs" / "smoke" / "reports"
    doc = json.loads((reports / "report.json").read_text())
    (overall,) = [
        s for s in doc["scores"] if s["model"] == "hf-tiny" and s["category"] == "all" and s["turn"] == "all"
    ]
    # 9 questions x 2 choices x 2 turns, every one judged (ok or counted as failed)
    assert overall["n_scored"] + overall["n_failed"] == 36 and overall["n_scored"] > 0
    assert 1 <= overall["mean"] <= 10 and doc["provenance"]["num_choices"] == {"hf-tiny": 2}
    assert doc["provenance"]["judge_model"] == "mock/judge"
    assert (
        p.stdout.strip().splitlines()[-1]
        == f"RESULT (no baseline): hf-tiny {overall['mean']:.2f} (no baseline score)"
    )
    html = (reports / "report.html").read_text("utf-8")
    assert (
        'id="scores"' in html and html.count('<details class="q"') == 9 and "data:image/png;base64," in html
    )
    (run,) = list((tmp_path / "pub" / "smoke").iterdir())
    assert (run / "report.html").read_bytes() == (reports / "report.html").read_bytes()
    ptr = json.loads((tmp_path / "pub" / "latest" / "smoke" / "hf-tiny.json").read_text())
    assert ptr["average"] == overall["mean"] and Path(ptr["report"]) == (run / "report.json").resolve()
    assert ET.parse(tmp_path / "gate.xml").getroot().get("failures") == "0"


MODELS_FILE = """# three checkpoints of one training run; the middle one is broken
mock/echo   llm-step-100
mock/fail   llm-step-200
mock/digest llm-step-300
"""


@pytest.mark.slow  # about 10 s on an idle machine: three `job run` processes
def test_run_several_models_resumable(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "models.txt").write_text(MODELS_FILE)
    args = ["run", "--bench", "smoke", "--models-file", "models.txt", "--judge-model", "mock/judge"]
    args += ["--publish", "pub", "--junit-xml", "gate.xml"]
    p = run_job(*args)
    # the broken model does not stop the one after it, but the exit says something failed
    assert p.returncode == 2, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert lines[-1] == "MODELS: 2 of 3 finished; failed: llm-step-200"
    assert lines[-2].startswith("FAILED llm-step-200: error: ") and "mock/fail" in lines[-2]
    reports = tmp_path / "runs" / "smoke" / "reports"
    for model, step in (("llm-step-100", 100), ("llm-step-300", 300)):
        doc = json.loads((reports / model / "report.json").read_text())
        assert {s["model"] for s in doc["scores"]} == {model} and doc["provenance"]["step"] == step
    assert not (reports / "llm-step-200").exists()
    board = json.loads((tmp_path / "pub" / "leaderboard.json").read_text())
    rows = board["benches"]["smoke"]["rows"]
    assert sorted((r["model"], r["step"]) for r in rows) == [("llm-step-100", 100), ("llm-step-300", 300)]
    assert (tmp_path / "pub" / "index.html").is_file()
    assert ET.parse(tmp_path / "gate.xml").getroot().get("tests") == "2"
    # a re-run redoes nothing finished: no stage runs for 100 and 300, nothing is published again
    answers = tmp_path / "runs" / "smoke" / "model_answer" / "llm-step-100.jsonl"
    before = (answers.stat().st_mtime_ns, sorted(p.name for p in (tmp_path / "pub" / "smoke").iterdir()))
    again = run_job(*args)
    assert again.returncode == 2 and again.stdout.strip().splitlines()[-1] == lines[-1]
    for model in ("llm-step-100", "llm-step-300"):
        assert f"{model}: finished before with these settings" in again.stderr
    assert "[1/4] generate mock/fail" in again.stderr and "[1/4] generate mock/echo" not in again.stderr
    assert (
        answers.stat().st_mtime_ns,
        sorted(p.name for p in (tmp_path / "pub" / "smoke").iterdir()),
    ) == before
    # other settings are another run: the marker does not match, the model runs again
    (tmp_path / "two.txt").write_text("mock/echo llm-step-100\nmock/digest llm-step-300\n")
    third = run_job(*args[:3], "--models-file", "two.txt", *args[5:7], "--judge-name", "judge2")
    assert third.returncode == 0, third.stderr[-3000:]
    assert (
        "finished before" not in third.stderr
        and third.stdout.strip().splitlines()[-1] == "MODELS: 2 of 2 finished"
    )


def test_run_step_recorded(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    p = run_job("run", "--bench", "smoke", "--model", "mock/echo", "--judge-model", "mock/judge",
                "--step", "7", "--publish", "pub")  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert (
        p.stdout.strip().splitlines()[-1].startswith("RESULT (no baseline): echo ")
    )  # after the leaderboard
    reports = tmp_path / "runs" / "smoke" / "reports"
    assert json.loads((reports / "report.json").read_text())["provenance"]["step"] == 7
    rows = json.loads((tmp_path / "pub" / "leaderboard.json").read_text())["benches"]["smoke"]["rows"]
    assert [(r["model"], r["step"]) for r in rows] == [("echo", 7)]
    p = run_job("report", "--bench", "smoke", "--step", "42", "--no-html")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((reports / "report.json").read_text())["provenance"]["step"] == 42


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--model", "mock/echo", "--model", "mock/digest", "--step", "5"], "--step names one checkpoint"),
        (["--model", "mock/echo", "--model", "mock/echo"], "both get the name 'echo'"),
        (
            ["--model", "mock/echo", "--model", "mock/digest", "--model-name", "x"],
            "--model-name names one model",
        ),
        (["--models-file", "bad.txt"], "bad.txt:1: expected SPEC [NAME], got 3 fields"),
        (["--models-file", "latin.txt"], "latin.txt: not UTF-8 text (byte 13)"),  # was a traceback
        ([], "no model: pass --model SPEC"),
    ],
)
def test_run_several_models_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], msg: str
) -> None:
    from click.testing import CliRunner

    from job.cli import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.txt").write_text("mock/echo a b\n")
    (tmp_path / "latin.txt").write_bytes("mock/echo caf\u00e9\n".encode("latin-1"))
    r = CliRunner().invoke(cli, ["run", "--bench", "smoke", "--judge-model", "mock/judge", *extra])
    assert r.exit_code == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "runs").exists()  # refused before any work


def _run_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> int:
    """`job run` of two mock models in-process (exit 0); how many were 'finished before'."""
    import logging

    from click.testing import CliRunner

    from job.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JOB_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "m.txt").write_text("mock/fixed:<think>secret</think>answer a\nmock/echo b\n")
    args = ["run", "--models-file", "m.txt", "--judge-model", "mock/judge", "--question-ids", "3", *extra]
    seen: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda rec: seen.append(rec.getMessage())  # type: ignore[method-assign]
    logging.getLogger("job.pipeline.models").addHandler(handler)
    logging.getLogger("job.pipeline.models").setLevel(logging.INFO)
    try:
        r = CliRunner().invoke(cli, args)
    finally:
        logging.getLogger("job.pipeline.models").removeHandler(handler)
    assert r.exit_code == 0, r.output[-3000:]
    return sum("finished before" in m for m in seen)


def test_several_models_redo_a_model_whose_bench_file_changed_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The done marker named the reference set by name only: a reference answer fixed in
    place left both models 'finished before' with the numbers judged against the old text."""
    import shutil

    shutil.copytree(Path(__file__).resolve().parent.parent / "bench_data" / "smoke", tmp_path / "bd" / "mini")
    bench = ["--bench", "mini", "--bench-data", "bd", "--reference", "smoke-reference"]
    assert _run_models(tmp_path, monkeypatch, *bench) == 0
    assert _run_models(tmp_path, monkeypatch, *bench) == 2
    ref = tmp_path / "bd" / "mini" / "reference_answer" / "smoke-reference.jsonl"
    ref.write_text(ref.read_text().replace("Three socks", "Two socks"))  # question 3's reference
    assert _run_models(tmp_path, monkeypatch, *bench) == 0
    assert _run_models(tmp_path, monkeypatch, *bench) == 2


def test_several_models_take_keep_reasoning_and_sample_agg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both reach the stages (the judge sees the <think> block, report.json says median) and
    both are settings of the done marker: switching one redoes the models."""
    smoke = ["--bench", "smoke", "--judge-samples", "2"]
    assert _run_models(tmp_path, monkeypatch, *smoke) == 0
    rows = (tmp_path / "runs" / "smoke" / "model_judgment" / "judge_single.jsonl").read_text()
    assert "<think>secret" not in rows
    assert _run_models(tmp_path, monkeypatch, *smoke, "--keep-reasoning", "--sample-agg", "median") == 0
    rows = (tmp_path / "runs" / "smoke" / "model_judgment" / "judge_single.jsonl").read_text().splitlines()
    assert sum("<think>secret</think>answer" in r for r in rows) == 2 * 2  # model a's 2 turns x 2 samples
    doc = json.loads((tmp_path / "runs" / "smoke" / "reports" / "a" / "report.json").read_text())
    assert doc["judge_spread"]["sample_agg"] == "median"
    assert doc["provenance"]["sample_scoring"] == "median of 2 judge samples"  # what the leaderboard compares
    assert _run_models(tmp_path, monkeypatch, *smoke, "--keep-reasoning") == 0  # mean again


def test_report_publish_refreshes_the_leaderboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`job report --publish` re-indexes the publish root as `job run --publish` does (it left
    the leaderboard stale), the step from its --step-pattern."""
    from click.testing import CliRunner

    from job.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JOB_CACHE_DIR", str(tmp_path / "cache"))
    run = [
        "run",
        "--bench",
        "smoke",
        "--model",
        "mock/echo",
        "--model-name",
        "llm-iter7",
        "--question-ids",
        "1",
    ]
    assert CliRunner().invoke(cli, [*run, "--judge-model", "mock/judge"]).exit_code == 0
    r = CliRunner().invoke(
        cli, ["report", "--bench", "smoke", "--publish", "pub", "--step-pattern", r"iter(\d+)"]
    )
    assert r.exit_code == 0, r.output[-3000:]
    rows = json.loads((tmp_path / "pub" / "leaderboard.json").read_text())["benches"]["smoke"]["rows"]
    assert [(row["model"], row["step"]) for row in rows] == [("llm-iter7", 7)]
    assert (tmp_path / "pub" / "index.html").is_file()


def test_several_models_stay_finished_across_speed_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker held every backend option: a requeue with another --concurrency (or
    --base-url, --device ...) re-ran, re-reported and re-published every finished model (a
    second leaderboard row each); an option that changes the answers still redoes them."""
    smoke = ["--bench", "smoke", "--publish", "pub"]
    assert _run_models(tmp_path, monkeypatch, *smoke, "--concurrency", "2") == 0
    assert _run_models(tmp_path, monkeypatch, *smoke, "--concurrency", "3", "--request-timeout", "9") == 2
    assert len(list((tmp_path / "pub" / "smoke").iterdir())) == 2  # published once each
    assert _run_models(tmp_path, monkeypatch, *smoke, "--max-model-len", "64") == 0
