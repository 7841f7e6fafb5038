"""report.html: one self-contained page (inline CSS and JS, charts as base64 PNG) that works
offline, from the report.json document plus the per-question entries.

Every text that comes from data (answers hold HTML and markdown) goes through `esc`.
"""

from __future__ import annotations

import base64
import html
import json
import time
from typing import Any

from job.report.markdown import TRUNCATION_HEAD, truncation_cell
from job.report.plots import MISSING
from job.report.tables import diagnostics


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _f(x: Any, d: int = 2) -> str:
    return "–" if x is None else f"{float(x):.{d}f}"


def _pm(s: dict[str, Any] | None) -> str:
    if not s or s.get("mean") is None:
        return "–"
    return _f(s["mean"]) + (f" ± {_f(s['std'])}" if s.get("std") is not None else "")


def _ci(s: dict[str, Any] | None) -> str:
    if not s or s.get("ci_low") is None:
        return "–"
    return f"{_f(s['ci_low'])}–{_f(s['ci_high'])}"


def _table(tid: str, head: list[str], rows: list[list[str]]) -> str:
    """rows hold already-escaped cell HTML."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{tid}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _truncation(t: dict[str, Any] | None) -> str:
    text, bad = truncation_cell(t)
    return f'<span class="bad">{esc(text)}</span>' if bad else esc(text)


def scores_section(doc: dict[str, Any]) -> str:
    by = {(s["model"], s["category"], s["turn"]): s for s in doc["scores"]}
    models = list(dict.fromkeys(s["model"] for s in doc["scores"]))
    n_runs = doc["provenance"].get("num_choices") or {}
    fc_avg = (doc.get("fastchat") or {}).get("average") or {}
    trunc = doc.get("truncation") or {}
    head = ["model", "N", "turn 1", "turn 2", "average", "95% CI", "FastChat average", "n_scored", "n_failed"]
    spread = doc.get("judge_spread") or {}
    head += [TRUNCATION_HEAD] + (["judge std"] if spread else [])
    rows = []
    for m in models:
        t1, t2, a = (by.get((m, "all", t)) for t in ("1", "2", "all"))
        failed = (a or {}).get("n_failed", 0)
        rows.append([
            esc(m), esc(n_runs.get(m, "")), esc(_pm(t1)), esc(_pm(t2)), f"<b>{esc(_pm(a))}</b>", esc(_ci(a)),
            esc(_f(fc_avg.get(m))), esc((a or {}).get("n_scored", 0)),
            f'<span class="{"bad" if failed else ""}">{esc(failed)}</span>', _truncation(trunc.get(m)),
        ] + ([esc(_f((spread.get(m) or {}).get("std"), 3))] if spread else []))  # fmt: skip
    out = "<h2>Scores</h2><p class=note>Mean ± std across choice runs (Swallow, when N &gt; 1); "
    out += "95% bootstrap CI resampling questions; FastChat average = show_result's pooled mean.</p>"
    out += _table("scores", head, rows)
    cats = sorted({s["category"] for s in doc["scores"] if s["category"] != "all"})
    if cats:
        crow = []
        for m in models:
            cells = [esc(m)]
            for c in cats:
                s = by.get((m, c, "all"))
                cell = esc(_pm(s)) + (f"<br><small>{esc(_ci(s))}</small>" if s else "")
                if s and s.get("n_failed"):
                    cell += f' <small class="bad">({esc(s["n_failed"])} failed)</small>'
                cells.append(cell)
            crow.append(cells)
        out += "<h2>Per category (both turns)</h2>" + _table("categories", ["model", *cats], crow)
    ja = doc.get("japanese_char_share") or {}
    if ja:
        jc = sorted({c for v in ja.values() for c in v if c != "all"})
        jrows = [[esc(m), *(esc(_f(v.get(c), 3)) for c in ["all", *jc])] for m, v in ja.items()]
        out += "<h2>Japanese character share of the answers</h2>" + _table("ja", ["model", "all", *jc], jrows)
    return out


def pairwise_section(doc: dict[str, Any]) -> str:
    if not doc.get("pairwise"):
        return ""
    head = ["model", "win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted"]
    rows = [[esc(r["model"]), *(esc(r[k]) for k in head[1:4]), *(esc(_f(r[k], 4)) for k in head[4:])]
            for r in doc["pairwise"]]  # fmt: skip
    return f"<h2>Pairwise win rates ({esc(doc['provenance'].get('mode'))})</h2>" + _table(
        "pairwise", head, rows
    )


def diagnostics_section(doc: dict[str, Any]) -> str:
    """Judge noise, judge bias, reasoning and token usage (job.report.tables), when present."""
    return "".join(
        f"<h2>{esc(t.title)}</h2><p class=note>{esc(t.note)}</p>"
        + _table(t.tid, t.head, [[esc(c) for c in r] for r in t.rows])
        for t in diagnostics(doc)
    )


def charts_section(charts: dict[str, bytes], note: str | None) -> str:
    out = "<h2>Charts</h2>"
    if note:
        out += f'<p class="warn" id="charts-missing">{esc(note)}</p>'
    for name, png in charts.items():
        b64 = base64.b64encode(png).decode()
        out += f'<img class="chart" alt="{esc(name)}" src="data:image/png;base64,{b64}">'
    return out


PROV_KEYS = ("bench", "mode", "judges", "judge_model", "judge_prompts_sha256", "reference", "reference_sha256",
             "bench_data_sha256", "num_choices", "source", "package_version", "git_revision", "created_at")  # fmt: skip


def provenance_section(prov: dict[str, Any]) -> str:
    shown = dict(prov)
    if isinstance(shown.get("created_at"), (int, float)):  # epoch seconds -> readable UTC
        shown["created_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(shown["created_at"]))
    rows = [[esc(k), f"<code>{esc(json.dumps(shown.get(k), ensure_ascii=False))}</code>"] for k in PROV_KEYS]
    rows += [["judgment file", f"<code>{esc(f.get('path'))}</code> {esc(f.get('sha256') or '')}"]
             for f in prov.get("judgment_files", [])]  # fmt: skip
    return "<h2>Provenance</h2>" + _table("provenance", ["field", "value"], rows)


def _judgment(j: dict[str, Any] | None) -> str:
    if not j:
        return '<div class="judg muted">not judged</div>'
    if "samples" in j:  # K judge samples: the item's score, then each sample's judgment
        head = f"{esc(j['sample_agg'])} of {len(j['samples'])} judge samples: {_head(j)}"
        each = "".join(_judgment({**s, "label": f"sample {s['sample']}"}) for s in j["samples"])
        return f'<div class="judg{" bad" if j["status"] != "ok" else ""}"><b>judge: {head}</b>{each}</div>'
    label = f"{esc(j['label'])}: " if "label" in j else ""
    return (f'<div class="judg{" bad" if j["status"] != "ok" else ""}"><b>{label or "judge: "}{_head(j)}</b>'
            f'<div class="txt">{esc(j.get("judgment"))}</div></div>')  # fmt: skip


def _head(j: dict[str, Any]) -> str:
    if j["status"] != "ok":
        return f"{esc(j['status'])}: {esc(j.get('error'))}"
    return f"score {esc(_f(j['score']) if 'samples' in j else j.get('score'))}"


def _question(e: dict[str, Any]) -> str:
    failed = any(
        j["status"] != "ok" for rows in e["models"].values() for c in rows for j in c["judgments"].values()
    )
    failed = failed or any(c["status"] != "ok" for rows in e["models"].values() for c in rows)
    scores = []
    for m, rows in e["models"].items():
        vals = [j["score"] for c in rows for j in c["judgments"].values() if j["status"] == "ok"]
        scores.append(f"{esc(m)}: {esc(_f(sum(vals) / len(vals)) if vals else '–')}")
    parts = [f'<details class="q" data-cat="{esc(e["category"])}" data-failed="{int(failed)}">',
             f'<summary><b>Q{esc(e["question_id"])}</b> <span class="cat">{esc(e["category"])}</span> '
             f'<span class="qs">{" · ".join(scores)}</span></summary>']  # fmt: skip
    for t, text in enumerate(e["turns"], 1):
        parts.append(f'<div class="user"><b>Turn {t} (user)</b><div class="txt">{esc(text)}</div></div>')
    for m, rows in e["models"].items():
        parts.append(f'<div class="ans" data-model="{esc(m)}"><h4>{esc(m)}</h4>')
        for c in rows:
            st = (
                ""
                if c["status"] == "ok"
                else f' <span class="bad">{esc(c["status"])}: {esc(c["error"])}</span>'
            )
            parts.append(f'<div class="choice"><b>choice {esc(c["index"])}</b>{st}')
            for t in range(1, max(len(c["turns"]), len(c["judgments"])) + 1):
                text = c["turns"][t - 1] if t <= len(c["turns"]) else ""
                parts.append(f'<div class="turn"><i>turn {t}</i><div class="txt">{esc(text)}</div>'
                             f'{_judgment(c["judgments"].get(t))}</div>')  # fmt: skip
            parts.append("</div>")
        parts.append("</div>")
    sampled = any(p.get("sample") for p in e.get("pairs", []))  # K judge samples: say which one
    for p in e.get("pairs", []):
        which = f", judge sample {esc(p['sample'])}" if sampled else ""
        parts.append(f'<div class="pair"><b>{esc(p["model_1"])} vs {esc(p["model_2"])}, turn {esc(p["turn"])}{which}: '
                     f'g1 {esc(p["g1_winner"])}, g2 {esc(p["g2_winner"])}</b>'
                     f'<div class="txt">{esc(p.get("g1_judgment"))}</div><div class="txt">{esc(p.get("g2_judgment"))}</div></div>')  # fmt: skip
    parts.append("</details>")
    return "".join(parts)


def browser_section(entries: list[dict[str, Any]], models: list[str]) -> str:
    cats = sorted({e["category"] for e in entries})
    copt = "".join(f'<option value="{esc(c)}">{esc(c)}</option>' for c in cats)
    mopt = "".join(f'<option value="{esc(m)}">{esc(m)}</option>' for m in models)
    controls = (f'<div id="filters"><input id="f-text" type="search" placeholder="search text"> '
                f'<select id="f-cat"><option value="">all categories</option>{copt}</select> '
                f'<select id="f-model"><option value="">all models</option>{mopt}</select> '
                f'<label><input id="f-failed" type="checkbox"> failed only</label> <span id="f-count"></span></div>')  # fmt: skip
    body = "".join(_question(e) for e in entries)
    return f'<h2>Questions</h2>{controls}<div id="questions">{body}</div>'


CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}.note,.muted{color:#666;font-size:.9em}.bad{color:#b00}.warn{background:#fff3cd;padding:.5em}
img.chart{max-width:100%;margin:.5em 1em .5em 0;border:1px solid #eee}code{font-size:.85em;word-break:break-all}
details.q{border:1px solid #ddd;margin:.3em 0;padding:.3em .6em}summary{cursor:pointer}.cat{background:#eef;padding:0 .4em}
.qs{color:#555;font-size:.9em}.txt{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.85em;background:#fafafa;padding:.4em;margin:.2em 0}
.ans{border-left:3px solid #89a;padding-left:.6em;margin:.6em 0}.judg{border-left:3px solid #c90;padding-left:.5em}
.judg.bad{border-color:#b00}.user .txt{background:#eef6ff}#filters{position:sticky;top:0;background:#fff;padding:.4em 0}"""

