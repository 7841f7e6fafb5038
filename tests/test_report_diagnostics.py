"""Report diagnostics against hand-computed numbers: judge samples (score per item = mean or
median of its samples, the judge's own spread), judge bias (pairwise position consistency,
first-position and longer-answer win rates; single: Spearman of score with length),
reasoning turns and judge token usage; through the real `job report` on mt_bench ids."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from job.errors import JobError
from job.records import Answer
from job.records.judgments import read_judgment
from job.report import aggregate as agg
from job.report import answer_stats, bias

CATS = {"81": "writing", "82": "writing", "83": "writing"}


def single(model: str, qid: int, score: float, sample: int | None = None, **extra: Any) -> dict[str, Any]:
    row = {"question_id": qid, "model": model, "judge": ["gpt-4", "single-v1"], "user_prompt": "p",
           "judgment": f"[[{score}]]", "score": score, "turn": 1, "tstamp": 1.0, **extra}  # fmt: skip
    return row if sample is None else {**row, "sample": sample, "status": "ok"}


def frame(rows: list[dict[str, Any]]) -> Any:
    return agg.single_frame([r for i, d in enumerate(rows) for r in read_judgment(d, f"t:{i}", False)], CATS)


# model a, turn 1, three judge samples per item: q81 2, 9, 10 (mean 7, median 9); q82 4, 5, 9 (6, 5)
SAMPLED = [
    single("a", q, s, k) for q, scores in ((81, (2, 9, 10)), (82, (4, 5, 9))) for k, s in enumerate(scores)
]


def test_item_score_is_the_mean_or_median_of_its_samples() -> None:
    df = frame(SAMPLED)
    assert agg.judge_samples(df) == 3
    mean = agg.score_table(agg.collapse_samples(df, "mean")).set_index(["category", "turn"])
    assert mean.loc[("all", "1"), "mean"] == pytest.approx(6.5)  # (7 + 6) / 2
    assert mean.loc[("all", "1"), "n_scored"] == 2  # items, not sample rows
    median = agg.score_table(agg.collapse_samples(df, "median")).set_index(["category", "turn"])
    assert median.loc[("all", "1"), "mean"] == pytest.approx(7.0)  # (9 + 5) / 2
    # the judge's spread: model means per sample 3, 7, 9.5 -> sample std sqrt(21.5 / 2)
    spread = agg.judge_spread(df, ["a"])["a"]
    assert spread["means"] == pytest.approx([3.0, 7.0, 9.5]) and spread["k"] == 3
    assert spread["std"] == pytest.approx(math.sqrt(10.75))
    with pytest.raises(JobError, match="--sample-agg must be mean or median"):
        agg.collapse_samples(df, "max")


def test_failed_samples_and_one_sample_files() -> None:
    rows = [
        single("a", 81, 6, 0), single("a", 81, -1, 1, status="parse_error"),  # item scored 6
        single("a", 82, -1, 0, status="api_error"), single("a", 82, -1, 1, status="parse_error"),  # failed item
    ]  # fmt: skip
    t = agg.score_table(agg.collapse_samples(frame(rows))).set_index(["category", "turn"])
    assert (
        t.loc[("all", "1"), "mean"],
        t.loc[("all", "1"), "n_scored"],
        t.loc[("all", "1"), "n_failed"],
    ) == (6, 1, 1)
    # K = 1 (every FastChat file): the frame as it was, duplicates kept
    fc = frame([single("a", 81, 8), single("a", 81, 8), single("a", 82, 6)])
    assert agg.collapse_samples(fc, "median") is fc and agg.judge_samples(fc) == 1
    with pytest.raises(JobError, match=r"t:0: invalid single judgment \(sample must be an integer >= 0\)"):
        frame([single("a", 81, 8, -1)])


def pair(m1: str, m2: str, g1: str, g2: str, qid: int = 81) -> dict[str, Any]:
    return {"question_id": qid, "model_1": m1, "model_2": m2, "g1_winner": g1, "g2_winner": g2,
            "judge": ["gpt-4", "pair-v2"], "turn": 1, "tstamp": 1.0}  # fmt: skip


PAIRS = [
    pair("x", "y", "model_1", "model_1"),  # consistent; first wins game 1 only
    pair("x", "y", "model_1", "model_2"),  # inconsistent; first wins both games
    pair("x", "y", "tie", "tie"),  # consistent; no decisive game
    pair("x", "y", "error", "model_1"),  # left out
    pair("y", "x", "model_2", "model_2"),  # consistent; x wins both, first only in game 2
    pair("x", "y", "model_1", "model_1", qid=82),  # equal lengths: not a length game
]
LENGTHS = {("x", "81", 0, 1): 10, ("y", "81", 0, 1): 4, ("x", "82", 0, 1): 5, ("y", "82", 0, 1): 5}


def test_pairwise_bias_hand_computed() -> None:
    rows = [r for d in PAIRS for r in read_judgment(d, "t", True)]
    b = bias.pair_bias(rows, LENGTHS)
    assert (b["pairs"], b["consistent"], b["inconsistent"]) == (5, 4, 1)
    assert b["position_consistency"] == pytest.approx(0.8)
    # decisive games: 2 + 2 + 2 + 2 = 8, won by the answer shown first: 1 + 2 + 1 + 1 = 5
    assert (b["decisive_games"], b["first_position_wins"]) == (8, 5)
    assert b["first_position_win_rate"] == pytest.approx(5 / 8)
    # on q81 x is longer: x wins 5 of the 6 decisive games there
    assert (b["length_games"], b["longer_answer_wins"], b["longer_answer_win_rate"]) == (
        6,
        5,
        pytest.approx(5 / 6),
    )
    # FastChat's numbers are unchanged: the inconsistent pair is a tie for both
    t, n_err = agg.fastchat_pairwise(agg.pair_frame(rows), "pairwise-all", None)
    assert n_err == 1 and t.set_index("model").loc["x", ["win", "loss", "tie"]].tolist() == [3, 0, 2]


def test_spearman_hand_computed() -> None:
    assert bias.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / 60
    assert bias.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))  # tied ranks 2.5
    assert bias.spearman([1, 2], [3, 3]) is None and bias.spearman([1], [1]) is None


def answer(qid: int, *choices: dict[str, Any]) -> dict[str, Any]:
    return {"question_id": qid, "answer_id": f"a{qid}", "model_id": "r", "tstamp": 1.0,
            "choices": [{"index": i, **c} for i, c in enumerate(choices)]}  # fmt: skip


REASONING = [
    answer(81, {"turns": ["abcd", "ab"], "raw_turns": ["<think>xxxxxx</think>abcd", "ab"],
                "reasoning": ["xxxxxx", None], "reasoning_unterminated": [False, False],
                "finish_reasons": ["stop", "length"]},
           {"turns": ["z" * 30], "reasoning": ["y"], "status": "error", "error": "boom"}),  # not ok: left out
    answer(82, {"turns": ["abcdefgh", "abcdef"], "raw_turns": ["<think>xx</think>abcdefgh", "<think>xxxxxxxxxx"],
                "reasoning": ["xx", "xxxxxxxxxx"], "reasoning_unterminated": [False, True],
                "finish_reasons": ["stop", "stop"]}),
]  # fmt: skip


def test_reasoning_stats_hand_computed() -> None:
    answers = {"r": [Answer.model_validate(a) for a in REASONING],
               "fc": [Answer.model_validate(answer(81, {"turns": ["abc"]}))]}  # fmt: skip
    s = answer_stats.reasoning_stats(answers, ["r", "fc", "none"])
    assert s["r"] == pytest.approx({
        "turns": 4, "share_reasoning": 0.75, "mean_reasoning_chars": 6.0,  # (6 + 2 + 10) / 3
        "mean_answer_chars": 5.0, "share_unterminated": 0.25, "share_truncated": 0.25,
    })  # fmt: skip
    assert s["fc"] == {"turns": 1, "share_reasoning": 0.0, "mean_reasoning_chars": None,
                       "mean_answer_chars": 3.0, "share_unterminated": 0.0, "share_truncated": None}  # fmt: skip
    assert "none" not in s


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


@pytest.fixture
def sampled_run(tmp_path: Path) -> dict[str, Path]:
    j = _write(tmp_path / "j" / "gpt-4_single.jsonl", SAMPLED)
    man = {"bench": "mt_bench", "judge": "gpt-4", "judge_model": "openai/gpt-4",
           "usage_total": {"prompt_tokens": 1234, "completion_tokens": 56}}  # fmt: skip
    (tmp_path / "j" / "gpt-4_single.manifest.json").write_text(json.dumps(man))
    ans = [{**a, "model_id": "a"} for a in REASONING]
    return {"judgments": j, "answers": _write(tmp_path / "ans" / "a.jsonl", ans).parent}


def _report(run_job, data: Path, files: dict[str, Path], out: Path, *extra: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    p = run_job("report", "--bench-data", str(data), "--judgments", str(files["judgments"]),
                "--answers-dir", str(files["answers"]), "--output-dir", str(out), *extra)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads((out / "report.json").read_text("utf-8"))  # type: ignore[no-any-return]


def _in_chromium(page: Path, tmp_path: Path) -> None:
    """The new tables render in a real browser: in the DOM, no console message."""
    from test_report_html import CHROMIUM_FLAGS, chromium

    exe = chromium()
    if exe is None:
        return
    dom = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'ud'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=90)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln] == []
    for tid in ("judge-spread", "judge-bias", "reasoning", "judge-usage"):
        assert f'<table id="{tid}">' in dom.stdout
    assert "<td>longer-answer win rate</td>" not in dom.stdout and "<td>9.500" not in dom.stdout
    assert "<td>3.000, 7.000, 9.500</td>" in dom.stdout


def test_report_cli_samples_bias_reasoning_usage(
    run_job, shared_bench_data: Path, sampled_run, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    doc = _report(run_job, shared_bench_data, sampled_run, tmp_path / "rep")
    a = {(s["category"], s["turn"]): s for s in doc["scores"]}[("all", "1")]
    assert a["mean"] == pytest.approx(6.5) and doc["fastchat"]["turn1"]["a"] == pytest.approx(6.5)
    assert doc["judge_spread"]["a"]["std"] == pytest.approx(math.sqrt(10.75))
    assert doc["judge_spread"]["sample_agg"] == "mean"
    # item scores 7 (q81, 4 chars) and 6 (q82, 8 chars): a perfectly inverse ranking
    assert doc["judge_bias"]["single"]["a"] == {"n": 2, "spearman": pytest.approx(-1.0)}
    assert doc["reasoning"]["a"]["share_reasoning"] == pytest.approx(0.75)
    assert doc["judge_usage"] == {"gpt-4": {"prompt_tokens": 1234, "completion_tokens": 56}}
    md = (tmp_path / "rep" / "report.md").read_text("utf-8")
    for title in ("## Judge noise (judge samples)", "## Judge bias", "## Reasoning", "## Judge token usage"):
        assert title in md
    assert "| a | 3 | 3.279 | 3.000, 7.000, 9.500 |" in md  # sqrt(10.75) = 3.2787
    assert "| gpt-4 | 1234 | 56 |" in md and "| a | 4 | 75.0% | 6 | 5 | 25.0% | 25.0% |" in md
    page = (tmp_path / "rep" / "report.html").read_text("utf-8")
    for tid in ("judge-spread", "judge-bias", "reasoning", "judge-usage"):
        assert f'<table id="{tid}">' in page
    _in_chromium(tmp_path / "rep" / "report.html", tmp_path)
    med = _report(
        run_job, shared_bench_data, sampled_run, tmp_path / "med", "--sample-agg", "median", "--no-html"
    )
    assert {(s["category"], s["turn"]): s for s in med["scores"]}[("all", "1")]["mean"] == pytest.approx(7.0)


def test_report_cli_pairwise_bias(run_job, shared_bench_data: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = {"judgments": _write(tmp_path / "j" / "gpt-4_pair.jsonl", PAIRS)}
    for m, (n81, n82) in {"x": (10, 5), "y": (4, 5)}.items():
        _write(
            tmp_path / "ans" / f"{m}.jsonl",
            [answer(q, {"turns": ["w" * n]}) for q, n in ((81, n81), (82, n82))],
        )
    files["answers"] = tmp_path / "ans"
    doc = _report(
        run_job, shared_bench_data, files, tmp_path / "rep", "--mode", "pairwise-all", "--bench", "mt_bench"
    )
    b = doc["judge_bias"]["pairwise"]
    assert (b["position_consistency"], b["inconsistent"]) == (pytest.approx(0.8), 1)
    assert b["first_position_win_rate"] == pytest.approx(5 / 8) and b[
        "longer_answer_win_rate"
    ] == pytest.approx(5 / 6)
    md = (tmp_path / "rep" / "report.md").read_text("utf-8")
    assert "| position consistency | 80.0% (4/5) |" in md and "| longer-answer win rate | 83.3% (5/6) |" in md


def test_reader_takes_what_the_dict_checks_took() -> None:
    """null choice / judge and a pairwise row without turn read as before (choice 0, no judge,
    turn 1); judge resume still needs judge and turn."""
    (p,) = read_judgment(
        {**pair("x", "y", "tie", "tie"), "turn": None, "choice": None, "judge": None}, "t", True
    )
    assert (p.turn, p.choice, p.judge_name) == (1, 0, "")
    (s,) = read_judgment({**single("a", 81, 3), "choice": None, "judge": None}, "t", False)
    assert (s.choice, s.sample_index, s.judge_name, s.status_of) == (0, 0, "", "ok")
    with pytest.raises(
        JobError, match=r"^f:2: invalid single judgment \(lacks judge; judge resume needs it\)$"
    ):
        read_judgment({**single("a", 81, 3), "judge": None}, "f:2", False, resume=True)
    with pytest.raises(JobError, match=r"^f:3: invalid pairwise judgment \(lacks turn"):
        read_judgment({**pair("x", "y", "tie", "tie"), "turn": None}, "f:3", True, resume=True)


def test_real_pipeline_reasoning_and_judge_samples(run_job, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """generate (a model that thinks, one whose thinking never closes) -> reduce -> judge
    (K = 1) -> report, then judge --judge-samples 2 -> report: the reasoning table from the
    answer files, and a deterministic judge's second sample changes no score (judge std 0)."""
    common = ["--bench", "smoke", "--output", str(tmp_path / "runs")]
    for name, reply in (("think", "<think>abcdef</think>Answer"), ("open", "<think>abc")):
        assert (
            run_job("generate", *common, "--model", f"mock/fixed:{reply}", "--model-name", name).returncode
            == 0
        )
    assert run_job("reduce", *common).returncode == 0
    docs = []
    for k in ("1", "2"):
        p = run_job("judge", *common, "--judge-model", "mock/judge", "--judge-samples", k)
        assert p.returncode == 0, p.stderr[-2000:]
        p = run_job("report", *common, "--no-html", "--output-dir", str(tmp_path / f"rep{k}"))
        assert p.returncode == 0, p.stderr[-2000:]
        docs.append(json.loads((tmp_path / f"rep{k}" / "report.json").read_text("utf-8")))
    one, two = docs
    assert two["scores"] == one["scores"] and two["fastchat"] == one["fastchat"]
    assert one["judge_spread"] == {}
    for m in ("think", "open"):
        mean = {(s["model"], s["category"], s["turn"]): s["mean"] for s in one["scores"]}[(m, "all", "all")]
        assert two["judge_spread"][m]["std"] == 0.0 and two["judge_spread"][m]["means"] == pytest.approx(
            [mean] * 2
        )
    # smoke: 9 questions x 2 turns; "Answer" judged (6 chars) after "abcdef"; "<think>abc" as it stands
    assert two["reasoning"]["think"] == {"turns": 18, "share_reasoning": 1.0, "mean_reasoning_chars": 6.0,
                                         "mean_answer_chars": 6.0, "share_unterminated": 0.0, "share_truncated": 0.0}  # fmt: skip
    assert two["reasoning"]["open"] == {"turns": 18, "share_reasoning": 1.0, "mean_reasoning_chars": 3.0,
                                        "mean_answer_chars": 10.0, "share_unterminated": 1.0, "share_truncated": 0.0}  # fmt: skip


