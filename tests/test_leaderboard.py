"""`job leaderboard ROOT` over a publish root (local and moto S3): rows, majority marks, trend
points, CSV/JSON, and the page in headless Chromium (sort, category select, no console output).

The published reports are written here with hand-chosen numbers in the layout --publish
writes (ROOT/<bench>/<run-id>/report.json); tests/test_run_e2e.py covers the real
`job run --publish` -> leaderboard path.
"""

from __future__ import annotations

import csv
import html as h
import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_report_html import CHROMIUM_FLAGS, chromium

from job.report.leaderboard import DEFAULT_STEP_PATTERN, compile_step_pattern, step_of

CATS = ("writing", "math")


def fake_report(
    model: str, mean: float, *, step: int | None = None, judge: str = "gpt-4", **prov: Any
) -> dict[str, Any]:
    """A report.json as `job report` writes it: turn 1 = mean - 0.5, turn 2 = mean + 0.5, CI +-0.4;
    category writing = mean + 1, math = mean - 1."""

    def row(cat: str, turn: str, m: float) -> dict[str, Any]:
        return {"model": model, "category": cat, "turn": turn, "mean": m, "std": 1.0, "n_scored": 20,
                "n_failed": 2, "ci_low": m - 0.4, "ci_high": m + 0.4, "n_runs": 1}  # fmt: skip

    scores = [row("all", "1", mean - 0.5), row("all", "2", mean + 0.5), row("all", "all", mean)]
    scores += [row("writing", "all", mean + 1), row("math", "all", mean - 1)]
    provenance = {
        "bench": "mt_bench", "mode": "single", "judges": [judge], "judge_model": f"openai/{judge}",
        "bench_data_sha256": "q" * 64, "judge_prompts_sha256": "p" * 64, "reference": "gpt-4",
        "num_choices": {model: 1}, "git_revision": "0123456789abcdef", "created_at": 1_790_000_000.0,
        "step": step, **prov,
    }  # fmt: skip
    return {"provenance": provenance, "scores": scores, "pairwise": []}


# (bench, run id, report): 100 and 200 by name, 300 by provenance step, 400 by another judge
RUNS = [
    ("mt_bench", "r1", fake_report("llm-step-100", 5.0)),
    ("mt_bench", "r2", fake_report("llm-step-200", 6.0, created_at=1_790_000_100.0)),
    ("mt_bench", "r3", fake_report("final", 7.0, step=300)),
    ("mt_bench", "r4", fake_report("odd-step-400", 9.0, judge="other-judge")),
    ("mt_bench", "r5", {**fake_report("pair", 1.0), "scores": []}),  # a pairwise report: skipped
    ("japanese_mt_bench", "r6", fake_report("plain", 4.0)),
]


def publish_fake(root: Path, runs: list[tuple[str, str, dict[str, Any]]] = RUNS) -> Path:
    for bench, run, doc in runs:
        (root / bench / run).mkdir(parents=True)
        (root / bench / run / "report.json").write_text(json.dumps(doc))
        (root / bench / run / "report.html").write_text("<html></html>")
    (root / "mt_bench" / "r7").mkdir()
    (root / "mt_bench" / "r7" / "report.json").write_text("{not json")
    (root / "latest" / "mt_bench").mkdir(parents=True)  # pointers are not runs
    (root / "latest" / "mt_bench" / "x.json").write_text(json.dumps({"kind": "mtbench-job/latest"}))
    return root


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from job.report.leaderboard import write

    root = publish_fake(tmp_path_factory.mktemp("lb") / "pub")
    write(str(root))
    return root


def test_step_pattern() -> None:
    rx = compile_step_pattern(DEFAULT_STEP_PATTERN)
    assert step_of("llm-jp-3-checkpoint_1200", rx) == (1200, "llm-jp-3-checkpoint_*")
    assert step_of("Model-STEP5", rx) == (5, "Model-STEP*")
    assert step_of("ckpt300-sft", rx) == (300, "ckpt*-sft")
    assert step_of("llama-3-8b", rx) == (None, "llama-3-8b")
    assert step_of("run7-epoch3", compile_step_pattern(r"epoch(\d+)")) == (3, "run7-epoch*")