JS = """(function(){
var t=document.getElementById('f-text'),c=document.getElementById('f-cat'),m=document.getElementById('f-model'),
f=document.getElementById('f-failed'),n=document.getElementById('f-count');
function apply(){var q=t.value.toLowerCase(),shown=0,all=document.querySelectorAll('details.q');
for(var i=0;i<all.length;i++){var d=all[i];var ok=(!c.value||d.dataset.cat===c.value)&&(!f.checked||d.dataset.failed==='1')
&&(!q||d.textContent.toLowerCase().indexOf(q)>=0);d.style.display=ok?'':'none';if(ok)shown++;
var as=d.querySelectorAll('.ans');for(var j=0;j<as.length;j++){as[j].style.display=(!m.value||as[j].dataset.model===m.value)?'':'none';}}
n.textContent=shown+' of '+all.length+' questions';}
[t,c,m,f].forEach(function(e){e.addEventListener('input',apply);e.addEventListener('change',apply);});apply();})();"""


def render_html(
    doc: dict[str, Any],
    entries: list[dict[str, Any]],
    charts: dict[str, bytes],
    chart_note: str | None = None,
) -> str:
    prov = doc["provenance"]
    models = list(
        dict.fromkeys(
            [s["model"] for s in doc.get("scores", [])] + [r["model"] for r in doc.get("pairwise", [])]
        )
    )
    if not charts and not chart_note and doc.get("scores"):
        chart_note = MISSING
    title = f"{prov.get('bench')}: judged by {', '.join(prov.get('judges') or [])}"
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        scores_section(doc) if doc.get("scores") else "",
        charts_section(charts, chart_note) if doc.get("scores") else "",
        pairwise_section(doc),
        diagnostics_section(doc),
        provenance_section(prov),
        browser_section(entries, models),
        f"<script>{JS}</script></body></html>",
    ]
    return "\n".join(parts)
