"""The report's diagnostic tables as plain text cells, shared by report.md and report.html
(each renders and escapes them its own way): judge spread over judge samples, judge bias,
reasoning turns, judge token usage. A table is left out when the report has no data for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Table:
    tid: str
    title: str
    note: str
    head: list[str]
    rows: list[list[str]]


def num(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def pct(x: Any) -> str:
    return "–" if x is None else f"{x:.1%}"


def _of(k: int, n: int, rate: Any) -> str:
    return f"{pct(rate)} ({k}/{n})"


def judge_spread(doc: dict[str, Any]) -> Table | None:
    spread = {m: v for m, v in (doc.get("judge_spread") or {}).items() if isinstance(v, dict)}
    if not spread:
        return None
    how = doc["judge_spread"].get("sample_agg", "mean")
    rows = [
        [m, str(v["k"]), num(v["std"], 3), ", ".join(num(x, 3) for x in v["means"])]
        for m, v in spread.items()
    ]
    note = (f"Each item's score is the {how} of its judge samples; the judge's own spread is the std of "
            "the model mean computed on each judge sample alone (next to the spread over choice runs).")  # fmt: skip
    return Table(
        "judge-spread",
        "Judge noise (judge samples)",
        note,
        ["model", "K", "judge std", "mean per sample"],
        rows,
    )


def judge_bias(doc: dict[str, Any]) -> Table | None:
    b = doc.get("judge_bias") or {}
    if b.get("pairwise"):
        p = b["pairwise"]
        rows = [
            ["position consistency", _of(p["consistent"], p["pairs"], p["position_consistency"])],
            ["inconsistent pairs (ties in FastChat's numbers)", str(p["inconsistent"])],
            ["first-position win rate", _of(p["first_position_wins"], p["decisive_games"], p["first_position_win_rate"])],
            ["longer-answer win rate", _of(p["longer_answer_wins"], p["length_games"], p["longer_answer_win_rate"])],
        ]  # fmt: skip
        note = ("Pairs whose two games (both orders) agree; decisive games won by the answer shown first "
                "and by the longer answer (characters; unbiased: 50%).")  # fmt: skip
        return Table("judge-bias", "Judge bias", note, ["diagnostic", "value"], rows)
    single = b.get("single") or {}
    if not single:
        return None
    rows = [[m, str(v["n"]), num(v["spearman"], 3)] for m, v in single.items()]
    note = "Spearman rank correlation of each scored turn's score with its answer length (characters)."
    return Table("judge-bias", "Judge bias", note, ["model", "scored turns", "Spearman(score, length)"], rows)


def reasoning(doc: dict[str, Any]) -> Table | None:
    r = doc.get("reasoning") or {}
    if not any(v.get("share_reasoning") for v in r.values()):
        return None
    head = [
        "model",
        "turns",
        "with reasoning",
        "mean reasoning chars",
        "mean answer chars",
        "unterminated",
        "truncated",
    ]
    rows = [[m, str(v["turns"]), pct(v["share_reasoning"]), num(v["mean_reasoning_chars"], 0),
             num(v["mean_answer_chars"], 0), pct(v["share_unterminated"]), pct(v["share_truncated"])]
            for m, v in r.items()]  # fmt: skip
    note = "Answer turns of the ok choices; the judged answer has the reasoning removed."
    return Table("reasoning", "Reasoning", note, head, rows)


def usage(doc: dict[str, Any]) -> Table | None:
    u = doc.get("judge_usage") or {}
    if not u:
        return None
    rows = [[j, str(v["prompt_tokens"]), str(v["completion_tokens"])] for j, v in u.items()]
    note = "Token usage the judge API reported, summed over the run (judge manifest usage_total)."
    return Table(
        "judge-usage", "Judge token usage", note, ["judge", "prompt tokens", "completion tokens"], rows
    )


def diagnostics(doc: dict[str, Any]) -> list[Table]:
    return [t for t in (judge_spread(doc), judge_bias(doc), reasoning(doc), usage(doc)) if t is not None]
