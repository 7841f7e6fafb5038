"""`job report` on the files the FastChat forks write (Swallow / Liquid4All list rows,
Hugging Face model ids), read unchanged, through the real CLI on the real bench data."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job import names
from job.errors import JobError
from job.records.judgments import read_judgment
from job.report import aggregate as agg

JA = "japanese_mt_bench"

# one row per (question, turn) holding lists over the 5 choices, -1 = the judge gave no rating
# (real japanese_mt_bench ids: 1 coding, 31 math, 71 writing)
SWALLOW_SCORES = {
    (1, 1): [8, 7, -1, 9, 6], (1, 2): [5, 5, 5, 5, 5],
    (31, 1): [10, 10, 10, 10, 10], (31, 2): [2, 3, 4, 5, 6],
    (71, 1): [6, 9, 7, 8, 10], (71, 2): [4, -1, 6, 7, 3],
}  # fmt: skip


def swallow_row(qid: int, turn: int, scores: list[int], model: str = "lfm-3b") -> dict[str, Any]:
    return {
        "question_id": qid, "model": model, "judge": ["gpt-4o-2024-08-06", "single-v1-multi-turn" if turn == 2 else "single-v1"],
        "user_prompt": [f"prompt {qid}/{turn}/{i}" for i in range(len(scores))],
        "judgment": [f"評価: [[{s}]]" if s != -1 else "no rating" for s in scores],
        "score": scores, "turn": turn, "tstamp": 1734239438.8,
    }  # fmt: skip


def write_swallow(path: Path, model: str = "lfm-3b") -> Path:
    path.write_text("".join(json.dumps(swallow_row(q, t, s, model), ensure_ascii=False) + "\n"
                            for (q, t), s in SWALLOW_SCORES.items()), encoding="utf-8")  # fmt: skip
    return path


def _cells(doc: dict[str, Any], model: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["category"], s["turn"]): s for s in doc["scores"] if s["model"] == model}


def test_swallow_list_rows_give_the_swallow_numbers(tmp_path: Path, run_job, shared_bench_data: Path) -> None:  # type: ignore[no-untyped-def]
    f = write_swallow(tmp_path / "gpt-4o-2024-08-06_single.jsonl")
    out = tmp_path / "rep"
    p = run_job("report", "--bench", JA, "--bench-data", str(shared_bench_data), "--judgments", str(f),
                "--output-dir", str(out), "--no-html")  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads((out / "report.json").read_text())
    c = _cells(doc, "lfm-3b")
    # hand-computed run means (each choice over the questions it has a rating for):
    # turn 1: 8, 26/3, 8.5 (q1 unrated), 9, 26/3 -> 257/30; turn 2: 11/3, 4, 5, 17/3, 14/3 -> 4.6
    # both turns: 35/6, 34/5, 32/5, 44/6, 40/6 -> 991/150
    assert c[("all", "1")]["mean"] == pytest.approx(257 / 30)
    assert c[("all", "2")]["mean"] == pytest.approx(4.6)
    # sample std (ddof=1) of the 5 run means
    assert c[("all", "2")]["std"] == pytest.approx(math.sqrt(19 / 30))
    assert c[("all", "all")]["mean"] == pytest.approx(991 / 150)
    assert (c[("all", "all")]["n_scored"], c[("all", "all")]["n_failed"]) == (28, 2)
    # per category from the bench's category field: coding runs 6.5, 6, 5, 7, 5.5; writing 5, 9, 6.5, 7.5, 6.5
    assert c[("coding", "all")]["mean"] == pytest.approx(6.0)
    assert c[("coding", "all")]["std"] == pytest.approx(math.sqrt(0.625))
    assert c[("writing", "all")]["mean"] == pytest.approx(6.9)
    assert c[("math", "1")]["mean"] == pytest.approx(10.0) and c[("math", "1")]["std"] == 0
    assert doc["provenance"]["num_choices"] == {"lfm-3b": 5}
    assert doc["runs"]["lfm-3b"]["2"] == pytest.approx([11 / 3, 4, 5, 17 / 3, 14 / 3])


def test_swallow_numbers_match_the_forks_matrix_formula() -> None:
    """Cross-check with the forks' own arithmetic: a question x choice matrix, -1 masked,
    column means, then mean and ddof=1 std of the columns."""
    import numpy as np

    rows = [swallow_row(q, t, s) for (q, t), s in SWALLOW_SCORES.items()]
    expanded = [r for row in rows for r in read_judgment(row, "test", pairwise=False)]
    df = agg.single_frame(expanded, {"1": "coding", "31": "math", "71": "writing"})
    t = agg.score_table(df).set_index(["category", "turn"])
    for turn in (1, 2):
        m = np.array([s for (_, tt), s in SWALLOW_SCORES.items() if tt == turn], dtype=float)
        valid = m != -1
        cols = np.where(valid, m, 0).sum(axis=0) / valid.sum(axis=0)
        assert t.loc[("all", str(turn)), "mean"] == pytest.approx(cols.mean())
        assert t.loc[("all", str(turn)), "std"] == pytest.approx(cols.std(ddof=1))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"judgment": ["x"]}, "judgment has 1 entries but score has 5"),
        ({"score": []}, "score is an empty list"),
        ({"score": [1, "7", 3, 4, 5]}, "score must be a finite number"),
        ({"choice": 2}, "choice with a list of scores"),
    ],
)
def test_bad_list_rows_name_the_line(
    tmp_path: Path, run_job, shared_bench_data: Path, change, message
) -> None:  # type: ignore[no-untyped-def]
    row = {**swallow_row(1, 1, [8, 7, -1, 9, 6]), **change}
    f = tmp_path / "j.jsonl"
    f.write_text(json.dumps(swallow_row(71, 1, [1, 2, 3, 4, 5])) + "\n" + json.dumps(row) + "\n")
    p = run_job("report", "--bench", JA, "--bench-data", str(shared_bench_data), "--judgments", str(f),
                "--output-dir", str(tmp_path / "rep"), "--no-html")  # fmt: skip
    assert p.returncode == 2, p.stderr[-2000:]
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"error: {f}:2: ") and message in line


def test_expand_keeps_plain_rows() -> None:
    plain = {"question_id": 1, "model": "m", "score": 7, "turn": 1}
    (row,) = read_judgment(plain, "x.jsonl:3", pairwise=False)
    assert row.model_dump(include=set(plain)) == plain and (row.choice, row.sample_index) == (0, 0)
    with pytest.raises(JobError, match="x.jsonl:3: .*user_prompt has 1 entries but score has 2"):
        read_judgment({**plain, "score": [1, 2], "user_prompt": ["a"]}, "x.jsonl:3", pairwise=False)


# --- Hugging Face model ids (org/name) ---------------------------------------------------------

HF_ID = "Qwen/Qwen2.5-7B-Instruct"


@given(st.text(min_size=1, max_size=60))
def test_path_name_is_reversible_safe_and_collision_free(name: str) -> None:
    enc = names.path_name(name)
    assert names.name_of_path(enc) == name  # reversible, hence no two names share a path
    assert (
        re.fullmatch(r"(?:[A-Za-z0-9]|%[0-9A-F]{2})[A-Za-z0-9._+=@%-]*", enc)
        and ".." not in enc
        and "/" not in enc
    )
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=@-]*", name) and ".." not in name:
        assert enc == name  # names that were already safe keep their paths


def test_publish_and_compare_a_hugging_face_id(tmp_path: Path, run_job, shared_bench_data: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [{"question_id": q, "model": HF_ID, "judge": ["gpt-4", "single-v1"], "score": q % 9 + 1, "turn": 1}
            for q in range(81, 91)]  # fmt: skip
    f = tmp_path / "gpt-4_single.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pub = tmp_path / "pub"
    p = run_job("report", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--judgments", str(f),
                "--output-dir", str(tmp_path / "rep"), "--publish", str(pub))  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]  # was: invalid model name (in the judgments) 'Qwen/...'
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert {s["model"] for s in doc["scores"]} == {HF_ID}  # the record keeps the exact name
    pointer = pub / "latest" / "mt_bench" / "Qwen%2FQwen2.5-7B-Instruct.json"
    assert json.loads(pointer.read_text())["model"] == HF_ID
    assert HF_ID in (tmp_path / "rep" / "report.html").read_text("utf-8")
    c = run_job("compare", str(pointer), str(tmp_path / "rep" / "report.json"))
    assert c.returncode == 0 and f"A: {HF_ID}" in c.stdout, c.stderr[-2000:]


def test_job_run_with_a_hugging_face_model_name(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "runs"
    p = run_job("run", "--bench", "smoke", "--model", "mock/echo", "--model-name", "org/echo-7b",
                "--judge-model", "mock/judge", "--output", str(out), "--publish", str(tmp_path / "pub"))  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1].startswith("RESULT (no baseline): org/echo-7b ")
    answers = out / "smoke" / "model_answer" / "org%2Fecho-7b.jsonl"
    assert {json.loads(line)["model_id"] for line in answers.read_text().splitlines()} == {"org/echo-7b"}
    assert [d.name for d in (out / "smoke" / "shards").iterdir()] == ["org%2Fecho-7b"]
    (judgments,) = (out / "smoke" / "model_judgment").glob("*_single.jsonl")
    assert {json.loads(line)["model"] for line in judgments.read_text().splitlines()} == {"org/echo-7b"}
    assert (tmp_path / "pub" / "latest" / "smoke" / "org%2Fecho-7b.json").is_file()
    again = run_job("run", "--bench", "smoke", "--model", "mock/echo", "--model-name", "org/echo-7b",
                    "--judge-model", "mock/judge", "--output", str(out))  # fmt: skip
    assert again.returncode == 0 and "nothing new" in again.stderr + again.stdout, again.stderr[-3000:]


@pytest.mark.parametrize("bad", ["../../etc", "/abs", ".hidden", "", "a\nb", "x" * 201])
def test_path_like_model_names_are_refused(bad: str) -> None:
    with pytest.raises(JobError, match="invalid model name"):
        names.check_model_name("model name", bad)


def test_reduce_finds_the_shards_of_a_hugging_face_id(tmp_path: Path, run_job) -> None:  # type: ignore[no-untyped-def]
    out = str(tmp_path / "runs")
    g = run_job(
        "generate", "--bench", "smoke", "--model", "mock/echo", "--model-name", "org/m", "--output", out
    )
    assert g.returncode == 0, g.stderr[-2000:]
    r = run_job(
        "reduce", "--bench", "smoke", "--output", out
    )  # no --model-name: found from the shard folders
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "runs" / "smoke" / "model_answer" / "org%2Fm.jsonl").is_file()


# --- --bench omitted: the judgments' question ids pick the bench --------------------------------


def _report_no_bench(run_job, tmp_path: Path, f: Path, bench_data: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_job("report", "--judgments", str(f), "--bench-data", str(bench_data),
                   "--output-dir", str(tmp_path / "rep"), "--no-html", *extra)  # fmt: skip


def _plain_rows(path: Path, qids: list[Any], model: str = "m") -> Path:
    rows = [
        {"question_id": q, "model": model, "judge": ["gpt-4", "single-v1"], "score": 5, "turn": 1}
        for q in qids
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bench_inferred_from_question_ids(tmp_path: Path, run_job, shared_bench_data: Path) -> None:  # type: ignore[no-untyped-def]
    f = _plain_rows(tmp_path / "gpt-4_single.jsonl", list(range(81, 91)))  # mt_bench ids only
    p = _report_no_bench(run_job, tmp_path, f, shared_bench_data)
    assert p.returncode == 0, p.stderr[-2000:]  # was: Missing option '--bench'
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc["provenance"]["bench"] == "mt_bench"
    assert "bench mt_bench (the only bench whose questions hold" in p.stderr
    # a custom FastChat-layout bench under --bench-data whose ids nobody else has
    data = tmp_path / "data"
    (data / "my_bench").mkdir(parents=True)
    (data / "my_bench" / "question.jsonl").write_text(
        "".join(
            json.dumps({"question_id": f"x{i}", "category": "writing", "turns": ["hi"]}) + "\n"
            for i in range(3)
        )
    )
    f = _plain_rows(tmp_path / "mine.jsonl", ["x0", "x2"])
    p = _report_no_bench(run_job, tmp_path, f, data)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["provenance"]["bench"] == "my_bench"


def test_ambiguous_or_unknown_ids_default_to_mt_bench_or_say_so(
    tmp_path: Path, run_job, shared_bench_data: Path
) -> None:  # type: ignore[no-untyped-def]
    # ids 1-80 are every Japanese MT-bench revision's (and smoke has 1-9): FastChat's default
    # mt_bench does not hold them, so the error names the benches that do
    f = write_swallow(tmp_path / "swallow.jsonl")
    p = _report_no_bench(run_job, tmp_path, f, shared_bench_data)
    assert p.returncode == 2
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"error: {f}: question ids fit several benches (japanese_mt_bench, ")
    assert "not mt_bench (FastChat's default); pass --bench" in line
    f = _plain_rows(tmp_path / "odd.jsonl", [999, 1000])
    p = _report_no_bench(run_job, tmp_path, f, shared_bench_data)
    assert p.returncode == 2
    (line,) = p.stderr.strip().splitlines()
    assert line == (f"error: {f}: question ids 999, 1000 are in no known bench's question file "
                    "(mt_bench is FastChat's default); pass --bench NAME or --bench-data DIR")  # fmt: skip
    # --bench given: used as it is, no guessing
    p = _report_no_bench(
        run_job, tmp_path, write_swallow(tmp_path / "s2.jsonl"), shared_bench_data, "--bench", JA
    )
    assert p.returncode == 0, p.stderr[-2000:]


def test_publish_a_hugging_face_id_to_s3(tmp_path: Path, run_job, shared_bench_data: Path, s3) -> None:  # type: ignore[no-untyped-def]
    rows = [{"question_id": q, "model": HF_ID, "judge": ["gpt-4", "single-v1"], "score": 7, "turn": 1}
            for q in range(81, 86)]  # fmt: skip
    f = tmp_path / "gpt-4_single.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = run_job("report", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--judgments", str(f),
                "--output-dir", str(tmp_path / "rep"), "--publish", s3.uri("reports"), env=s3.env)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    key = "reports/latest/mt_bench/Qwen%2FQwen2.5-7B-Instruct.json"
    assert key in s3.list_keys("reports/")
    assert json.loads(s3.get(key))["model"] == HF_ID
    c = run_job("compare", s3.uri(key), str(tmp_path / "rep" / "report.json"), env=s3.env)
    assert c.returncode == 0 and f"B: {HF_ID}" in c.stdout, c.stderr[-2000:]
