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
