"""Judge samples (--judge-samples K) in the report, against hand-computed numbers: a pairwise
item's K samples make one pair of games (table and bias count games, not samples); only items
with several sample indices are collapsed (FastChat's duplicate rows still count, single and
pairwise); the HTML question browser shows every sample's judgment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_judge_cli import _jsonl
from test_report_diagnostics import SAMPLED, _write, answer, frame, pair, single

from job.records.judgments import read_judgment
from job.report import aggregate as agg
from job.report import bias
from job.report.publish import build_html
from job.report.runner import ReportConfig, run


def sampled(m1: str, m2: str, qid: int, *games: tuple[str, str]) -> list[dict[str, Any]]:
    """Sample 0 is written without a sample field (as `job judge` writes it), 1.. with one."""
    rows = [pair(m1, m2, g1, g2, qid) for g1, g2 in games]
    return [r if k == 0 else {**r, "sample": k} for k, r in enumerate(rows)]


M1, M2, TIE, ERR = "model_1", "model_2", "tie", "error"
PAIRS = [
    # g1 1, 1, 1 -> model_1; g2 1, 0, 1 (mean 2/3, median 1) -> model_1: x wins
    *sampled("x", "y", 81, (M1, M1), (M1, M2), (M1, M1)),
    # the error sample is left out; g1 0.5, 0 and g2 0.5, 0 (mean = median 0.25) -> y wins
    *sampled("x", "y", 82, (TIE, TIE), (M2, M2), (ERR, M1)),
    # g1 1, 0.5, 0.5: mean 2/3 -> model_1 (x wins), median 0.5 -> tie (a tie); g2 model_1 either way
    *sampled("x", "y", 83, (M1, M1), (TIE, M1), (TIE, M1)),
    *sampled("x", "y", 84, (ERR, M1), (M1, ERR)),  # no sample without an error: one error pair
    pair("x", "z", M1, M1), pair("x", "z", M1, M1),  # one sample, twice: FastChat counts both
]  # fmt: skip


def _rows(records: list[dict[str, Any]]) -> list[Any]:
    return [r for i, d in enumerate(records) for r in read_judgment(d, f"t:{i}", True)]


@pytest.mark.parametrize(("how", "x"), [("mean", [4, 1, 0]), ("median", [3, 1, 1])])
def test_pairwise_samples_make_one_pair_of_games(how: str, x: list[int]) -> None:
    """Counted per sample, x had 9 wins and 3 errors; per game: q81, q83 (mean) and both z rows."""
    games = agg.collapse_pair_samples(_rows(PAIRS), how)
    t, n_err = agg.fastchat_pairwise(agg.pair_frame(games), "pairwise-all", None)
    t = t.set_index("model")
    assert n_err == 1 and t.loc["x", ["win", "loss", "tie"]].tolist() == x
    assert t.loc["y", ["win", "loss", "tie"]].tolist() == [x[1], x[0] - 2, x[2]]
    assert t.loc["x", "win_rate_adjusted"] == pytest.approx((x[0] + x[2] / 2) / 5)
    b = bias.pair_bias(games, {})
    # 5 pairs: q81 (model_1, model_1), q82 (model_2, model_2), q83, z twice; all consistent but
    # q83 under the median (tie, model_1)
    assert (b["pairs"], b["consistent"]) == (5, 5 if how == "mean" else 4)
    assert b["decisive_games"] == (10 if how == "mean" else 9)


def test_one_sample_pairs_are_fastchats_rows() -> None:
    rows = _rows([pair("x", "z", M1, M1), pair("x", "z", M1, M2), pair("x", "z", M1, M1)])
    assert agg.collapse_pair_samples(rows, "median") is rows


def test_only_items_with_several_samples_are_collapsed() -> None:
    """a: two samples of q81 (4, 6: one item, 5); b: no sample field, q81 twice (8, 8) and q82
    (2): FastChat's show_result counts every row, (8 + 8 + 2) / 3 = 6, not (8 + 2) / 2."""
    df = frame([single("a", 81, 4, 0), single("a", 81, 6, 1), single("b", 81, 8), single("b", 81, 8),
                single("b", 82, 2)])  # fmt: skip
    out = agg.collapse_samples(df)
    avg = agg.fastchat_single(out)["average"]
    assert (avg["a"], avg["b"]) == (pytest.approx(5.0), pytest.approx(6.0))
    t = agg.score_table(out).set_index(["model", "category", "turn"])
    assert t.loc[("a", "all", "all"), "n_scored"] == 1 and t.loc[("b", "all", "all"), "n_scored"] == 3


