"""Prompt parity with FastChat on the real mt_bench / japanese_mt_bench files.

Expected strings are built here by hand from FastChat's templates and fill rules
(common.py run_judge_single / run_judge_pair, gen_judgment.py match order), never by
our builder; `job judge --dry-run --dump` must produce them byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

NEED_REF = ("math", "reasoning", "coding", "arena-hard-200")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _answers_dir(tmp: Path, bench_dir: Path, ref_name: str, models: dict[str, str]) -> Path:
    """FastChat model_answer folder: reference answers reused as real model text where they exist,
    and made-up text with braces (str.format must not touch answer text) elsewhere."""
    refs = {r["question_id"]: r for r in _jsonl(bench_dir / "reference_answer" / f"{ref_name}.jsonl")}
    d = tmp / "model_answer"
    d.mkdir()
    for model, tag in models.items():
        lines = []
        for q in _jsonl(bench_dir / "question.jsonl"):
            qid = q["question_id"]
            turns = (
                refs[qid]["choices"][0]["turns"]
                if qid in refs
                else [f"{tag} {{x}} one {qid}", f"{tag} {{y}} two {qid}"]
            )
            turns = [f"{tag}: {t}" for t in turns]
            lines.append(
                json.dumps(
                    {
                        "question_id": qid,
                        "answer_id": "a",
                        "model_id": model,
                        "choices": [{"index": 0, "turns": turns}],
                        "tstamp": 0,
                    }
                )
            )
        (d / f"{model}.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    return d


def _expected_single(
    p: dict[str, dict[str, Any]], q: dict[str, Any], a: list[str], ref: list[str] | None, turn: int
) -> tuple[str, str, str]:
    if q["category"] in NEED_REF:
        assert ref is not None
        if turn == 1:
            t = p["single-math-v1"]
            return (
                t["name"],
                t["system_prompt"],
                t["prompt_template"].format(question=q["turns"][0], answer=a[0], ref_answer_1=ref[0]),
            )
        t = p["single-math-v1-multi-turn"]
        user = t["prompt_template"].format(
            question_1=q["turns"][0],
            question_2=q["turns"][1],
            answer_1=a[0],
            answer_2=a[1],
            ref_answer_1=ref[0],
            ref_answer_2=ref[1],
        )
        return t["name"], t["system_prompt"], user
    if turn == 1:
        t = p["single-v1"]
        return t["name"], t["system_prompt"], t["prompt_template"].format(question=q["turns"][0], answer=a[0])
    t = p["single-v1-multi-turn"]
    return (
        t["name"],
        t["system_prompt"],
        t["prompt_template"].format(
            question_1=q["turns"][0], question_2=q["turns"][1], answer_1=a[0], answer_2=a[1]
        ),
    )


def _expected_pair(
    p: dict[str, dict[str, Any]],
    q: dict[str, Any],
    a: list[str],
    b: list[str],
    ref: list[str] | None,
    turn: int,
) -> tuple[str, str, str]:
    kw = {}
    if q["category"] in NEED_REF:
        assert ref is not None
        kw["ref_answer_1"] = ref[0]
        if turn == 2:
            kw["ref_answer_2"] = ref[1]
    name = {
        (1, False): "pair-v2",
        (1, True): "pair-math-v1",
        (2, False): "pair-v2-multi-turn",
        (2, True): "pair-math-v1-multi-turn",
    }[(turn, q["category"] in NEED_REF)]
    t = p[name]
    if turn == 1:
        user = t["prompt_template"].format(question=q["turns"][0], answer_a=a[0], answer_b=b[0], **kw)
    else:
        user = t["prompt_template"].format(
            question_1=q["turns"][0],
            question_2=q["turns"][1],
            answer_a_1=a[0],
            answer_b_1=b[0],
            answer_a_2=a[1],
            answer_b_2=b[1],
            **kw,
        )
    return name, t["system_prompt"], user


def _fastchat_order(questions: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """gen_judgment.py: default turn 1, ref turn 1, default turn 2, ref turn 2."""
    default = [q for q in questions if q["category"] not in NEED_REF]
    ref = [q for q in questions if q["category"] in NEED_REF]
    return (
        [(1, q) for q in default]
        + [(1, q) for q in ref]
        + [(2, q) for q in default if len(q["turns"]) == 2]
        + [(2, q) for q in ref if len(q["turns"]) == 2]
    )


def test_single_prompts_match_fastchat(shared_bench_data: Path, tmp_path: Path, run_job: Any) -> None:
    bench_dir = shared_bench_data / "mt_bench"
    ans = _answers_dir(tmp_path, bench_dir, "gpt-4", {"alpha": "A1", "beta": "B2"})
    dump = tmp_path / "dump.jsonl"
    r = run_job("judge", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--answers-dir", str(ans),
                "--judge-model", "openai/gpt-4", "--dry-run", "--dump", str(dump))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "320 calls to send" in r.stdout  # 80 questions x 2 turns x 2 models
    got = _jsonl(dump)
    prompts = {p["name"]: p for p in _jsonl(shared_bench_data / "judge_prompts.jsonl")}
    questions = _jsonl(bench_dir / "question.jsonl")
    refs = {
        x["question_id"]: x["choices"][0]["turns"]
        for x in _jsonl(bench_dir / "reference_answer" / "gpt-4.jsonl")
    }
    answers = {
        m: {x["question_id"]: x["choices"][0]["turns"] for x in _jsonl(ans / f"{m}.jsonl")}
        for m in ("alpha", "beta")
    }
    expected = []
    for turn, q in _fastchat_order(questions):
        for m in ("alpha", "beta"):
            name, system, user = _expected_single(
                prompts, q, answers[m][q["question_id"]], refs.get(q["question_id"]), turn
            )
            expected.append({"question_id": q["question_id"], "turn": turn, "choice": 0, "prompt_name": name,
                             "system_prompt": system, "user_prompt": user, "model": m})  # fmt: skip
    assert len(got) == len(expected) == 320
    for g, e in zip(got, expected, strict=True):
        assert g == e
    # the turn-2 prompt carries the whole conversation, and the judge sees real reference text
    q81 = next(g for g in got if g["question_id"] == 81 and g["turn"] == 2)
    assert answers["alpha"][81][0] in q81["user_prompt"] and answers["alpha"][81][1] in q81["user_prompt"]
    q111 = next(g for g in got if g["question_id"] == 111 and g["turn"] == 1)
    assert refs[111][0] in q111["user_prompt"] and q111["prompt_name"] == "single-math-v1"


def test_pairwise_prompts_match_fastchat(shared_bench_data: Path, tmp_path: Path, run_job: Any) -> None:
    bench_dir = shared_bench_data / "mt_bench"
    ans = _answers_dir(tmp_path, bench_dir, "gpt-4", {"alpha": "A1", "base": "B0", "gamma": "G3"})
    dump = tmp_path / "dump.jsonl"
    r = run_job("judge", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--answers-dir", str(ans),
                "--judge-model", "openai/gpt-4", "--mode", "pairwise-baseline", "--baseline-model", "base",
                "--model-list", "alpha", "--model-list", "gamma", "--first-n", "30", "--dry-run", "--dump", str(dump))  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = _jsonl(dump)
    prompts = {p["name"]: p for p in _jsonl(shared_bench_data / "judge_prompts.jsonl")}
    questions = _jsonl(bench_dir / "question.jsonl")[:30]
    refs = {
        x["question_id"]: x["choices"][0]["turns"]
        for x in _jsonl(bench_dir / "reference_answer" / "gpt-4.jsonl")
    }
    answers = {
        m: {x["question_id"]: x["choices"][0]["turns"] for x in _jsonl(ans / f"{m}.jsonl")}
        for m in ("alpha", "base", "gamma")
    }
    expected = []
    for turn, q in _fastchat_order(questions):
        for m in ("alpha", "gamma"):  # model_1 = evaluated model, model_2 = baseline
            qid = q["question_id"]
            for game, (a, b) in ((1, (m, "base")), (2, ("base", m))):
                name, system, user = _expected_pair(
                    prompts, q, answers[a][qid], answers[b][qid], refs.get(qid), turn
                )
                expected.append({"question_id": qid, "turn": turn, "choice": 0, "prompt_name": name, "system_prompt": system,
                                 "user_prompt": user, "model_1": m, "model_2": "base", "game": game})  # fmt: skip
    assert len(got) == len(expected) == 30 * 2 * 2 * 2
    for g, e in zip(got, expected, strict=True):
        assert g == e


def test_japanese_bench_uses_its_own_prompts_and_reference(
    shared_bench_data: Path, tmp_path: Path, run_job: Any
) -> None:
    bench_dir = shared_bench_data / "japanese_mt_bench"
    ans = _answers_dir(tmp_path, bench_dir, "gpt-4o-2024-08-06", {"m": "M"})
    dump = tmp_path / "dump.jsonl"
    r = run_job("judge", "--bench", "japanese_mt_bench", "--bench-data", str(shared_bench_data), "--answers-dir", str(ans),
                "--judge-model", "openai/gpt-4o-2024-08-06", "--dry-run", "--dump", str(dump))  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = _jsonl(dump)
    prompts = {p["name"]: p for p in _jsonl(bench_dir / "judge_prompts.jsonl")}
    questions = {q["question_id"]: q for q in _jsonl(bench_dir / "question.jsonl")}
    refs = {
        x["question_id"]: x["choices"][0]["turns"]
        for x in _jsonl(bench_dir / "reference_answer" / "gpt-4o-2024-08-06.jsonl")
    }
    answers = {x["question_id"]: x["choices"][0]["turns"] for x in _jsonl(ans / "m.jsonl")}
    assert len(got) == 160
    for g in got:
        q = questions[g["question_id"]]
        name, system, user = _expected_single(
            prompts, q, answers[q["question_id"]], refs.get(q["question_id"]), g["turn"]
        )
        assert (g["prompt_name"], g["system_prompt"], g["user_prompt"]) == (name, system, user)


def test_messages_sent_as_fastchat() -> None:
    from job.judge import judge_messages

    assert judge_messages("SYS", "USER") == [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "USER"},
    ]
    # FastChat's to_openai_api_messages() drops an empty system message
    assert judge_messages("", "USER") == [{"role": "user", "content": "USER"}]


@pytest.mark.parametrize("drop", ["single-math-v1-multi-turn", "single-v1"])
def test_prompt_file_lacking_a_template(
    shared_bench_data: Path, tmp_path: Path, run_job: Any, drop: str
) -> None:
    bench_dir = shared_bench_data / "mt_bench"
    ans = _answers_dir(tmp_path, bench_dir, "gpt-4", {"alpha": "A"})
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(
        "".join(
            json.dumps(p) + "\n"
            for p in _jsonl(shared_bench_data / "judge_prompts.jsonl")
            if p["name"] != drop
        )
    )
    r = run_job("judge", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--answers-dir", str(ans),
                "--judge-model", "openai/gpt-4", "--judge-prompts", str(bad), "--dry-run")  # fmt: skip
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(bad) in line and repr(drop) in line
