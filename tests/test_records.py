"""FastChat record formats: real files load; malformed lines name file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from job.errors import JobError
from job.records import Answer, Question, parse_records
from job.records.jsonl import dumps_lines


def test_real_question_files_load(shared_bench_data: Path) -> None:
    en = parse_records((shared_bench_data / "mt_bench/question.jsonl").read_bytes(), Question, "q")
    ja = parse_records((shared_bench_data / "japanese_mt_bench/question.jsonl").read_bytes(), Question, "q")
    assert [q.question_id for q in en] == list(range(81, 161))
    assert [q.question_id for q in ja] == list(range(1, 81))
    assert all(len(q.turns) == 2 for q in en + ja)
    # the optional `reference` field of MT-bench is kept as an extra field
    assert sum(1 for q in en if getattr(q, "reference", None)) > 0


def test_reference_file_without_final_newline_loads(shared_bench_data: Path) -> None:
    path = shared_bench_data / "mt_bench/reference_answer/gpt-4-0125-preview.jsonl"
    data = path.read_bytes()
    assert not data.endswith(b"\n")  # the upstream file really lacks it
    answers = parse_records(data, Answer, str(path))
    assert len(answers) == 30
    assert [a.question_id for a in answers] == list(range(101, 131))


def test_string_question_ids_load(shared_bench_data: Path) -> None:
    path = (
        shared_bench_data / "japanese_mt_bench/variants/stability_jp_stable/reference_answer/gpt-4-raw.jsonl"
    )
    answers = parse_records(path.read_bytes(), Answer, str(path))
    assert answers and all(isinstance(a.question_id, (int, str)) for a in answers)


def test_answer_round_trip_keeps_fields_and_japanese(shared_bench_data: Path) -> None:
    path = shared_bench_data / "japanese_mt_bench/reference_answer/gpt-4o-2024-08-06.jsonl"
    answers = parse_records(path.read_bytes(), Answer, str(path))
    again = parse_records(dumps_lines(a.model_dump(mode="json") for a in answers), Answer, "again")
    assert [a.model_dump() for a in again] == [a.model_dump() for a in answers]
    original = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    assert again[0].choices[0].turns == original[0]["choices"][0]["turns"]


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        (
            '{"question_id": 1, "category": "x", "turns": ["a"]}\n{"question_id": 2,\n',
            "f.jsonl:2",
            "malformed JSON",
        ),
        ('{"question_id": 1, "category": "x"}\n', "f.jsonl:1", "turns"),
        ('{"question_id": 1, "category": "x", "turns": []}\n', "f.jsonl:1", "turns"),
        ("\n\n[1, 2]\n", "f.jsonl:3", "expected a JSON object"),
        ('{"question_id": [1], "category": "x", "turns": ["a"]}\n', "f.jsonl:1", "question_id"),
    ],
)
def test_malformed_lines_name_file_and_line(text: str, where: str, reason: str) -> None:
    with pytest.raises(JobError, match=reason) as e:
        parse_records(text, Question, "f.jsonl")
    assert str(e.value).startswith(where + ":")
    assert "\n" not in str(e.value)


def test_non_utf8_bytes_are_an_error_with_the_line() -> None:
    data = b'{"question_id": 1, "category": "x", "turns": ["a"]}\n{"turns": ["\xff"]}\n'
    with pytest.raises(JobError, match=r"^f.jsonl:2: not valid UTF-8"):
        parse_records(data, Question, "f.jsonl")


PAIR = {"question_id": 81, "model_1": "a", "model_2": "b", "g1_winner": "model_1", "g2_winner": "model_1",
        "judge": ["gpt-4", "pair-v2"], "turn": 1, "tstamp": 1.0}  # fmt: skip


@pytest.mark.parametrize(
    "fields, reason",
    [
        # show_result's else branch would count both as a win of model_2
        (
            {"g1_winner": "A", "g2_winner": "A"},
            "g1_winner must be one of model_1, model_2, tie, error, got 'A'",
        ),
        ({"g2_winner": "b"}, "g2_winner must be one of model_1, model_2, tie, error, got 'b'"),
        (
            {"g1_status": "OK"},
            "g1_status must be one of ok, parse_error, answer_error, api_error, judge_error",
        ),
    ],
)
def test_a_pairwise_row_with_an_unknown_winner_or_status_names_the_line(
    fields: dict[str, str], reason: str
) -> None:
    from job.records.judgments import read_judgment

    assert read_judgment(PAIR, "x_pair.jsonl:1", pairwise=True)[0].g1_winner == "model_1"
    with pytest.raises(JobError) as e:
        read_judgment({**PAIR, **fields}, "x_pair.jsonl:2", pairwise=True)
    assert str(e.value).startswith("x_pair.jsonl:2: invalid pairwise judgment (") and reason in str(e.value)


def test_a_single_row_with_an_unknown_status_names_the_line() -> None:
    from job.records.judgments import read_judgment

    row = {
        "question_id": 81,
        "model": "a",
        "judge": ["gpt-4", "single-v1"],
        "score": 7,
        "turn": 1,
        "tstamp": 1.0,
    }
    assert read_judgment({**row, "status": "ok"}, "x.jsonl:1", pairwise=False)[0].status_of == "ok"
    with pytest.raises(JobError, match=r"^x.jsonl:2: invalid single judgment \(status must be one of ok, "):
        read_judgment({**row, "status": "success"}, "x.jsonl:2", pairwise=False)
