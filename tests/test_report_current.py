"""`job report` on our own judgment files counts only the rows the judge manifest names as
current (content-addressed reuse, job.judge.store.current_rows), for the stored layout and
for --judgments FILE with its manifest beside it; provenance says how many rows it used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def _ok(p: Any) -> Any:
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _overall(doc: dict[str, Any], model: str = "echo") -> dict[str, Any]:
    (s,) = [s for s in doc["scores"] if s["model"] == model and s["category"] == "all" and s["turn"] == "all"]
    return s


def test_report_counts_only_the_current_rows(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    out = str(tmp_path / "runs")
    _ok(
        run_job("generate", "--bench", "smoke", "--model", "mock/echo", "--num-choices", "2", "--output", out)
    )
    _ok(run_job("reduce", "--bench", "smoke", "--output", out))
    judge = ["judge", "--bench", "smoke", "--output", out, "--judge-name", "mj"]
    _ok(run_job(*judge, "--judge-model", "mock/fixed:[[5]]"))
    _ok(run_job(*judge, "--judge-model", "mock/fixed:[[9]]"))  # another judge spec: all 36 judged again
    stored = (tmp_path / "runs" / "smoke" / "model_judgment" / "mj_single.jsonl").read_text().splitlines()
    assert len(stored) == 72  # the first run's rows are still in the file
    _ok(run_job("report", "--bench", "smoke", "--output", out, "--no-html"))
    doc = json.loads((tmp_path / "runs" / "smoke" / "reports" / "report.json").read_text())
    s = _overall(doc)
    assert (s["mean"], s["n_scored"], s["n_failed"]) == (9.0, 36, 0)  # was 7.0 over 72 rows
    (f,) = doc["provenance"]["judgment_files"]
    assert (f["rows"], f["stored_rows"]) == (36, 72)
    assert doc["provenance"]["judge_model"] == "mock/fixed:[[9]]"
    # the same file given as --judgments, its manifest beside it: the same rows
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "runs" / "smoke" / "model_judgment", copy)
    _ok(run_job("report", "--judgments", str(copy / "mj_single.jsonl"), "--output-dir", str(tmp_path / "rep"),
                "--no-html"))  # fmt: skip
    doc2 = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc2["provenance"]["bench"] == "smoke"  # named by the manifest
    assert (_overall(doc2)["mean"], _overall(doc2)["n_scored"]) == (9.0, 36)
    assert doc2["provenance"]["judgment_files"][0]["rows"] == 36
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"- judgment file: {copy / 'mj_single.jsonl'} (36 of 72 stored rows current)" in md
