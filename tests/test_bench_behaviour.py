"""Bench behaviour is bench data: temperature table, reference categories, prompt names,
rating format and judged turns come from the registry entry or a custom bench's
bench.json (FastChat's defaults otherwise), and the real CLI follows them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from job.benches import FASTCHAT, registry, resolve_bench
from job.errors import JobError

pytestmark = pytest.mark.timeout(200)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _overall(doc: dict[str, Any], model: str, turn: Any) -> dict[str, Any]:
    (row,) = [
        s for s in doc["scores"] if s["model"] == model and s["category"] == "all" and s["turn"] == turn
    ]
    return row


def test_fastchat_defaults() -> None:
    temps = [
        FASTCHAT.temperature(c)
        for c in ("writing", "roleplay", "extraction", "math", "coding", "reasoning", "stem", "humanities")
    ]
    assert temps == [0.7, 0.7, 0.0, 0.0, 0.0, 0.0, 0.1, 0.1]
    assert FASTCHAT.temperature("fermi") == 0.7 and FASTCHAT.temperature("arena-hard-200") == 0.0
    assert [c for c in ("math", "reasoning", "coding", "arena-hard-200", "stem") if FASTCHAT.needs_ref(c)] == [
        "math", "reasoning", "coding", "arena-hard-200",
    ]  # fmt: skip
    assert FASTCHAT.judged_turns == (1, 2)
    assert FASTCHAT.prompt_name("single", 2, True) == "single-math-v1-multi-turn"
    assert FASTCHAT.prompt_name("pairwise", 1, False) == "pair-v2"
    assert (FASTCHAT.output_format("single"), FASTCHAT.output_format("pairwise")) == ("[[rating]]", "[[A]]")
    assert [p.pattern for p in FASTCHAT.rating_res] == [r"\[\[(\d+\.?\d*)\]\]", r"\[(\d+\.?\d*)\]"]


def test_registered_benches_carry_their_behaviour(shared_bench_data: Path) -> None:
    for name in ("mt_bench", "japanese_mt_bench", "japanese_mt_bench_v202407"):
        assert resolve_bench(name, shared_bench_data).behaviour == FASTCHAT, name
    st = resolve_bench("japanese_mt_bench_stability", shared_bench_data).behaviour
    assert st.judged_turns == (1,) and st.output_format("single") == "[[評価]]"
    # Stability's jp-stable gen_model_answer.py table: nothing is greedy
    temps = [st.temperature(c) for c in ("writing", "extraction", "stem", "math", "coding")]
    assert temps == [0.5, 0.2, 0.2, 0.1, 0.1]
    assert "behaviour" in registry()["japanese_mt_bench_stability"]


def test_stability_bench_judges_and_reports_end_to_end(
    run_job, shared_bench_data: Path, tmp_path: Path
) -> None:
    """Its Japanese prompts are `[[評価]]` single prompts for turn 1 only (before: the run
    stopped at prompt load with "expected '[[rating]]'")."""
    ids = "1,2,11,21,41"  # coding and reasoning need a reference, extraction and humanities do not
    args = ["run", "--bench", "japanese_mt_bench_stability", "--bench-data", str(shared_bench_data)]
    args += ["--model", "mock/echo", "--judge-model", "mock/judge", "--question-ids", ids]
    p = run_job(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    bench_dir = tmp_path / "runs" / "japanese_mt_bench_stability"
    rows = _rows(bench_dir / "model_judgment" / "judge_single.jsonl")
    assert sorted((r["question_id"], r["turn"]) for r in rows) == [(1, 1), (2, 1), (11, 1), (21, 1), (41, 1)]
    assert {r["question_id"]: r["judge"][1] for r in rows} == {
        1: "single-math-v1", 2: "single-math-v1", 11: "single-v1", 21: "single-v1", 41: "single-math-v1",
    }  # fmt: skip
    assert all(r["status"] == "ok" and 1 <= r["score"] <= 10 for r in rows)
    assert all("[参考回答の開始]" in r["user_prompt"] for r in rows if r["question_id"] in (1, 2, 41))
    manifest = json.loads((bench_dir / "model_judgment" / "judge_single.manifest.json").read_text("utf-8"))
    assert manifest["bench_behaviour"]["judged_turns"] == [1]
    doc = json.loads((bench_dir / "reports" / "report.json").read_text("utf-8"))
    assert _overall(doc, "echo", "1")["n_scored"] == 5 and not [s for s in doc["scores"] if s["turn"] == "2"]
    assert _overall(doc, "echo", "all")["mean"] == pytest.approx(sum(r["score"] for r in rows) / 5)
    # generation used the bench's own table
    dry = run_job("generate", *args[1:5], "--model", "mock/echo", "--question-ids", ids, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "temperatures: coding=0.1, extraction=0.2, humanities=0.2, reasoning=0.1" in dry.stdout
    # it has no pairwise prompts: a one-line error naming the file and the fix
    pw = run_job(
        "judge",
        *args[1:5],
        "--judge-model",
        "mock/judge",
        "--mode",
        "pairwise-all",
        "--question-ids",
        ids,
        "--dry-run",
    )
    assert pw.returncode == 2 and pw.stderr.count("\n") == 1, pw.stderr[-2000:]
    assert (
        "judge_ja_prompts.jsonl: judge prompt 'pair-v2' is missing" in pw.stderr
        and "--judge-prompts" in pw.stderr
    )


def _custom_bench(root: Path, behaviour: dict[str, Any]) -> Path:
    """A custom bench `quiz` with its own prompt names, rating tag and bench.json."""
    d = root / "quiz"
    _jsonl(d / "question.jsonl", [
        {"question_id": 1, "category": "trivia", "turns": ["Capital of France?", "And of Italy?"]},
        {"question_id": 2, "category": "chat", "turns": ["Say hi.", "Say bye."]},
    ])  # fmt: skip
    _jsonl(d / "reference_answer" / "mine.jsonl", [
        {"question_id": 1, "model_id": "mine", "choices": [{"index": 0, "turns": ["Paris", "Rome"]}]},
    ])  # fmt: skip
    tag = "Reply with 'Score: N'. Format: [[score]]"
    _jsonl(d / "judge_prompts.jsonl", [
        {"name": "grade", "type": "single", "system_prompt": tag, "output_format": "[[score]]",
         "prompt_template": "Q: {question}\nA: {answer}"},
        {"name": "grade-ref", "type": "single", "system_prompt": tag, "output_format": "[[score]]",
         "prompt_template": "Q: {question}\nRef: {ref_answer_1}\nA: {answer}"},
    ])  # fmt: skip
    (d / "bench.json").write_text(json.dumps(behaviour), "utf-8")
    return root


QUIZ = {
    "temperatures": {"trivia": 0.3},
    "default_temperature": 0.9,
    "reference_categories": ["trivia"],
    "judged_turns": [1],
    "prompt_names": {"single/turn1": "grade", "single/turn1/ref": "grade-ref"},
    "rating_format": "[[score]]",
    "rating_patterns": [r"Score: (\d+)"],
    "default_reference": "mine",
}


def test_custom_bench_json_drives_generate_judge_and_report(run_job, tmp_path: Path) -> None:
    data = _custom_bench(tmp_path / "data", QUIZ)
    common = ["--bench", "quiz", "--bench-data", str(data)]
    dry = run_job("generate", *common, "--model", "mock/echo", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "temperatures: chat=0.9, trivia=0.3" in dry.stdout
    # the reply also holds a FastChat tag: the bench's pattern must win
    p = run_job(
        "run",
        *common,
        "--model",
        "mock/echo",
        "--judge-model",
        "mock/fixed:Score: 8 [[3]]",
        "--judge-name",
        "quizjudge",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    rows = _rows(tmp_path / "runs" / "quiz" / "model_judgment" / "quizjudge_single.jsonl")
    assert sorted((r["question_id"], r["turn"], r["judge"][1], r["score"]) for r in rows) == [
        (1, 1, "grade-ref", 8), (2, 1, "grade", 8),
    ]  # fmt: skip
    assert "Ref: Paris" in next(r["user_prompt"] for r in rows if r["question_id"] == 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"judged_turns": [3]}, "judged_turns"),
        ({"rating_patterns": ["Score: \\d+"]}, "rating_patterns"),
        ({"rating_patterns": ["Score: (\\d+"]}, "rating_patterns"),
        ({"temperatures": {"trivia": "hot"}}, "temperatures"),
        ({"prompt_names": {"single/turn3": "x"}}, "prompt_names"),
        ({"temprature": {}}, "temprature"),
    ],
)
def test_bad_bench_json_is_a_one_line_error(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    data = _custom_bench(tmp_path / "data", {**QUIZ, **change})
    with pytest.raises(JobError, match=message) as e:
        resolve_bench("quiz", data)
    text = str(e.value)
    assert "\n" not in text and str(data / "quiz" / "bench.json") in text


def test_bench_json_that_is_not_json(tmp_path: Path) -> None:
    data = _custom_bench(tmp_path / "data", QUIZ)
    (data / "quiz" / "bench.json").write_text("{not json", "utf-8")
    with pytest.raises(JobError, match=r"bench\.json.*not valid JSON"):
        resolve_bench("quiz", data)
