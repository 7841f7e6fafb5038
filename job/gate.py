"""Compare two report.json documents and gate a CI run on the result (pure, no I/O).

Exit codes of `job run` (documented in the README):
    0 pass, 1 unexpected failure, 2 bad input (JobError), 3 regression (an average dropped
    by more than --max-drop points, or the model got no score at all).

Delta CIs combine the two reports' 95% bootstrap CIs as independent normal errors:
delta ± sqrt(h_a² + h_b²), h = half the CI width. An approximation, labelled as such.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from job.errors import JobError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_REGRESSION = 0, 1, 2, 3


def _cells(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["model"], s["category"]): s for s in doc.get("scores", []) if s["turn"] == "all"}


def models_of(doc: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(s["model"] for s in doc.get("scores", [])))


def pair_models(
    a: dict[str, Any], b: dict[str, Any], model_a: str | None, model_b: str | None
) -> list[tuple[str, str]]:
    """Which model of A each model of B is compared with: named, else same name, else the only one."""
    ma, mb = models_of(a), models_of(b)
    if not ma or not mb:
        raise JobError("a report has no single-mode scores to compare (pairwise reports are not gated)")
    for name, have, side in ((model_a, ma, "A/baseline"), (model_b, mb, "B/current")):
        if name and name not in have:
            raise JobError(f"model {name!r} is not in the {side} report (has: {', '.join(have)})")
    if model_a or model_b:
        return [(model_a or (ma[0] if len(ma) == 1 else ""), m) for m in ([model_b] if model_b else mb)]
    common = [m for m in mb if m in ma]
    if common:
        return [(m, m) for m in common]
    if len(ma) == 1:
        return [(ma[0], m) for m in mb]
    raise JobError(
        f"cannot tell which baseline model to compare with (baseline has {', '.join(ma)}); name it with --baseline-name / --model-a"
    )


def _half(s: dict[str, Any] | None) -> float:
    if not s or s.get("ci_low") is None or s.get("ci_high") is None:
        return math.nan
    return (float(s["ci_high"]) - float(s["ci_low"])) / 2


@dataclass
class Delta:
    category: str
    a: dict[str, Any] | None
    b: dict[str, Any] | None

    @property
    def mean_a(self) -> float | None:
        return None if not self.a or self.a.get("mean") is None else float(self.a["mean"])

    @property
    def mean_b(self) -> float | None:
        return None if not self.b or self.b.get("mean") is None else float(self.b["mean"])

    @property
    def delta(self) -> float | None:
        return None if self.mean_a is None or self.mean_b is None else self.mean_b - self.mean_a

    @property
    def ci(self) -> tuple[float, float] | None:
        h = math.hypot(_half(self.a), _half(self.b))
        if self.delta is None or math.isnan(h):
            return None
        return self.delta - h, self.delta + h


def deltas(a: dict[str, Any], b: dict[str, Any], model_a: str, model_b: str) -> list[Delta]:
    ca, cb = _cells(a), _cells(b)
    cats = sorted(({c for m, c in ca if m == model_a} | {c for m, c in cb if m == model_b}) - {"all"})
    return [Delta(c, ca.get((model_a, c)), cb.get((model_b, c))) for c in ["all", *cats]]


def _f(x: float | None, sign: bool = False) -> str:
    return "–" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}")


def _ci(s: dict[str, Any] | None) -> str:
    return "" if not s or s.get("ci_low") is None else f" [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"


def format_compare(
    a: dict[str, Any], b: dict[str, Any], model_a: str | None = None, model_b: str | None = None
) -> str:
    lines = []
    for ma, mb in pair_models(a, b, model_a, model_b):
        rows = [("category", f"A: {ma}", f"B: {mb}", "delta B-A", "≈95% CI of delta", "")]
        for d in deltas(a, b, ma, mb):
            ci = d.ci
            flag = "" if ci is None or ci[0] <= 0 <= ci[1] else ("better" if ci[0] > 0 else "WORSE")
            rows.append((d.category, _f(d.mean_a) + _ci(d.a), _f(d.mean_b) + _ci(d.b), _f(d.delta, True),
                         "–" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]", flag))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.append("")
    lines.append("delta CI: the two bootstrap CIs combined as independent errors (approximate).")
    return "\n".join(lines)


@dataclass
class GateResult:
    model: str
    baseline_model: str
    delta: Delta
    max_drop: float

    @property
    def regressed(self) -> bool:
        # no score now is a failure; no baseline score leaves nothing to compare with
        d = self.delta.delta
        return self.delta.mean_b is None or (d is not None and -d > self.max_drop)

    def line(self) -> str:
        d, ci = self.delta, self.delta.ci
        if d.mean_b is None:
            return f"{self.model}: no score (baseline {self.baseline_model} {_f(d.mean_a)})"
        if d.mean_a is None:
            return f"{self.model} {_f(d.mean_b)} (no baseline score)"
        ci_s = "" if ci is None else f", CI [{ci[0]:+.2f}, {ci[1]:+.2f}]"
        return (f"{self.model} {_f(d.mean_b)} vs baseline {self.baseline_model} {_f(d.mean_a)} "
                f"(delta {_f(d.delta, True)}{ci_s}; max drop {self.max_drop:g})")  # fmt: skip


def gate(
    baseline: dict[str, Any], current: dict[str, Any], max_drop: float, baseline_name: str | None = None
) -> list[GateResult]:
    if max_drop < 0:
        raise JobError(f"--max-drop must be >= 0 points, got {max_drop}")
    out = []
    for ma, mb in pair_models(baseline, current, baseline_name, None):
        overall = deltas(baseline, current, ma, mb)[0]
        out.append(GateResult(mb, ma, overall, max_drop))
    return out


def summary(results: list[GateResult]) -> str:
    """The one line for the CI log."""
    bad = [r for r in results if r.regressed]
    head = f"GATE FAIL (regression, exit {EXIT_REGRESSION})" if bad else "GATE PASS"
    return f"{head}: " + "; ".join(r.line() for r in results)


def junit_xml(results: list[GateResult], bench: str) -> bytes:
    suite = ET.Element("testsuite", name=f"mtbench-job gate {bench}", tests=str(len(results)),
                       failures=str(sum(r.regressed for r in results)), errors="0")  # fmt: skip
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"mtbench.{bench}", name=f"{r.model} average")
        if r.regressed:
            ET.SubElement(case, "failure", message=r.line(), type="regression").text = r.line()
        else:
            ET.SubElement(case, "system-out").text = r.line()
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)
