"""Compare two report.json documents and gate a CI run on the result (pure, no I/O).

Exit codes of `job run` (documented in the README):
    0 pass, 1 unexpected failure, 2 bad input (JobError), 3 regression (an average dropped
    by more than --max-drop points, or the model got no score at all).

Like with like: two reports made with another bench, question file, judge, reference set or
judge prompt file are refused (JobError, exit 2) unless allow_mismatch; a field unknown on
either side (an older report, a FastChat file) is not compared.

Delta CIs are paired: both reports' per-question scores are resampled together over the
questions they share (the same bootstrap as the report's own CIs, of B's mean minus A's).
When the reports scored different questions (--first-n, a partial run), the delta itself is
taken over the shared questions too, so that the CI is one of the delta that is gated; the
output says how many were shared and left out, and by how much the reported means differ.
Reports without per-question scores (older versions) fall back to combining the two CIs as
independent normal errors, delta ± sqrt(h_a² + h_b²), labelled as an approximation.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import numpy as np

from job.errors import JobError
from job.report.aggregate import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, percentile_ci, resampled_means, rng_for

log = logging.getLogger(__name__)
EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_REGRESSION = 0, 1, 2, 3


def _cells(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["model"], s["category"]): s for s in doc.get("scores", []) if s["turn"] == "all"}


def models_of(doc: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(s["model"] for s in doc.get("scores", [])))


# (provenance key, how the one-line error names it); compared only where both reports know it
COMPARED = (
    ("bench", "bench"), ("bench_data_sha256", "question file sha256"), ("judges", "judge"),
    ("judge_model", "judge model"), ("reference", "reference set"),
    ("reference_sha256", "reference file sha256"), ("judge_prompts_sha256", "judge prompt file sha256"),
)  # fmt: skip


def _shown(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(map(str, sorted(v)))
    s = str(v)
    return s[:8] if len(s) == 64 else s  # a sha256: its prefix is enough to tell them apart


def mismatches(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    pa, pb = a.get("provenance") or {}, b.get("provenance") or {}
    out = []
    for key, name in COMPARED:
        va, vb = pa.get(key), pb.get(key)
        if va in (None, []) or vb in (None, []):
            continue
        if (sorted(va) if isinstance(va, list) else va) != (sorted(vb) if isinstance(vb, list) else vb):
            out.append(f"{name} (A: {_shown(va)}, B: {_shown(vb)})")
    return out


def check_comparable(a: dict[str, Any], b: dict[str, Any], allow_mismatch: bool = False) -> str | None:
    """Raise a one-line JobError when the reports were made differently; with allow_mismatch
    return the warning line instead (None when they match)."""
    diff = mismatches(a, b)
    if not diff:
        return None
    what = f"the reports differ in {'; '.join(diff)}"
    if not allow_mismatch:
        raise JobError(
            f"{what}: their scores are not comparable; compare like with like, or pass --allow-mismatch"
        )
    return f"{what} (--allow-mismatch: compared anyway)"


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
    out = []
    for m in [model_b] if model_b else mb:
        partner = model_a or (m if m in ma else ma[0] if len(ma) == 1 else None)
        if partner is None and not model_b:
            continue  # B's models without a namesake in A, when some have one
        if partner is None:
            raise JobError(
                f"cannot tell which baseline model to compare {m!r} with (baseline has {', '.join(ma)}); "
                "name it with --baseline-name / --model-a"
            )
        out.append((partner, m))
    if not out:
        raise JobError(
            f"cannot tell which baseline model to compare with (baseline has {', '.join(ma)}); name it with --baseline-name / --model-a"
        )
    return out


def _half(s: dict[str, Any] | None) -> float:
    if not s or s.get("ci_low") is None or s.get("ci_high") is None:
        return math.nan
    return (float(s["ci_high"]) - float(s["ci_low"])) / 2


def _questions(doc: dict[str, Any], model: str, category: str) -> dict[str, dict[str, Any]] | None:
    per = (doc.get("per_question") or {}).get(model)
    if per is None:
        return None  # an older report: no per-question scores
    return {q: v for q, v in per.items() if category == "all" or v.get("category") == category}


@dataclass
class Paired:
    """The paired comparison over the questions both reports scored."""

    ci: tuple[float, float] | None
    shared: int
    delta: float | None
    """B's mean minus A's over the shared questions (None when they share none)."""
    left_out: tuple[int, int] = (0, 0)
    """How many of A's and of B's questions the other report lacks."""


def paired(a: dict[str, Any], b: dict[str, Any], model_a: str, model_b: str, category: str) -> Paired | None:
    """The 95% CI of B's mean minus A's, resampling the shared questions together, and the
    delta on them; None when a report has no per-question scores."""
    qa, qb = _questions(a, model_a, category), _questions(b, model_b, category)
    if qa is None or qb is None:
        return None
    shared = sorted(set(qa) & set(qb))
    left_out = (len(qa) - len(shared), len(qb) - len(shared))
    if not shared:
        return Paired(None, 0, None, left_out)
    (sa, na), (sb, nb) = (
        tuple(np.array([q[s][k] for s in shared], float) for k in ("sum", "n")) for q in (qa, qb)
    )
    rng = rng_for(BOOTSTRAP_SEED, "paired", model_a, model_b, category)
    idx = rng.integers(0, len(shared), size=(BOOTSTRAP_SAMPLES, len(shared)))
    ci = percentile_ci(resampled_means(sb, nb, idx) - resampled_means(sa, na, idx))
    every = np.arange(len(shared))[None, :]  # the point estimate: all shared questions once
    delta = float(resampled_means(sb, nb, every)[0] - resampled_means(sa, na, every)[0])
    return Paired(ci, len(shared), delta, left_out)


@dataclass
class Delta:
    category: str
    a: dict[str, Any] | None
    b: dict[str, Any] | None
    pair: Paired | None = None
    """None: no per-question scores (the unpaired approximation)."""

    @property
    def paired(self) -> int | None:
        """How many shared questions the paired CI resampled (None: no per-question scores)."""
        return None if self.pair is None else self.pair.shared

    @property
    def mean_a(self) -> float | None:
        return None if not self.a or self.a.get("mean") is None else float(self.a["mean"])

    @property
    def mean_b(self) -> float | None:
        return None if not self.b or self.b.get("mean") is None else float(self.b["mean"])

    @property
    def means_delta(self) -> float | None:
        """The difference of the reported means (each over its own questions)."""
        return None if self.mean_a is None or self.mean_b is None else self.mean_b - self.mean_a

    @property
    def partial(self) -> bool:
        """The reports scored different questions: the delta is on the shared ones."""
        return self.pair is not None and self.pair.delta is not None and any(self.pair.left_out)

    @property
    def delta(self) -> float | None:
        # like with like, so that the paired CI is a CI of this number
        if self.partial and self.means_delta is not None:
            return self.pair.delta  # type: ignore[union-attr]
        return self.means_delta

    @property
    def ci(self) -> tuple[float, float] | None:
        if self.delta is None:
            return None
        if self.pair is not None:
            return self.pair.ci  # None when the reports share no question
        h = math.hypot(_half(self.a), _half(self.b))
        return None if math.isnan(h) else (self.delta - h, self.delta + h)

    def shared_note(self) -> str:
        if not self.partial:
            return ""
        la, lb = self.pair.left_out  # type: ignore[union-attr]
        return (f"on {self.paired} shared questions ({la} of A's, {lb} of B's left out; "
                f"the means differ by {_f(self.means_delta, True)})")  # fmt: skip


def deltas(a: dict[str, Any], b: dict[str, Any], model_a: str, model_b: str) -> list[Delta]:
    ca, cb = _cells(a), _cells(b)
    cats = sorted(({c for m, c in ca if m == model_a} | {c for m, c in cb if m == model_b}) - {"all"})
    return [
        Delta(c, ca.get((model_a, c)), cb.get((model_b, c)), paired(a, b, model_a, model_b, c))
        for c in ["all", *cats]
    ]


def _f(x: float | None, sign: bool = False) -> str:
    return "–" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}")


def _ci(s: dict[str, Any] | None) -> str:
    return "" if not s or s.get("ci_low") is None else f" [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"


def _ci_note(d: Delta) -> str:
    if d.paired == 0:
        return "no CI: the reports share no question (the delta compares means over different questions)."
    if d.partial:
        return f"delta B-A and its CI: {d.shared_note()}, paired bootstrap (A and B resampled together)."
    if d.paired is not None:
        return f"delta CI: paired bootstrap over {d.paired} shared questions (A and B resampled together)."
    return "delta CI: the two bootstrap CIs combined as independent errors (approximate: no per-question scores)."


def format_compare(
    a: dict[str, Any],
    b: dict[str, Any],
    model_a: str | None = None,
    model_b: str | None = None,
    allow_mismatch: bool = False,
) -> str:
    warning = check_comparable(a, b, allow_mismatch)
    lines = [f"WARNING: {warning}", ""] if warning else []
    for ma, mb in pair_models(a, b, model_a, model_b):
        rows = [("category", f"A: {ma}", f"B: {mb}", "delta B-A", "≈95% CI of delta", "")]
        ds = deltas(a, b, ma, mb)
        for d in ds:
            ci = d.ci
            flag = "" if ci is None or ci[0] <= 0 <= ci[1] else ("better" if ci[0] > 0 else "WORSE")
            rows.append((d.category, _f(d.mean_a) + _ci(d.a), _f(d.mean_b) + _ci(d.b), _f(d.delta, True),
                         "–" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]", flag))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines += [_ci_note(ds[0]), ""]
    return "\n".join(lines).rstrip() + "\n"


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
        on = f" {d.shared_note()}" if d.partial else ""
        return (f"{self.model} {_f(d.mean_b)} vs baseline {self.baseline_model} {_f(d.mean_a)} "
                f"(delta {_f(d.delta, True)}{on}{ci_s}; max drop {self.max_drop:g})")  # fmt: skip


def gate(
    baseline: dict[str, Any],
    current: dict[str, Any],
    max_drop: float,
    baseline_name: str | None = None,
    allow_mismatch: bool = False,
) -> list[GateResult]:
    if max_drop < 0:
        raise JobError(f"--max-drop must be >= 0 points, got {max_drop}")
    warning = check_comparable(baseline, current, allow_mismatch)
    if warning:
        log.warning("%s", warning)
    out = []
    for ma, mb in pair_models(baseline, current, baseline_name, None):
        overall = deltas(baseline, current, ma, mb)[0]
        if overall.paired == 0 and overall.means_delta is not None:  # a verdict on other questions
            la, lb = overall.pair.left_out  # type: ignore[union-attr]
            raise JobError(
                f"{mb} and baseline {ma} share no question ({lb} vs {la} scored): their averages are "
                "not comparable; gate against a baseline made on the same --question-ids / --first-n"
            )
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
