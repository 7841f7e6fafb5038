"""report.html: built by the real CLI (generate -> reduce -> judge -> report --publish) on a
custom bench whose questions hold HTML, then rendered by headless Chromium (screenshot +
DOM), checked for tables, decoded charts, working filters, escaping and console errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from ci_gate import in_ci

REPO = Path(__file__).resolve().parent.parent
INJECT = '<script>document.title="pwned"</script></details></div><h1 id="injected">x</h1>'
QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": [f"Write about tags: {INJECT}", "Shorter, **bold**."]},
    {
        "question_id": 2,
        "category": "roleplay",
        "turns": ["Play a guide & say <b>hi</b>.", "Again in 日本語で."],
    },
    {"question_id": 3, "category": "stem", "turns": ["Explain `a < b && c > d`.", "Why?"]},
    {"question_id": 4, "category": "humanities", "turns": ["Name a poem.", "Quote it."]},
]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
]  # fmt: skip
# appended to a copy of the page: waits for load, exercises the filters, writes what it saw
PROBE = """<script>window.addEventListener('load',function(){
var imgs=[].map.call(document.querySelectorAll('img.chart'),function(i){return [i.complete,i.naturalWidth,i.naturalHeight];});
var sel=document.getElementById('f-cat');sel.value='writing';sel.dispatchEvent(new Event('change'));
var shown=[].filter.call(document.querySelectorAll('details.q'),function(d){return d.style.display!=='none';}).length;
sel.value='';sel.dispatchEvent(new Event('change'));
var pre=document.createElement('pre');pre.id='probe';
pre.textContent=JSON.stringify({imgs:imgs,shown_writing:shown,count:document.getElementById('f-count').textContent,title:document.title,
injected:!!document.getElementById('injected'),scripts:document.scripts.length});
document.body.appendChild(pre);});</script>"""


def chromium() -> str | None:
    found = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    if found is None and in_ci():
        pytest.fail(
            "chromium is not installed; .ci/setup.d/50-chromium.sh installs it (CI must not skip this)"
        )
    return found


def make_bench(root: Path) -> Path:
    data = root / "bench_data"
    (data / "htmlbench").mkdir(parents=True)
    lines = "\n".join(json.dumps(q, ensure_ascii=False) for q in QUESTIONS) + "\n"
    (data / "htmlbench" / "question.jsonl").write_text(lines, "utf-8")
    shutil.copy(
        REPO / "bench_data" / "smoke" / "judge_prompts.jsonl", data / "htmlbench" / "judge_prompts.jsonl"
    )
    return data


@pytest.fixture
def report_dir(tmp_path: Path, run_job) -> Path:  # type: ignore[no-untyped-def]
    data = make_bench(tmp_path)
    common = ["--bench", "htmlbench", "--output", str(tmp_path / "runs")]
    steps = [
        ["generate", *common, "--model", "mock/echo", "--num-choices", "2"],
        ["generate", *common, "--model", "mock/digest"],
        ["reduce", *common],
        ["judge", *common, "--judge-model", "mock/judge"],
        ["report", *common, "--publish", str(tmp_path / "pub")],
    ]
    for args in steps:
        p = run_job(*args, env={"JOB_BENCH_DATA": str(data)})
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return tmp_path / "runs" / "htmlbench" / "reports"


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_html_content_and_escaping(report_dir: Path, tmp_path: Path) -> None:
    page = (report_dir / "report.html").read_text("utf-8")
    p = _Text()
    p.feed(page)
    ids = {a.get("id") for _, a in p.tags}
    assert {"scores", "categories", "provenance", "questions", "f-cat", "judge-bias"} <= ids
    assert "injected" not in ids  # the answer's <h1> is text, not markup
    scripts = [t for t, _ in p.tags if t == "script"]
    assert len(scripts) == 1  # only our own filter script; the answers' <script> is escaped
    assert not [
        a for t, a in p.tags if t in ("link", "img") and not (a.get("src") or "data:").startswith("data:")
    ]
    assert "http://" not in page and "https://" not in page  # nothing fetched: works offline
    text = "".join(p.text)
    assert INJECT in text and "<b>hi</b>" in text and "a < b && c > d" in text
    doc = json.loads((report_dir / "report.json").read_text("utf-8"))
    for s in doc["scores"]:
        if s["category"] == "all" and s["turn"] == "all":
            assert f"{s['mean']:.2f}" in text
    # every judgment explanation and every answer turn is in the browser
    judg = [
        json.loads(x)
        for x in (report_dir.parent / "model_judgment" / "judge_single.jsonl").read_text().splitlines()
    ]
    assert len(judg) == 4 * 2 * 3 and all(j["judgment"] in text for j in judg)
    # published copy and latest pointers
    pub = tmp_path / "pub"
    (run,) = [d for d in (pub / "htmlbench").iterdir()]
    assert {f.name for f in run.iterdir()} == {
        "report.html",
        "report.json",
        "report.md",
        "scores.csv",
        "scores_bar.png",
        "radar.png",
    }
    for model in ("echo", "digest"):
        ptr = json.loads((pub / "latest" / "htmlbench" / f"{model}.json").read_text())
        assert (
            ptr["model"] == model
            and Path(ptr["report"]).read_bytes() == (report_dir / "report.json").read_bytes()
        )


def test_report_html_in_chromium(report_dir: Path, tmp_path: Path) -> None:
    exe = chromium()
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium); required when CI=true")
    probe = tmp_path / "probe.html"
    probe.write_text(
        (report_dir / "report.html").read_text("utf-8").replace("</body>", PROBE + "</body>"), "utf-8"
    )
    base = [exe, *CHROMIUM_FLAGS]
    dom = subprocess.run([*base, f"--user-data-dir={tmp_path / 'ud1'}", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=90)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    page = report_dir / "report.html"
    ss = subprocess.run([*base, f"--user-data-dir={tmp_path / 'ud2'}", "--window-size=1280,2000", f"--screenshot={shot}", page.as_uri()],
                        capture_output=True, text=True, timeout=90)  # fmt: skip
    assert ss.returncode == 0, ss.stderr[-2000:]
    console = [ln for out in (dom.stderr, ss.stderr) for ln in out.splitlines() if ":CONSOLE" in ln]
    assert console == []  # no JS error, no console output at all
    html = dom.stdout
    for tid in ("scores", "categories", "provenance", "questions", "judge-bias"):
        assert f'id="{tid}"' in html
    assert '<h1 id="injected">' not in html
    start = html.index('<pre id="probe">') + len('<pre id="probe">')
    import html as h

    probe_data = json.loads(h.unescape(html[start : html.index("</pre>", start)]))
    assert len(probe_data["imgs"]) == 2 and all(c and w > 200 and hh > 200 for c, w, hh in probe_data["imgs"])
    assert probe_data["shown_writing"] == 1 and probe_data["count"] == "4 of 4 questions"
    assert probe_data["title"] != "pwned" and not probe_data["injected"]
    assert probe_data["scripts"] == 2  # the page's filter script and this probe
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (2000, 1280) and img.std() > 0.05  # a real page, not a blank one
    keep = os.environ.get("JOB_TEST_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_html_without_matplotlib(report_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from job.report.html import render_html
    from job.report.plots import MISSING, plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    doc = json.loads((report_dir / "report.json").read_text("utf-8"))
    charts, note = plots(doc)
    assert charts == {} and note == MISSING
    page = render_html(doc, [], charts, note)
    assert 'id="charts-missing"' in page and "mtbench-job[report]" in page and "<img" not in page
