"""Rating and verdict parsing exactly as FastChat's common.py (table-driven, real-looking replies)."""

from __future__ import annotations

import pytest

from job.judge import parse_rating, parse_verdict

RATINGS = [
    ("plain", "The answer is accurate and well organised.\n\nRating: [[8]]", 8),
    ("float", "Mostly right, one slip.\n\nRating: [[7.5]]", 7.5),
    ("trailing dot is a float", "Rating: [[6.]]", 6.0),
    ("ten", "Flawless. Rating: [[10]]", 10),
    ("no range check (FastChat accepts 11)", "Rating: [[11]]", 11),
    ("zero accepted", "Rating: [[0]]", 0),
    ("double beats an earlier single", "As noted in [3], the proof fails. Rating: [[4]]", 4),
    (
        "citation caught by the backup pattern",
        "See [3] for the formula; overall this is decent. Rating: 7/10",
        3,
    ),
    ("backup single brackets", "Rating: [5]", 5),
    ("two ratings: the first wins", "Turn 1: [[9]]. Turn 2: [[2]].", 9),
    ("first double even after a single", "[2] minor issue. Final: [[6]] ... revised [[7]]", 6),
    ("quoted format then a rating", 'I must output "[[rating]]". Rating: [[3]]', 3),
    ("no rating", "The response is good but I will not rate it.", None),
    ("word rating", "Rating: [[eight]]", None),
    ("negative not matched", "Rating: [[-1]]", None),
    ("spaces inside not matched", "Rating: [[ 8 ]]", None),
    ("comma pair not a rating", "[[8, 9]]", None),
    ("japanese explanation", "回答は正確で分かりやすいです。\n\n評価: [[9]]", 9),
    ("empty", "", None),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in RATINGS], ids=[n for n, _, _ in RATINGS]
)
def test_parse_rating(text: str, expected: float | None) -> None:
    got = parse_rating(text)
    assert got == expected
    if expected is not None:
        assert type(got) is type(expected)  # int stays int, float stays float (ast.literal_eval)


VERDICTS = [
    ("A", "Assistant A follows the instructions better.\n\n[[A]]", "A"),
    ("B", "Final verdict: [[B]]", "B"),
    ("tie", "Both are equally good. [[C]]", "tie"),
    (
        "quoting the format counts as A",
        'Output "[[A]]" if A is better, "[[B]]" if B... My verdict: [[B]]',
        "A",
    ),
    ("B then A: A wins by check order", "Not [[B]]; rather [[A]]", "A"),
    ("C and B: B wins", "[[C]] would be unfair, so [[B]]", "B"),
    ("single brackets are no verdict", "Verdict: [A]", "error"),
    ("lowercase is no verdict", "[[a]]", "error"),
    ("none", "I cannot decide.", "error"),
    ("empty", "", "error"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in VERDICTS], ids=[n for n, _, _ in VERDICTS]
)
def test_parse_verdict(text: str, expected: str) -> None:
    assert parse_verdict(text) == expected
