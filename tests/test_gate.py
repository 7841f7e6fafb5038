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
        "provenance": {"bench": bench, "judges": ["judge"], "created_at": 0.0},  # the mock judge's name
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
    # same report: delta 0, and paired over its own questions the delta CI has no width
    assert " +0.00 " in overall and "[+0.00, +0.00]" in overall


# --- like with like, paired delta CIs, pairing by --model-b (issue 12 item 9) -----------------


def test_only_model_b_pairs_with_the_same_name_or_the_only_baseline_model() -> None:
    two = make_doc({"ckpt": {"all": (5, 4, 6)}, "m2": {"all": (6, 5, 7)}})
    both = make_doc({"ckpt": {"all": (6, 5, 7)}, "other": {"all": (1, 0, 2)}})
    assert g.pair_models(two, both, None, "ckpt") == [("ckpt", "ckpt")]  # was ("", "ckpt")
    assert g.pair_models(A, both, None, "other") == [("base", "other")]
    with pytest.raises(JobError, match="--model-a"):
        g.pair_models(two, both, None, "other")


PROV = {
    "bench": "mt_bench", "judges": ["gpt-4"], "judge_model": "openai/gpt-4", "bench_data_sha256": "q" * 64,
    "reference": "gpt-4", "reference_sha256": "r" * 64, "judge_prompts_sha256": "p" * 64,
}  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("bench", "japanese_mt_bench", "bench"),
        ("judges", ["gpt-4o-2024-08-06"], "judge"),
        ("judge_model", "vllm/gpt-4", "judge model"),
        ("reference", "gpt-4o", "reference set"),
        ("reference_sha256", "s" * 64, "reference file sha256"),
        ("judge_prompts_sha256", "x" * 64, "judge prompt file sha256"),
        ("bench_data_sha256", "v" * 64, "question file sha256"),
    ],
)
def test_compare_refuses_reports_made_differently(
    tmp_path: Path, run_job, field: str, value: Any, named: str
) -> None:  # type: ignore[no-untyped-def]
    a, b = json.loads(json.dumps(A)), json.loads(json.dumps(B))
    a["provenance"].update(PROV)
    b["provenance"].update(PROV, **{field: value})
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    p = run_job("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert p.returncode == 2 and p.stdout == "", p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"error: the reports differ in {named} (A: ") and "--allow-mismatch" in line
    p = run_job("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--allow-mismatch")
    assert p.returncode == 0, p.stderr
    assert f"WARNING: the reports differ in {named}" in p.stdout


def test_same_provenance_or_unknown_fields_compare() -> None:
    a, b = json.loads(json.dumps(A)), json.loads(json.dumps(B))
    a["provenance"].update(PROV)
    b["provenance"].update(PROV, reference=None)  # unknown on one side: nothing to compare
    assert g.mismatches(a, b) == []


def _fastchat_file(path: Path, scores: dict[int, float], model: str) -> Path:
    rows = [{"question_id": q, "model": model, "judge": ["gpt-4", "single-v1"], "score": s, "turn": 1,
             "judgment": f"[[{s}]]", "user_prompt": "", "tstamp": 0.0} for q, s in scores.items()]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_paired_delta_ci_over_shared_questions(tmp_path: Path, run_job, shared_bench_data: Path) -> None:  # type: ignore[no-untyped-def]
    # questions vary a lot (wide independent CIs) but B is A + 1 on 16 of 20 real mt_bench questions
    qids = list(range(81, 101))
    base = dict(zip(qids, [2, 9, 4, 7, 1, 10, 3, 8, 5, 6] * 2, strict=True))
    cur = {q: min(s + 1, 10) if i % 5 else s for i, (q, s) in enumerate(base.items())}
    docs = []
    for name, scores in (("a", base), ("b", cur)):
        f = _fastchat_file(tmp_path / f"{name}.jsonl", scores, "m")
        p = run_job("report", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--judgments",
                    str(f), "--output-dir", str(tmp_path / name), "--no-html")  # fmt: skip
        assert p.returncode == 0, p.stderr[-2000:]
        docs.append(json.loads((tmp_path / name / "report.json").read_text()))
    a, b = docs
    d = g.deltas(a, b, "m", "m")[0]
    assert d.delta == pytest.approx(0.8)
    lo, hi = d.ci  # type: ignore[misc]
    assert 0.4 < lo < 0.8 < hi <= 1.0 and d.paired == 20
    # the two independent CIs combined would have held 0: the paired one is what sees the gain
    h = math.hypot(*((s["ci_high"] - s["ci_low"]) / 2 for s in (d.a, d.b)))  # type: ignore[index]
    assert d.delta - h < 0
    c = run_job("compare", str(tmp_path / "a" / "report.json"), str(tmp_path / "b" / "report.json"))
    assert c.returncode == 0, c.stderr
    (overall,) = [ln for ln in c.stdout.splitlines() if ln.startswith("all ")]
    assert overall.endswith("better") and "paired bootstrap over 20 shared questions" in c.stdout
    # a baseline that answered only some of the questions: the CI uses the shared ones only
    b_only = {q: s for q, s in cur.items() if q < 91}
    f = _fastchat_file(tmp_path / "c.jsonl", b_only, "m")
    assert run_job("report", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--judgments",
                   str(f), "--output-dir", str(tmp_path / "c"), "--no-html").returncode == 0  # fmt: skip
    c_doc = json.loads((tmp_path / "c" / "report.json").read_text())
    assert g.deltas(a, c_doc, "m", "m")[0].paired == 10


def test_unpaired_fallback_is_labelled(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    # reports without per-question scores (older versions): the approximation, said so
    (tmp_path / "a.json").write_text(json.dumps(A))
    (tmp_path / "b.json").write_text(json.dumps(B))
    p = run_job("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert "independent errors (approximate" in p.stdout


def test_job_run_refuses_a_baseline_made_differently(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other-judge.json"
    doc = make_doc({"main": {"all": (5.0, 4.0, 6.0)}})
    doc["provenance"]["judges"] = ["gpt-4"]
    other.write_text(json.dumps(doc))
    p = _run(run_job, tmp_path, "--baseline", str(other), "--max-drop", "1")
    assert p.returncode == 2 and not (tmp_path / "runs").exists(), p.stderr[-2000:]  # before any work
    assert (
        p.stderr.strip()
        .splitlines()[-1]
        .startswith("error: the reports differ in judge (A: gpt-4, B: judge)")
    )
    first = _run(run_job, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    base = json.loads((tmp_path / "runs" / "smoke" / "reports" / "report.json").read_text())
    base["provenance"]["judge_prompts_sha256"] = "0" * 64  # judged with another prompt file
    (tmp_path / "base.json").write_text(json.dumps(base))
    p = _run(run_job, tmp_path, "--baseline", str(tmp_path / "base.json"), "--max-drop", "0")
    assert p.returncode == 2, p.stderr[-2000:]
    assert "error: the reports differ in judge prompt file sha256 (A: 00000000" in p.stderr
    p = _run(
        run_job, tmp_path, "--baseline", str(tmp_path / "base.json"), "--max-drop", "0", "--allow-mismatch"
    )
    assert p.returncode == 0 and "delta +0.00" in p.stdout.splitlines()[-1], p.stderr[-2000:]
    assert "the reports differ in judge prompt file sha256" in p.stderr and "--allow-mismatch" in p.stderr


def test_no_shared_question_gives_no_ci() -> None:
    def doc(qids: range) -> dict[str, Any]:
        d = make_doc({"m": {"all": (5.0, 4.0, 6.0)}})
        d["per_question"] = {"m": {str(q): {"category": "writing", "sum": [5.0], "n": [1]} for q in qids}}
        return d

    (d,) = g.deltas(doc(range(1, 5)), doc(range(5, 9)), "m", "m")
    assert d.delta == 0 and d.ci is None and d.paired == 0  # not the unpaired approximation
    assert "[" not in g.format_compare(doc(range(1, 5)), doc(range(5, 9))).splitlines()[1].split("+0.00")[1]


def test_delta_is_taken_on_the_shared_questions_when_the_sets_differ() -> None:
    # A scored questions 1-4 (2, 4, 6, 8: mean 5), B only 1-2 (3, 5: mean 4, e.g. --first-n 2).
    # On the shared questions B is A + 1 on each: the delta is +1 (A 3, B 4), not 4 - 5 = -1,
    # and the paired CI is [+1, +1]: it holds the delta that is gated.
    def doc(model: str, scores: dict[int, float]) -> dict[str, Any]:
        mean = sum(scores.values()) / len(scores)
        d = make_doc({model: {"all": (mean, mean - 1, mean + 1)}})
        d["per_question"] = {
            model: {str(q): {"category": "writing", "sum": [s], "n": [1]} for q, s in scores.items()}
        }
        return d

    a, b = doc("m", {1: 2, 2: 4, 3: 6, 4: 8}), doc("m", {1: 3, 2: 5})
    (d,) = g.deltas(a, b, "m", "m")
    assert d.means_delta == pytest.approx(-1.0) and d.delta == pytest.approx(1.0)
    assert d.ci == pytest.approx((1.0, 1.0)) and d.paired == 2 and d.pair.left_out == (2, 0)  # type: ignore[union-attr]
    (r,) = g.gate(a, b, max_drop=0.5)
    assert not r.regressed
    assert (
        "delta +1.00 on 2 shared questions (2 of A's, 0 of B's left out; the means differ by -1.00)"
        in g.summary([r])
    )
    out = g.format_compare(a, b)
    (overall,) = [ln for ln in out.splitlines() if ln.startswith("all ")]
    assert "+1.00" in overall and "[+1.00, +1.00]" in overall and overall.endswith("better")
    assert "delta B-A and its CI: on 2 shared questions (2 of A's, 0 of B's left out" in out
    # the same questions on both sides: the delta is the difference of the reported means
    (same,) = g.deltas(a, doc("m", {1: 3, 2: 5, 3: 7, 4: 9}), "m", "m")
    assert same.delta == pytest.approx(1.0) and not same.partial and same.paired == 4


def test_gate_refuses_reports_that_share_no_question() -> None:
    """A baseline of questions 1-4 and a run of 5-8 (same question file) were gated on the
    difference of their averages over different questions: a pass or a fail on nothing."""

    def doc(qids: range, mean: float) -> dict[str, Any]:
        d = make_doc({"m": {"all": (mean, mean - 1, mean + 1)}})
        d["per_question"] = {"m": {str(q): {"category": "writing", "sum": [mean], "n": [1]} for q in qids}}
        return d

    with pytest.raises(JobError, match=r"m and baseline m share no question \(4 vs 4 scored\)"):
        g.gate(doc(range(1, 5), 6.0), doc(range(5, 9), 4.0), max_drop=1.0)
    assert "no CI: the reports share no question" in g.format_compare(
        doc(range(1, 5), 6.0), doc(range(5, 9), 4.0)
    )
    (r,) = g.gate(doc(range(1, 5), 6.0), doc(range(1, 5), 4.0), max_drop=1.0)  # the same questions: gated
    assert r.regressed