def _answers(d: Path, models: dict[str, str], qids: list[int]) -> Path:
    for m, text in models.items():
        _write(d / f"{m}.jsonl", [{**answer(q, {"turns": [f"{text} {q}", f"{text} two"]}), "model_id": m}
                                  for q in qids])  # fmt: skip
    return d


def test_real_judge_pairwise_samples_count_games(run_job: Any, tmp_path: Path) -> None:
    """The real judge (mock/judge, deterministic: its K samples agree) at K = 1, then K = 3:
    the same table and bias counts, not three times them."""
    qids = [
        q["question_id"]
        for q in _jsonl(Path(__file__).resolve().parents[1] / "bench_data" / "smoke" / "question.jsonl")
    ]
    ans = _answers(tmp_path / "ans", {"m": "short", "n": "a much longer answer"}, qids)
    common = ["--bench", "smoke", "--output", str(tmp_path / "runs"), "--answers-dir", str(ans)]
    docs = []
    for k in ("1", "3"):
        p = run_job(
            "judge", *common, "--mode", "pairwise-all", "--judge-model", "mock/judge", "--judge-samples", k
        )
        assert p.returncode == 0, p.stderr[-2000:]
        cfg = ReportConfig(bench="smoke", mode="pairwise-all", output=str(tmp_path / "runs"),
                           answers_dir=str(ans), output_dir=str(tmp_path / f"rep{k}"))  # fmt: skip
        docs.append(run(cfg))
    one, three = docs
    games = sum(r["win"] + r["loss"] + r["tie"] for r in one["pairwise"])
    assert games == 2 * 2 * len(qids)  # both models of each of 2 turns x 9 questions
    assert three["pairwise"] == one["pairwise"] and three["judge_bias"] == one["judge_bias"]
    assert three["provenance"]["sample_scoring"] == "mean of 3 judge samples"
    assert one["provenance"]["sample_scoring"] is None


def test_question_browser_shows_every_judge_sample(shared_bench_data: Path, tmp_path: Path) -> None:
    """q81 of model a, judged 2, 9, 10 (SAMPLED): the item's mean 7 (median 9), then each sample."""
    j = _write(tmp_path / "j" / "gpt-4_single.jsonl", SAMPLED)
    ans = _answers(tmp_path / "ans", {"a": "text"}, [81, 82])
    for how, score in (("mean", "7.00"), ("median", "9.00")):
        cfg = ReportConfig(bench="mt_bench", judgments=[str(j)], answers_dir=str(ans), sample_agg=how,
                           output_dir=str(tmp_path / how), bench_data=str(shared_bench_data))  # fmt: skip
        page = build_html(cfg, run(cfg))["report.html"].decode()
        q81 = page[page.index("<b>Q81</b>") : page.index("<b>Q82</b>")]
        assert f"<b>judge: {how} of 3 judge samples: score {score}</b>" in q81
        for k, s in enumerate((2, 9, 10)):
            assert f'<b>sample {k}: score {s}</b><div class="txt">[[{s}]]</div>' in q81
        assert json.loads((tmp_path / how / "report.json").read_text())["provenance"]["sample_scoring"]


def test_question_browser_names_each_pairwise_sample(shared_bench_data: Path, tmp_path: Path) -> None:
    """q81's three samples (PAIRS) each shown with its index; a one-sample file shows no index."""
    ans = _answers(tmp_path / "ans", {"x": "xx", "y": "yy", "z": "zz"}, [81, 82, 83, 84])
    for name, rows in (("k3", PAIRS), ("k1", PAIRS[-2:])):
        j = _write(tmp_path / name / "gpt-4_pair.jsonl", rows)
        cfg = ReportConfig(bench="mt_bench", mode="pairwise-all", judgments=[str(j)], answers_dir=str(ans),
                           output_dir=str(tmp_path / name / "rep"), bench_data=str(shared_bench_data))  # fmt: skip
        page = build_html(cfg, run(cfg))["report.html"].decode()
        q81 = page[page.index("<b>Q81</b>") : page.index("<b>Q82</b>")]
        if name == "k1":
            assert q81.count("<b>x vs z, turn 1: g1 model_1, g2 model_1</b>") == 2
            continue
        for k, (g1, g2) in enumerate(((M1, M1), (M1, M2), (M1, M1))):
            assert f"<b>x vs y, turn 1, judge sample {k}: g1 {g1}, g2 {g2}</b>" in q81
