"""index.html of `job leaderboard`: one self-contained page (inline CSS, JS and SVG; nothing
fetched, so it opens offline and from a bucket). Per bench: a table sortable by any column
and a trend chart (score against checkpoint step, 95% CI band) per category."""

from __future__ import annotations

import html
import math
from typing import Any

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 720, 300, 48, 16, 12, 36
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
COLUMNS = [  # (heading, row key, format)
    ("model", "model", "s"), ("step", "step", "i"), ("average", "average", "f"), ("95% CI", "ci_low", "ci"),
    ("turn 1", "turn1", "f"), ("turn 2", "turn2", "f"), ("N", "num_choices", "i"),
    ("scored", "n_scored", "i"), ("failed", "n_failed", "i"), ("judge", "judge", "s"),
    ("reference", "reference", "s"), ("date", "date", "s"), ("git", "git_revision", "git"),
    ("report", "report_html", "link"),
]  # fmt: skip
CSS = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}td.s,th{text-align:left}
th{background:#f0f0f0;cursor:pointer;user-select:none}th.asc:after{content:" \\25B2"}th.desc:after{content:" \\25BC"}
tr.mismatch{background:#fff3cd}.flag{color:#a15c00;font-weight:600}code{font-size:12px}
svg text{font-size:11px}.chart{margin:.3em 0 1.5em}.note{color:#666}"""
JS = """document.querySelectorAll('table.board').forEach(function(t){
t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
var asc=!th.classList.contains('asc');t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
th.classList.add(asc?'asc':'desc');var body=t.tBodies[0],rows=[].slice.call(body.rows);
rows.sort(function(a,b){var x=a.cells[i].dataset.v,y=b.cells[i].dataset.v,nx=parseFloat(x),ny=parseFloat(y);
var c=(isNaN(nx)||isNaN(ny))?String(x).localeCompare(String(y)):nx-ny;return asc?c:-c;});
rows.forEach(function(r){body.appendChild(r);});});});});
document.querySelectorAll('select.cat').forEach(function(s){function show(){
document.querySelectorAll('svg[data-bench="'+s.dataset.bench+'"]').forEach(function(g){
g.style.display=g.dataset.cat===s.value?'':'none';});}s.addEventListener('change',show);show();});"""


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _num(v: object, fmt: str = "{:.2f}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and not math.isnan(v) else "-"


def _cell(row: dict[str, Any], key: str, kind: str) -> str:
    v = row.get(key)
    if kind == "ci":
        lo, hi = row.get("ci_low"), row.get("ci_high")
        return f'<td data-v="{_e(lo)}">[{_num(lo)}, {_num(hi)}]</td>'
    if kind == "link":
        return f'<td class="s" data-v="{_e(row["run"])}"><a href="{_e(v)}">report</a></td>'
    if kind == "git":
        return f'<td class="s" data-v="{_e(v or "")}"><code>{_e((v or "-")[:10])}</code></td>'
    if kind == "f":
        return f'<td data-v="{_e(v)}">{_num(v)}</td>'
    if kind == "i":
        return f'<td data-v="{_e("" if v is None else v)}">{_e("-" if v is None else v)}</td>'
    text = _e(v if v is not None else "-")
    if key == "model" and row["mismatch"]:
        text += f' <span class="flag" title="differs from the majority">&#9888; {_e(", ".join(row["mismatch"]))}</span>'
    return f'<td class="s" data-v="{_e(v or "")}">{text}</td>'


def table(bench: str, rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h, _, _ in COLUMNS)
    body = "".join(
        f'<tr class="{"mismatch" if r["mismatch"] else ""}">'
        + "".join(_cell(r, k, kind) for _, k, kind in COLUMNS)
        + "</tr>"
        for r in rows
    )
    return f'<table class="board" id="table-{_e(bench)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def chart(bench: str, cat: str, series: dict[str, list[dict[str, Any]]]) -> str:
    """One SVG: per series a CI band (polygon) and a mean line with a dot per step."""
    pts = [p for ps in series.values() for p in ps]
    steps = [p["step"] for p in pts]
    lows = [min(v for v in (p["ci_low"], p["mean"]) if v is not None) for p in pts]
    highs = [max(v for v in (p["ci_high"], p["mean"]) if v is not None) for p in pts]
    x0, x1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
    y0, y1 = max(0.0, min(lows) - 0.5), min(10.0, max(highs) + 0.5)
    y1 = y1 if y1 > y0 else y0 + 1

    def x(s: float) -> float:
        return PAD_L + (s - x0) / (x1 - x0) * (W - PAD_L - PAD_R)

    def y(v: float) -> float:
        return PAD_T + (y1 - v) / (y1 - y0) * (H - PAD_T - PAD_B)

    out = [
        f'<svg data-bench="{_e(bench)}" data-cat="{_e(cat)}" class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">'
    ]
    for v in _ticks(y0, y1):
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                   f'<text x="{PAD_L - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')  # fmt: skip
    for s in sorted(set(steps)) if len(set(steps)) <= 8 else _ticks(x0, x1):
        out.append(f'<text x="{x(s):.1f}" y="{H - PAD_B + 14}" text-anchor="middle">{s:g}</text>')
    out.append(f'<text x="{(W + PAD_L) / 2}" y="{H - 4}" text-anchor="middle">checkpoint step</text>')
    for i, (name, ps) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        band = [(x(p["step"]), y(p["ci_high"])) for p in ps if p["ci_high"] is not None]
        band += [(x(p["step"]), y(p["ci_low"])) for p in reversed(ps) if p["ci_low"] is not None]
        if len(band) > 2:
            pts_s = " ".join(f"{a:.1f},{b:.1f}" for a, b in band)
            out.append(
                f'<polygon class="band" points="{pts_s}" fill="{color}" fill-opacity="0.18" stroke="none"/>'
            )
        line = " ".join(f"{x(p['step']):.1f},{y(p['mean']):.1f}" for p in ps)
        out.append(f'<polyline class="trend" points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        for p in ps:
            if p["ci_low"] is not None and p["ci_high"] is not None:  # the CI of a lone point too
                out.append(f'<line class="ci" x1="{x(p["step"]):.1f}" x2="{x(p["step"]):.1f}" y1="{y(p["ci_low"]):.1f}" '
                           f'y2="{y(p["ci_high"]):.1f}" stroke="{color}" stroke-opacity="0.6"/>')  # fmt: skip
            tip = f"{p['model']} step {p['step']}: {_num(p['mean'])} [{_num(p['ci_low'])}, {_num(p['ci_high'])}]"
            out.append(
                f'<circle cx="{x(p["step"]):.1f}" cy="{y(p["mean"]):.1f}" r="3.5" fill="{color}"><title>{_e(tip)}</title></circle>'
            )
        out.append(
            f'<text x="{W - PAD_R - 4}" y="{PAD_T + 14 + 14 * i}" text-anchor="end" fill="{color}">{_e(name)}</text>'
        )
    return "".join(out) + "</svg>"


def bench_section(bench: str, b: dict[str, Any]) -> str:
    maj = b["majority"]
    cond = "; ".join(f"{k}: <code>{_e(str(v)[:16] if v is not None else '-')}</code>" for k, v in maj.items())
    odd = sum(1 for r in b["rows"] if r["mismatch"])
    parts = [f'<section class="bench" id="bench-{_e(bench)}"><h2>{_e(bench)}</h2>',
             f'<p class="note">majority conditions: {cond}. {odd} row(s) made otherwise are marked '
             "&#9888; and left out of the trend.</p>", table(bench, b["rows"])]  # fmt: skip
    if b["trend"]:
        opts = "".join(
            f'<option value="{_e(c)}">{_e("average" if c == "all" else c)}</option>' for c in b["trend"]
        )
        parts.append(f'<p>trend, category <select class="cat" data-bench="{_e(bench)}">{opts}</select></p>')
        parts += [chart(bench, c, s) for c, s in b["trend"].items()]
    else:
        parts.append(
            '<p class="note no-trend">no trend: no row has a checkpoint step (--step or --step-pattern)</p>'
        )
    return "".join(parts) + "</section>"


def render(doc: dict[str, Any]) -> str:
    """The page for leaderboard.json's document (job.report.leaderboard.Leaderboard.doc)."""
    sections = "".join(bench_section(n, b) for n, b in doc["benches"].items())
    skipped = (
        f'<p class="note">skipped {len(doc["skipped"])} unreadable report(s): see leaderboard.json</p>'
        if doc["skipped"]
        else ""
    )
    root, pattern = _e(doc["root"]), _e(doc["step_pattern"])
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>mtbench-job leaderboard</title>'
        f"<style>{CSS}</style></head><body><h1>Leaderboard</h1>"
        f'<p class="note">published reports under <code>{root}</code>; step from --step or '
        f"<code>{pattern}</code> on the model name. Click a heading to sort.</p>"
        f"{skipped}{sections}<script>{JS}</script></body></html>"
    )