def test_pairwise_baseline_bias_reads_the_baselines_answers(shared_bench_data: Path, tmp_path: Path) -> None:
    """The pairwise-baseline table drops its baseline's row, and the answers were read only for
    the table's models: every game lacked the baseline's length, so the longer-answer win rate
    was '– (0/0)' in pairwise-baseline while pairwise-all gave 5/6 on the same games."""
    from job.report.runner import ReportConfig, run

    j = _write(tmp_path / "j" / "gpt-4_pair.jsonl", PAIRS)  # every pair has y: y is the baseline
    for m, (n81, n82) in {"x": (10, 5), "y": (4, 5)}.items():
        _write(
            tmp_path / "ans" / f"{m}.jsonl",
            [answer(q, {"turns": ["w" * n]}) for q, n in ((81, n81), (82, n82))],
        )
    cfg = ReportConfig(bench="mt_bench", mode="pairwise-baseline", baseline_model="y", judgments=[str(j)],
                       answers_dir=str(tmp_path / "ans"), output_dir=str(tmp_path / "rep"),
                       bench_data=str(shared_bench_data))  # fmt: skip
    b = run(cfg)["judge_bias"]["pairwise"]
    assert (b["length_games"], b["longer_answer_wins"]) == (6, 5)
    assert [r["model"] for r in json.loads((tmp_path / "rep" / "report.json").read_text())["pairwise"]] == [
        "x"
    ]