def test_rows_marks_and_trend(board: Path) -> None:
    rows = list(csv.DictReader(io.StringIO((board / "leaderboard.csv").read_text())))
    mt = [r for r in rows if r["bench"] == "mt_bench"]
    assert [(r["model"], r["step"], r["average"]) for r in mt] == [
        ("odd-step-400", "400", "9.0"), ("final", "300", "7.0"), ("llm-step-200", "200", "6.0"),
        ("llm-step-100", "100", "5.0"),
    ]  # fmt: skip
    r200 = mt[2]
    assert (r200["turn1"], r200["turn2"], r200["ci_low"], r200["ci_high"]) == ("5.5", "6.5", "5.6", "6.4")
    assert (r200["n_scored"], r200["n_failed"], r200["num_choices"], r200["judge"]) == (
        "20",
        "2",
        "1",
        "gpt-4",
    )
    assert r200["report_html"] == "mt_bench/r2/report.html" and r200["date"] == "2026-09-21 14:15"
    assert [r["mismatch"] for r in mt] == ["judge;judge_model", "", "", ""]  # another judge: name and spec
    doc = json.loads((board / "leaderboard.json").read_text())
    assert sorted(s["path"] for s in doc["skipped"]) == ["mt_bench/r5/report.json", "mt_bench/r7/report.json"]
    trend = doc["benches"]["mt_bench"]["trend"]
    assert list(trend) == ["all", "math", "writing"]  # the average first
    assert {s: [(p["step"], p["mean"]) for p in ps] for s, ps in trend["all"].items()} == {
        "final": [(300, 7.0)],
        "llm-step-*": [(100, 5.0), (200, 6.0)],
    }  # fmt: skip  (the other judge's 400 is not on the curve)
    assert [p["mean"] for p in trend["writing"]["llm-step-*"]] == [6.0, 7.0]
    assert doc["benches"]["japanese_mt_bench"]["trend"] == {}
    page = (board / "index.html").read_text("utf-8")
    assert "http://" not in page and "https://" not in page and "<link" not in page  # offline
    assert page.count("<svg") == 3 and 'class="note no-trend"' in page  # mt_bench x 3 categories


def test_output_dir_links_back(board: Path, tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    p = run_job(
        "leaderboard", str(board), "--output-dir", str(tmp_path / "site"), "--step-pattern", r"step-(\d+)"
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "site" / "leaderboard.json").read_text())
    row = doc["benches"]["mt_bench"]["rows"][-1]
    assert (tmp_path / "site" / row["report_html"]).resolve() == board / "mt_bench" / "r1" / "report.html"
    assert doc["step_pattern"] == r"step-(\d+)"


