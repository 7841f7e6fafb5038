"""report.md (and the summary on stdout) from the report.json document."""

from __future__ import annotations

from typing import Any

from job.report.tables import diagnostics


def _f(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pm(mean: Any, std: Any, digits: int = 2, scale: float = 1.0) -> str:
    if mean is None:
        return "–"
    s = f"{mean / scale:.{digits}f}"
    return s + (f" ± {std / scale:.{digits}f}" if std is not None else "")


TRUNCATION_HEAD = "cut at max tokens"


def truncation_cell(t: dict[str, Any] | None) -> tuple[str, bool]:
    """("15.0% (3/20) ⚠", True) for a model's share of turns that hit max_new_tokens; "unknown"
    when no answer file said how its turns ended. True: over the warning line, make it stand out."""
    if not t or t.get("share") is None:
        return "unknown", False
    bad = bool(t.get("warn"))
    return f"{t['share']:.1%} ({t['turns_truncated']}/{t['turns_known']})" + (" ⚠" if bad else ""), bad


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _summary(doc: dict[str, Any]) -> list[str]:
    scores = doc["scores"]
    by = {(s["model"], s["category"], s["turn"]): s for s in scores}
    models = list(dict.fromkeys(s["model"] for s in scores))
    ja = doc.get("japanese_char_share") or {}
    n_runs = doc["provenance"].get("num_choices", {})
    trunc = doc.get("truncation") or {}
    head = ["model", "N", "turn 1", "turn 2", "overall", "overall /10", "95% CI", "n_scored", "n_failed"]
    spread = doc.get("judge_spread") or {}
    head += [TRUNCATION_HEAD] + (["ja share"] if ja else []) + (["judge std"] if spread else [])
    rows = []
    for m in models:
        t1, t2, a = (by.get((m, "all", t), {}) for t in ("1", "2", "all"))
        row = [
            m, str(n_runs.get(m, "")), _pm(t1.get("mean"), t1.get("std")), _pm(t2.get("mean"), t2.get("std")),
            _pm(a.get("mean"), a.get("std")), _pm(a.get("mean"), a.get("std"), 3, 10.0),
            f"{_f(a.get('ci_low'))}–{_f(a.get('ci_high'))}", str(a.get("n_scored", 0)), str(a.get("n_failed", 0)),
        ]  # fmt: skip
        row.append(truncation_cell(trunc.get(m))[0])
        if ja:
            row.append(_f((ja.get(m) or {}).get("all"), 3))
        if spread:
            row.append(_f((spread.get(m) or {}).get("std"), 3))
        rows.append(row)
    out = ["## Scores (mean ± std across choice runs; 1–10)", "", *_table(head, rows), ""]
    cats = sorted({s["category"] for s in scores if s["category"] != "all"})
    if cats:
        crow = []
        for m in models:
            cells = []
            for c in cats:
                s = by.get((m, c, "all"))
                cell = _pm(s["mean"], s["std"]) if s else "–"
                if s and s["n_failed"]:
                    cell += f" ({s['n_failed']} failed)"
                cells.append(cell)
            crow.append([m, *cells])
        out += ["## Per category (both turns)", "", *_table(["model", *cats], crow), ""]
    if ja:
        jcats = sorted({c for v in ja.values() for c in v if c != "all"})
        jrows = [[m, *(_f(v.get(c), 3) for c in ["all", *jcats])] for m, v in ja.items()]
        out += [
            "## Japanese character share of the answers",
            "",
            *_table(["model", "all", *jcats], jrows),
            "",
        ]
    return out


def _rows_used(f: dict[str, Any]) -> str:
    if f.get("stored_rows") is None or f.get("rows") == f["stored_rows"]:
        return ""
    return f" ({f['rows']} of {f['stored_rows']} stored rows current)"


def render_markdown(doc: dict[str, Any], stdout: bool = False) -> str:
    prov = doc["provenance"]
    lines: list[str] = [] if stdout else [f"# {prov['bench']}: judged by {', '.join(prov['judges'])}", ""]
    if doc["scores"]:
        lines += _summary(doc)
    if doc["pairwise"]:
        head = ["model", "win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted"]
        rows = [
            [str(r["model"]), *(str(r[k]) for k in head[1:4]), *(_f(r[k], 4) for k in head[4:])]
            for r in doc["pairwise"]
        ]
        lines += ["## Pairwise (" + prov["mode"] + ")", "", *_table(head, rows), ""]
    for t in diagnostics(doc):
        lines += [f"## {t.title}", "", t.note, "", *_table(t.head, t.rows), ""]
    if not stdout:
        lines += ["## Provenance", ""]
        for k in (
            "judge_model",
            "judge_prompts_sha256",
            "reference",
            "reference_sha256",
            "bench_data_sha256",
            "sample_scoring",
            "num_choices",
            "source",
            "package_version",
            "git_revision",
        ):
            lines.append(f"- {k}: {prov.get(k)}")
        lines += [f"- judgment file: {f['path']}{_rows_used(f)}" for f in prov["judgment_files"]]
    return "\n".join(lines).rstrip() + "\n"
