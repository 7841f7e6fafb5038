"""Aggregation against hand-computed numbers: FastChat show_result and the Swallow convention."""

from __future__ import annotations

import math
from typing import Any

import pytest

from job.records.judgments import read_judgment
from job.report import aggregate as agg
from job.report.jachars import count_chars, share


def frame(rows: list[dict[str, Any]], cats: dict[str, str]) -> Any:
    """The score frame of hand-written rows, read as `job report` reads a file's lines."""
    return agg.single_frame([r for i, d in enumerate(rows) for r in read_judgment(d, f"t:{i}", False)], cats)


def pframe(rows: list[dict[str, Any]]) -> Any:
    return agg.pair_frame([r for i, d in enumerate(rows) for r in read_judgment(d, f"t:{i}", True)])


def single(model: str, qid: int, turn: int, score: float, **extra: Any) -> dict[str, Any]:
    return {
        "question_id": qid,
        "model": model,
        "judge": ["gpt-4", "single-v1"],
        "score": score,
        "turn": turn,
        **extra,
    }


CATS = {"1": "writing", "2": "math", "3": "writing"}

FASTCHAT_ROWS = [
    single("a", 1, 1, 8), single("a", 2, 1, 6), single("a", 3, 1, -1), single("a", 1, 1, 8),  # -1 dropped, duplicate kept
    single("a", 1, 2, 4), single("a", 2, 2, 5),
    single("b", 1, 1, 9), single("b", 2, 1, 3), single("b", 1, 2, 10),
]  # fmt: skip


def test_fastchat_single_numbers() -> None:
    df = frame(FASTCHAT_ROWS, CATS)
    res = agg.fastchat_single(df)
    assert res["turn1"].to_dict() == pytest.approx({"a": 22 / 3, "b": 6.0})
    assert res["turn2"].to_dict() == pytest.approx({"a": 4.5, "b": 10.0})
    # pooled over both turns' remaining rows, not the mean of the two turn means (5.9167 for a)
    assert res["average"].to_dict() == pytest.approx({"a": 6.2, "b": 22 / 3})
    assert list(res["average"].index) == ["b", "a"]  # sorted descending, as show_result prints
    assert agg.fastchat_single(df, ["b"])["average"].to_dict() == pytest.approx({"b": 22 / 3})
    # one choice: scores.csv's mean is FastChat's number, the failed row is counted
    t = agg.score_table(df).set_index(["model", "category", "turn"])
    assert t.loc[("a", "all", "all"), "mean"] == pytest.approx(6.2)
    assert t.loc[("a", "all", "1"), "mean"] == pytest.approx(22 / 3)
    assert (t.loc[("a", "all", "1"), "n_scored"], t.loc[("a", "all", "1"), "n_failed"]) == (3, 1)
    assert math.isnan(t.loc[("a", "all", "all"), "std"])  # one run: no spread


def swallow_rows() -> list[dict[str, Any]]:
    ok = {"status": "ok"}
    return [
        # choice-run 0
        single("s", 1, 1, 8, choice=0, **ok), single("s", 2, 1, 6, choice=0, **ok),
        single("s", 1, 2, 7, choice=0, **ok), single("s", 2, 2, 5, choice=0, **ok),
        # choice-run 1: one judgment failed to parse
        single("s", 1, 1, 9, choice=1, **ok), single("s", 2, 1, -1, choice=1, status="parse_error", error="no rating"),
        single("s", 1, 2, 4, choice=1, **ok), single("s", 2, 2, 8, choice=1, **ok),
    ]  # fmt: skip


def test_swallow_convention() -> None:
    df = frame(swallow_rows(), CATS)
    t = agg.score_table(df).set_index(["model", "category", "turn"])
    # run means: t1 = 7 and 9, t2 = 6 and 6, all = 6.5 and 7 (run 1 over its 3 scored rows)
    assert t.loc[("s", "all", "1"), ["mean", "std"]].tolist() == pytest.approx([8.0, math.sqrt(2)])
    assert t.loc[("s", "all", "2"), ["mean", "std"]].tolist() == pytest.approx([6.0, 0.0])
    assert t.loc[("s", "all", "all"), ["mean", "std"]].tolist() == pytest.approx([6.75, math.sqrt(0.125)])
    assert agg.fastchat_single(df)["average"]["s"] == pytest.approx(47 / 7)  # pooled differs: 6.714
    assert (t.loc[("s", "all", "all"), "n_scored"], t.loc[("s", "all", "all"), "n_failed"]) == (7, 1)
    assert t.loc[("s", "writing", "all"), ["mean", "std"]].tolist() == pytest.approx([7.0, math.sqrt(0.5)])
    assert t.loc[("s", "math", "all"), ["mean", "n_failed", "n_runs"]].tolist() == pytest.approx([6.75, 1, 2])
    assert agg.run_means(df, "s", "all") == pytest.approx([6.5, 7.0])
    assert list(agg.score_table(df).columns[:9]) == agg.SINGLE_COLUMNS


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    df = frame(swallow_rows() + [single("c", q, 1, 5, status="ok") for q in (1, 2, 3)], CATS)
    t1, t2 = agg.score_table(df, seed=0), agg.score_table(df, seed=0)
    assert t1.equals(t2)
    row = t1.set_index(["model", "category", "turn"]).loc[("s", "all", "all")]
    # a CI of the reported mean (mean of the run means, 6.75), not of the pooled 47/7
    assert row["ci_low"] <= row["mean"] == 6.75 <= row["ci_high"] and row["ci_low"] < row["ci_high"]
    const = t1.set_index(["model", "category", "turn"]).loc[("c", "all", "1")]
    assert (const["ci_low"], const["ci_high"]) == (5.0, 5.0)