@pytest.mark.parametrize(
    "args, msg",
    [
        ([], "no published reports under"),
        (["--step-pattern", "("], "not a regular expression"),
        (["--step-pattern", "step"], "needs one (group)"),
    ],
)
def test_bad_input(tmp_path: Path, run_job, args: list[str], msg: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty").mkdir()
    p = run_job("leaderboard", str(tmp_path / "empty"), *args)
    assert p.returncode == 2 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


# clicks "average" once (ascending; the page starts descending) and picks the writing chart
PROBE = """<script>window.addEventListener('load',function(){
var t=document.getElementById('table-mt_bench'),th=t.tHead.rows[0].cells[2];th.click();
var order=[].map.call(t.tBodies[0].rows,function(r){return r.cells[0].textContent.split(' ')[0];});
var sel=document.querySelector('select.cat[data-bench="mt_bench"]');sel.value='writing';sel.dispatchEvent(new Event('change'));
var shown=[].filter.call(document.querySelectorAll('svg[data-bench="mt_bench"]'),function(s){return s.style.display!=='none';})
.map(function(s){return [s.dataset.cat,s.querySelectorAll('polyline.trend').length,s.querySelectorAll('polygon.band').length];});
var pre=document.createElement('pre');pre.id='probe';pre.textContent=JSON.stringify({order:order,shown:shown,
marked:document.querySelectorAll('tr.mismatch').length});document.body.appendChild(pre);});</script>"""


def test_page_in_chromium(board: Path, tmp_path: Path) -> None:
    exe = chromium()
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium); required when CI=true")
    probe = board / "probe.html"  # beside index.html, so its relative links resolve the same
    probe.write_text((board / "index.html").read_text("utf-8").replace("</body>", PROBE + "</body>"), "utf-8")
    base = [exe, *CHROMIUM_FLAGS]
    dom = subprocess.run([*base, f"--user-data-dir={tmp_path / 'ud1'}", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=90)  # fmt: skip
    shot = tmp_path / "leaderboard.png"
    ss = subprocess.run([*base, f"--user-data-dir={tmp_path / 'ud2'}", "--window-size=1280,1400",
                         f"--screenshot={shot}", (board / "index.html").as_uri()],
                        capture_output=True, text=True, timeout=90)  # fmt: skip
    probe.unlink()
    assert dom.returncode == 0 and ss.returncode == 0, (dom.stderr[-2000:], ss.stderr[-2000:])
    assert [ln for out in (dom.stderr, ss.stderr) for ln in out.splitlines() if ":CONSOLE" in ln] == []
    start = dom.stdout.index('<pre id="probe">') + len('<pre id="probe">')
    seen = json.loads(h.unescape(dom.stdout[start : dom.stdout.index("</pre>", start)]))
    assert seen["order"] == ["llm-step-100", "llm-step-200", "final", "odd-step-400"]
    # writing alone shown: 2 series (final, llm-step-*); a band needs 2+ points: llm-step-* only
    assert seen["shown"] == [["writing", 2, 1]] and seen["marked"] == 1
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (1400, 1280) and img.std() > 0.05  # a drawn page, not a blank one


def test_s3_root(s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from job.report.leaderboard import write

    n = 40  # bench_leaderboard.py times 200; this keeps the default run fast
    client = s3.client()
    for i in range(n):
        doc = fake_report(f"llm-step-{(i + 1) * 10}", 1 + 8 * i / n)
        client.put_object(
            Bucket=s3.bucket, Key=f"pub/mt_bench/run{i:03d}/report.json", Body=json.dumps(doc).encode()
        )
    t0 = time.monotonic()
    write(s3.uri("pub"))
    took = time.monotonic() - t0
    doc = json.loads(s3.get("pub/leaderboard.json"))
    rows = doc["benches"]["mt_bench"]["rows"]
    assert (
        len(rows) == n
        and rows[0]["model"] == "llm-step-400"
        and rows[0]["report_html"] == "mt_bench/run039/report.html"
    )
    assert [p["step"] for p in doc["benches"]["mt_bench"]["trend"]["all"]["llm-step-*"]] == [
        10 * (i + 1) for i in range(n)
    ]
    assert b"<svg" in s3.get("pub/index.html") and s3.get("pub/leaderboard.csv").count(b"\n") == n + 1
    assert took < 10, took  # generous: the machine may be loaded


def test_slurm_one_array_per_model(tmp_path: Path) -> None:
    """slurm/submit_models.sh --dry-run: a submit.sh chain per model, then one leaderboard job."""
    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "models.txt").write_text(
        "hf/./out/checkpoint-100\n\n# broken one\nhf/./out/checkpoint-200 run1-step-200\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "JOB_BENCH": "mt_bench",
        "JOB_PUBLISH": "s3://b/board",
        "JOB_OUTPUT": "s3://b/exp",
    }
    p = subprocess.run([str(repo / "slurm" / "submit_models.sh"), "--dry-run", str(tmp_path / "models.txt")],
                       capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert (
        sum("generate.sbatch" in ln for ln in out) == 2
        and sum("reduce_judge.sbatch" in ln for ln in out) == 2
    )
    assert out[-1] == (
        "sbatch --parsable --job-name=mtb-leaderboard --dependency=afterany:<REDUCE_JOB_ID of checkpoint-100>"
        ':<REDUCE_JOB_ID of run1-step-200>  --wrap=" job leaderboard s3://b/board"'
    )
    assert "checkpoint-100 (hf/./out/checkpoint-100) -> s3://b/exp/checkpoint-100" in p.stderr
    (tmp_path / "bad.txt").write_text("hf/a name extra\n")
    bad = subprocess.run([str(repo / "slurm" / "submit_models.sh"), "--dry-run", str(tmp_path / "bad.txt")],
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "bad.txt:1: expected SPEC [NAME]" in bad.stderr


def test_a_report_json_of_another_shape_is_skipped_not_a_crash(tmp_path: Path) -> None:
    """A report.json whose score rows lack category/turn (another tool's, a hand edit) was a
    KeyError traceback that stopped the whole index; it is skipped with its reason."""
    from job.report.leaderboard import collect

    publish_fake(tmp_path, [("mt_bench", "r1", fake_report("llm-step-100", 5.0))])
    for run, scores in (("x1", [{"model": "x"}]), ("x2", {"a": 1}), ("x3", ["row"])):
        (tmp_path / "mt_bench" / run).mkdir()
        (tmp_path / "mt_bench" / run / "report.json").write_text(
            json.dumps({"provenance": {}, "scores": scores})
        )
    board = collect(str(tmp_path))
    assert [r["model"] for r in board.benches["mt_bench"]["rows"]] == ["llm-step-100"]
    skipped = {s["path"]: s["reason"] for s in board.skipped}
    assert all(
        "scores are not rows with category, model, turn" in skipped[f"mt_bench/{r}/report.json"]
        for r in ("x1", "x2", "x3")
    )


def test_a_report_scored_by_another_judge_sample_rule_or_judge_spec_is_marked(tmp_path: Path) -> None:
    """The median of 3 judge samples per item is another number than one judgment per item, and
    another judge spec under the same --judge-name another judge: such rows were mixed into the
    trend of the others unmarked."""
    from job.report.leaderboard import collect, to_csv

    runs = [
        ("mt_bench", "r1", fake_report("llm-step-100", 5.0)),
        ("mt_bench", "r2", fake_report("llm-step-200", 6.0)),
        ("mt_bench", "r3", fake_report("llm-step-300", 9.0, sample_scoring="median of 3 judge samples")),
        ("mt_bench", "r4", fake_report("llm-step-400", 9.0, judge_model="openai/gpt-4-0613")),  # same name
    ]
    board = collect(str(publish_fake(tmp_path, runs)))
    b = board.benches["mt_bench"]
    assert {r["model"]: r["mismatch"] for r in b["rows"]} == {
        "llm-step-100": [], "llm-step-200": [], "llm-step-300": ["sample_scoring"], "llm-step-400": ["judge_model"],
    }  # fmt: skip
    assert [p["step"] for p in b["trend"]["all"]["llm-step-*"]] == [100, 200]
    assert b["majority"]["sample_scoring"] is None
    assert "median of 3 judge samples,sample_scoring" in to_csv(board).decode()
