"""Charts of a report.json document as PNG bytes (matplotlib, Agg: no display needed).

matplotlib is an optional extra (`pip install 'mtbench-job[report]'`); `plots()` returns
an empty dict and a reason when it is missing, and the HTML says so instead of failing.
"""

from __future__ import annotations

import io
import math
from typing import Any

MISSING = "charts need matplotlib: pip install 'mtbench-job[report]'"


def _cells(doc: dict[str, Any]) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    by = {(s["model"], s["category"]): s for s in doc.get("scores", []) if s["turn"] == "all"}
    models = list(dict.fromkeys(s["model"] for s in doc.get("scores", [])))
    cats = sorted({c for _, c in by if c != "all"})
    return models, cats, by


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def radar(doc: dict[str, Any]) -> bytes | None:
    """One polygon per model over the categories (both turns), on the 0-10 scale."""
    import matplotlib.pyplot as plt

    models, cats, by = _cells(doc)
    if len(cats) < 3:
        return None  # a radar of one or two axes says nothing
    angles = [2 * math.pi * i / len(cats) for i in range(len(cats))]
    fig = plt.figure(figsize=(6.4, 5.6))
    try:
        ax = fig.add_subplot(projection="polar")
        for m in models:
            vals = [_num(by.get((m, c), {}).get("mean")) for c in cats]
            vals = [0.0 if math.isnan(v) else v for v in vals]
            ax.plot([*angles, angles[0]], [*vals, vals[0]], linewidth=1.6, label=m)
            ax.fill([*angles, angles[0]], [*vals, vals[0]], alpha=0.12)
        ax.set_xticks(angles)
        ax.set_xticklabels(cats)
        ax.set_ylim(0, 10)
        ax.set_title("Score by category (1-10)")
        ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=8)
        return _png(fig)
    finally:
        plt.close(fig)


def bars(doc: dict[str, Any]) -> bytes | None:
    """Grouped bars: overall and each category, one bar per model, 95% bootstrap CI whiskers."""
    import matplotlib.pyplot as plt

    models, cats, by = _cells(doc)
    if not models:
        return None
    groups = ["all", *cats]
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.0 * len(groups) + 2), 4.2))
    try:
        for i, m in enumerate(models):
            xs, ys, lo, hi = [], [], [], []
            for j, c in enumerate(groups):
                s = by.get((m, c))
                if not s or s.get("mean") is None:
                    continue
                y = float(s["mean"])
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(y)
                lo.append(max(0.0, y - _num(s.get("ci_low"))) if s.get("ci_low") is not None else 0.0)
                hi.append(max(0.0, _num(s.get("ci_high")) - y) if s.get("ci_high") is not None else 0.0)
            ax.bar(xs, ys, width=width * 0.95, yerr=[lo, hi], capsize=2, label=m)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=30, ha="right")
        ax.set_ylim(0, 10.5)
        ax.set_ylabel("mean score (95% CI)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        return _png(fig)
    finally:
        plt.close(fig)


def plots(doc: dict[str, Any]) -> tuple[dict[str, bytes], str | None]:
    """{file name: PNG bytes} and, when charts cannot be drawn, the reason."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
    except ImportError:
        return {}, MISSING
    out = {}
    for name, fn in (("scores_bar.png", bars), ("radar.png", radar)):
        png = fn(doc)
        if png:
            out[name] = png
    return out, None