def test_failed_row_superseded_by_a_rerun() -> None:
    rows = [
        single("s", 1, 1, -1, choice=0, status="api_error", error="503"),
        single("s", 1, 1, 7, choice=0, status="ok"),
    ]
    t = agg.score_table(frame(rows, CATS)).set_index(["model", "category", "turn"])
    assert (t.loc[("s", "all", "1"), "n_scored"], t.loc[("s", "all", "1"), "n_failed"]) == (1, 0)


def pair(m1: str, m2: str, g1: str, g2: str) -> dict[str, Any]:
    return {
        "question_id": 81,
        "model_1": m1,
        "model_2": m2,
        "g1_winner": g1,
        "g2_winner": g2,
        "judge": ["gpt-4", "pair-v2"],
        "turn": 1,
    }


PAIR_ROWS = [
    pair("x", "base", "model_1", "model_1"),  # x wins
    pair("x", "base", "model_1", "model_2"),  # inconsistent -> tie
    pair("x", "base", "tie", "tie"),  # tie
    pair("x", "base", "error", "model_1"),  # dropped
    pair("y", "base", "model_2", "model_2"),  # base wins
    pair("x", "y", "model_2", "model_2"),  # y wins
    pair("y", "x", "model_1", "model_1"),  # y wins
]


def _rows(t: Any) -> dict[str, list[float]]:
    return {
        r.model: [r.win, r.loss, r.tie, r.win_rate, r.loss_rate, r.win_rate_adjusted] for r in t.itertuples()
    }


def test_fastchat_pairwise_baseline() -> None:
    t, n_err = agg.fastchat_pairwise(pframe(PAIR_ROWS), "pairwise-baseline", "base")
    assert n_err == 1
    assert list(t["model"]) == ["x", "y"]  # baseline row removed, sorted by win_rate_adjusted
    got = _rows(t)
    assert got["x"] == pytest.approx([1, 0, 2, 1 / 3, 0, 2 / 3])
    assert got["y"] == pytest.approx([0, 1, 0, 0, 1, 0])


def test_fastchat_pairwise_all_and_model_list_quirk() -> None:
    t, _ = agg.fastchat_pairwise(pframe(PAIR_ROWS), "pairwise-all", "base")  # baseline ignored
    got = _rows(t)
    assert list(t["model"]) == ["y", "base", "x"]
    assert got["x"] == pytest.approx([1, 2, 2, 0.2, 0.4, 0.4])
    assert got["y"] == pytest.approx([2, 1, 0, 2 / 3, 1 / 3, 2 / 3])
    assert got["base"] == pytest.approx([1, 1, 2, 0.25, 0.25, 0.5])
    # --model-list filters model_1 only: y still appears through x-vs-y
    t2, _ = agg.fastchat_pairwise(pframe(PAIR_ROWS), "pairwise-all", None, ["x"])
    got2 = _rows(t2)
    assert got2["x"][:3] == [1, 1, 2] and got2["y"][:3] == [1, 0, 0] and got2["base"][:3] == [0, 1, 2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("こんにちは **world**", (5, 10)),
        ("# 見出し\n- 項目、です。", (9, 9)),
        ("ＡＢＣ！ abc", (4, 7)),
        ("[リンク](http://example.com/x)", (3, 3)),
        ("```python\nprint(1)\n```", (0, 8)),
        ("Hello, world.", (0, 12)),
        ("", (0, 0)),
    ],
)
def test_japanese_char_count(text: str, expected: tuple[int, int]) -> None:
    assert count_chars(text) == expected


def test_japanese_share_is_micro_averaged() -> None:
    assert share([(5, 10), (0, 30)]) == pytest.approx(5 / 40)
    assert share([]) is None


def _ci(df: Any, model: str, cat: str = "all", turn: str = "all") -> tuple[float, float]:
    row = agg.score_table(df).set_index(["model", "category", "turn"]).loc[(model, cat, turn)]
    return float(row["ci_low"]), float(row["ci_high"])


def test_each_models_ci_depends_only_on_its_own_judgments() -> None:
    cats = {str(q): "writing" if q % 2 else "math" for q in range(1, 13)}
    mine = [single("s", q, t, (q * 7 + t * 3) % 10 + 1, status="ok") for q in range(1, 13) for t in (1, 2)]
    others = [single(m, q, 1, (q * 5) % 10 + 1, status="ok") for m in ("a", "t") for q in range(1, 13)]
    alone = frame(mine, cats)
    together = frame(others + mine, cats)  # "a" sorts before "s": it drew first
    for cell in (("all", "all"), ("writing", "1"), ("math", "2")):
        assert _ci(together, "s", *cell) == _ci(alone, "s", *cell)
    lo, hi = _ci(alone, "s")
    assert lo < hi


def test_ci_is_of_the_mean_of_run_means() -> None:
    # run 0 scores 8 everywhere, run 1 scores 4 except one failed judgment: every resample
    # (that draws any question but q2) has run means 8 and 4, so the reported mean 6 has a
    # zero-width CI; the pooled mean (56/9) would move with how often q2 is drawn
    cats = {str(q): "writing" for q in range(1, 6)}
    rows = [single("s", q, 1, 8, choice=0, status="ok") for q in range(1, 6)]
    rows += [single("s", q, 1, 4, choice=1, status="ok") for q in range(1, 6) if q != 2]
    rows += [single("s", 2, 1, -1, choice=1, status="parse_error")]
    df = frame(rows, cats)
    t = agg.score_table(df).set_index(["model", "category", "turn"]).loc[("s", "all", "1")]
    assert t["mean"] == pytest.approx(6.0)
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((6.0, 6.0))
