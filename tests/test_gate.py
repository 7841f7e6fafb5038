"""`job compare` output, the regression gate's arithmetic, and `job run`'s exit codes on
synthetic improvements and regressions (real CLI, mock model and mock judge)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job import gate as g
from job.errors import JobError


def make_doc(cells: dict[str, dict[str, tuple[float, float, float]]], bench: str = "smoke") -> dict[str, Any]:
    """{model: {category: (mean, ci_low, ci_high)}} -> a report.json-shaped document."""
    scores = [
        {"model": m, "category": c, "turn": "all", "mean": v[0], "std": None, "n_scored": 10, "n_failed": 0,
         "ci_low": v[1], "ci_high": v[2]}
        for m, cats in cells.items() for c, v in cats.items()
    ]  # fmt: skip
    return {
        "provenance": {"bench": bench, "judges": ["j"], "created_at": 0.0},
        "scores": scores,
        "pairwise": [],
    }


A = make_doc({"base": {"all": (6.0, 5.5, 6.5), "writing": (7.0, 6.0, 8.0), "math": (4.0, 3.8, 4.2)}})
B = make_doc({"ckpt": {"all": (6.5, 6.1, 6.9), "writing": (5.0, 4.0, 6.0), "math": (5.0, 4.8, 5.2)}})


def test_compare_cli_prints_deltas_with_cis(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.json").write_text(json.dumps(A))
    (tmp_path / "b.json").write_text(json.dumps(B))
    p = run_job("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert p.returncode == 0, p.stderr
    rows = {ln.split()[0]: ln for ln in p.stdout.splitlines() if ln.strip()}
    # writing: 5.0 - 7.0 = -2.00, half widths 1.0 and 1.0 -> ± sqrt(2) = 1.41
    assert (
        "-2.00" in rows["writing"]
        and "[-3.41, -0.59]" in rows["writing"]
        and rows["writing"].endswith("WORSE")
    )
    # math: +1.00 ± hypot(0.2, 0.2) = 0.28 -> better
    assert "+1.00" in rows["math"] and "[+0.72, +1.28]" in rows["math"] and rows["math"].endswith("better")
    # overall: +0.50 ± hypot(0.5, 0.4) = 0.64 -> CI holds 0, no flag
    assert "+0.50" in rows["all"] and "[-0.14, +1.14]" in rows["all"]
    assert not rows["all"].endswith(("better", "WORSE"))
    assert "A: base" in p.stdout and "B: ckpt" in p.stdout


def test_compare_bad_input(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "x.json").write_text('{"not": "a report"}')
    p = run_job("compare", str(tmp_path / "x.json"), str(tmp_path / "missing.json"))
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "x.json" in p.stderr


def test_pairing_rules() -> None:
    two = make_doc({"m1": {"all": (5, 4, 6)}, "m2": {"all": (6, 5, 7)}})
    assert g.pair_models(A, B, None, None) == [("base", "ckpt")]  # the only baseline model
    assert g.pair_models(two, make_doc({"m2": {"all": (1, 0, 2)}}), None, None) == [("m2", "m2")]
    with pytest.raises(JobError, match="--baseline-name"):
        g.pair_models(two, B, None, None)
    assert g.pair_models(two, B, "m1", None) == [("m1", "ckpt")]
    with pytest.raises(JobError, match="not in the A/baseline"):
        g.pair_models(two, B, "zzz", None)


@given(
    base=st.floats(1, 10),
    cur=st.floats(1, 10),
    max_drop=st.floats(0, 5),
)
def test_gate_fails_exactly_when_the_drop_exceeds_the_limit(base: float, cur: float, max_drop: float) -> None:
    res = g.gate(
        make_doc({"b": {"all": (base, base, base)}}), make_doc({"c": {"all": (cur, cur, cur)}}), max_drop
    )
    assert len(res) == 1 and res[0].regressed == (cur - base < -max_drop)
    assert g.summary(res).startswith("GATE FAIL" if res[0].regressed else "GATE PASS")
    suite = ET.fromstring(g.junit_xml(res, "smoke"))
    assert suite.get("failures") == str(int(res[0].regressed))


def test_no_score_is_a_regression() -> None:
    cur = make_doc({"c": {"all": (math.nan, math.nan, math.nan)}})
    cur["scores"][0].update(mean=None, ci_low=None, ci_high=None)
    (res,) = g.gate(A, cur, 10.0)
    assert res.regressed and "no score" in res.line()


# --- job run: exit codes on the smoke bench, mock model (fast) and mock judge -----------------


def _run(run_job, tmp_path: Path, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    args = ["run", "--bench", "smoke", "--model", "mock/echo", "--judge-model", "mock/judge"]
    return run_job(*args, "--output", str(tmp_path / "runs"), *extra, env=env)


def test_job_run_gate_exit_codes(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    first = _run(run_job, tmp_path, "--publish", str(tmp_path / "pub"))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1].startswith("RESULT (no baseline): echo ")
    doc = json.loads((tmp_path / "runs" / "smoke" / "reports" / "report.json").read_text())
    (overall,) = [s for s in doc["scores"] if s["category"] == "all" and s["turn"] == "all"]
    x = overall["mean"]

    def baseline(name: str, mean: float) -> str:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(make_doc({"main": {"all": (mean, mean - 0.3, mean + 0.3)}})))
        return str(path)

    cases = [  # (baseline average, max drop, expected exit code)
        ("improved", x - 1.0, 0.5, 0),
        ("within", x + 0.3, 0.5, 0),
        ("regressed", x + 2.0, 0.5, 3),
        ("regressed-strict", x + 0.01, 0.0, 3),
    ]
    for name, mean, drop, code in cases:
        junit = tmp_path / f"{name}.xml"
        p = _run(
            run_job,
            tmp_path,
            "--baseline",
            baseline(name, mean),
            "--max-drop",
            str(drop),
            "--junit-xml",
            str(junit),
        )
        assert p.returncode == code, (name, p.stdout[-500:], p.stderr[-2000:])
        last = p.stdout.strip().splitlines()[-1]
        assert last.startswith("GATE PASS" if code == 0 else "GATE FAIL"), last
        assert f"echo {x:.2f} vs baseline main {mean:.2f}" in last and f"delta {x - mean:+.2f}" in last
        suite = ET.fromstring(junit.read_bytes())
        assert suite.get("tests") == "1" and suite.get("failures") == str(int(code == 3))
    # the published latest pointer works as a baseline: same scores, delta 0
    p = _run(
        run_job,
        tmp_path,
        "--baseline",
        str(tmp_path / "pub" / "latest" / "smoke" / "echo.json"),
        "--max-drop",
        "0",
    )
    assert p.returncode == 0 and "delta +0.00" in p.stdout.splitlines()[-1], p.stderr[-2000:]


def test_job_run_bad_input_exits_2_before_any_work(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    p = _run(run_job, tmp_path, "--baseline", str(tmp_path / "missing.json"), "--max-drop", "1")
    assert p.returncode == 2 and "missing.json" in p.stderr and not (tmp_path / "runs").exists()
    p = _run(run_job, tmp_path, "--max-drop", "1")
    assert p.returncode == 2 and "--max-drop needs --baseline" in p.stderr
    (tmp_path / "two.json").write_text(
        json.dumps(make_doc({"m1": {"all": (5, 4, 6)}, "m2": {"all": (6, 5, 7)}}))
    )
    p = _run(run_job, tmp_path, "--baseline", str(tmp_path / "two.json"), "--max-drop", "1")
    assert p.returncode == 2 and "--baseline-name" in p.stderr and not (tmp_path / "runs").exists()


def test_publish_to_s3_and_compare_from_pointer(tmp_path: Path, run_job, s3) -> None:  # type: ignore[no-untyped-def]
    p = _run(run_job, tmp_path, "--publish", s3.uri("reports"), env=s3.env)
    assert p.returncode == 0, p.stderr[-2000:]
    keys = s3.list_keys("reports/")
    assert "reports/latest/smoke/echo.json" in keys
    names = {k.rsplit("/", 1)[1] for k in keys if k.startswith("reports/smoke/")}
    assert {"report.html", "report.json", "report.md", "scores.csv", "scores_bar.png", "radar.png"} <= names
    ptr = json.loads(s3.get("reports/latest/smoke/echo.json"))
    assert ptr["report"].startswith(f"s3://{s3.bucket}/reports/smoke/") and ptr["model"] == "echo"
    c = run_job("compare", s3.uri("reports/latest/smoke/echo.json"), ptr["report"], env=s3.env)
    assert c.returncode == 0, c.stderr
    (overall,) = [ln for ln in c.stdout.splitlines() if ln.startswith("all ")]
    assert " +0.00 " in overall and "[-" in overall  # same report: delta 0 and a CI around it
