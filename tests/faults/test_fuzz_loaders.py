"""Bad input, fuzzed: every loader either loads a file completely or raises one JobError whose
one-line message names the file (and the line, for a bad line). Never another exception
type, never a silently skipped line, never a record that cannot be written back.

Loaders: questions / answers / shard items (records.parse_records over jsonl.iter_jsonl),
judgments (JudgmentStore.read + records.judgments.read_judgment, as judge resume and report use
them), judge prompts (judge_prompts.load_prompt_set + select), custom benches in a user
--bench-data dir (benches.resolve_bench + load_questions) and the packaged registry.
The CLI cases at the end go through the real `job` command (exit 2, one `error:` line).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from job.benches import registry, resolve_bench
from job.errors import JobError
from job.judge import stored_games
from job.judge.prompts import expected_placeholders, load_prompt_set, select
from job.judge.store import JudgmentStore
from job.names import check_name
from job.records import Answer, Question, ShardItem, parse_records, record_dict
from job.records.jsonl import dumps_lines, iter_jsonl
from job.records.judgments import read_judgment
from job.report import aggregate as agg
from job.storage import LocalStorage

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# ---- generators of bad (and good) files ------------------------------------------------

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_scalar,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)

GOOD_QUESTION = {"question_id": 1, "category": "writing", "turns": ["Hi", "More"]}
GOOD_ANSWER = {
    "question_id": 1, "answer_id": "a", "model_id": "m", "tstamp": 1.0,
    "choices": [{"index": 0, "turns": ["one", "two"]}],
}  # fmt: skip
GOOD_ITEM = {"question_id": 1, "choice": 0, "turns": ["one", "two"], "status": "ok"}
GOOD_SINGLE = {
    "question_id": 1, "model": "m", "judge": ["j", "single-v1"], "user_prompt": "p",
    "judgment": "Rating: [[5]]", "score": 5, "turn": 1, "tstamp": 1.0, "choice": 0, "status": "ok",
}  # fmt: skip
GOOD_PAIR = {
    "question_id": 1, "model_1": "a", "model_2": "b", "g1_winner": "model_1", "g2_winner": "tie",
    "judge": ["j", "pair-v2"], "turn": 1, "tstamp": 1.0, "choice": 0,
}  # fmt: skip


def _dump(obj: Any) -> bytes:
    # allow_nan: NaN/Infinity are what Python's json writes and reads back; they must be caught
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def lines_of(draw: st.DrawFn, good: dict[str, Any]) -> bytes:
    """One line that is valid, mutated in one field, or garbage of some kind."""
    kind = draw(st.sampled_from(["good", "retype", "drop", "extra", "value", "truncate", "bytes", "odd"]))
    rec = dict(good)
    key = draw(st.sampled_from(sorted(good)))
    if kind == "good":
        rec["question_id"] = draw(st.integers(0, 10**6) | st.text(min_size=1, max_size=6))
    elif kind == "retype":
        rec[key] = draw(json_value)
    elif kind == "drop":
        del rec[key]
    elif kind == "extra":
        rec[draw(st.text(max_size=10))] = draw(json_value)
    if kind == "value":
        return _dump(draw(json_value))
    if kind == "truncate":
        full = _dump(rec)
        return full[: draw(st.integers(0, max(0, len(full) - 1)))]
    if kind == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b" ")
    if kind == "odd":
        return draw(
            st.sampled_from([
                b"[" * 50_000, b'{"a":' * 50_000, b'{"question_id": ' + b"9" * 5000 + b"}",
                b'{"question_id": 1, "turns": ["\\ud800"]}', b"\x0c", b"\xef\xbb\xbf{}",
                _dump(dict(good, category="x" * 300_000, judgment="y" * 300_000)),
                b"\xff\xfe" + _dump(good), _dump(good)[:-1] + b"\x00}",
            ])
        )  # fmt: skip
    return _dump(rec)


@st.composite
def files_of(draw: st.DrawFn, good: dict[str, Any]) -> bytes:
    lines = draw(st.lists(lines_of(good), max_size=6))
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = eol.join(lines) + (eol if lines and draw(st.booleans()) else b"")
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + data


def _nonblank_lines(data: bytes) -> int:
    """The spec of a JSONL file: every line with more than JSON whitespace is one record."""
    text = data.decode("utf-8").removeprefix("\ufeff")
    return sum(1 for raw in text.split("\n") if raw.strip(" \t\r"))


def _assert_clear_error(err: JobError, source: str, data: bytes | None = None) -> None:
    msg = str(err)
    assert "\n" not in msg and msg.strip(), repr(msg)
    assert msg.startswith(source), (source, msg)
    line = re.match(re.escape(source) + r":(\d+):", msg)
    if line and data is not None:
        assert 1 <= int(line.group(1)) <= data.count(b"\n") + 1, msg


def _load_or_clear_error(load: Callable[[], Any], source: str, data: bytes) -> Any:
    try:
        return load()
    except JobError as e:
        _assert_clear_error(e, source, data)
        return None


# ---- records: questions, answers, shard items ------------------------------------------


@pytest.mark.parametrize(
    ("model", "good"), [(Question, GOOD_QUESTION), (Answer, GOOD_ANSWER), (ShardItem, GOOD_ITEM)]
)
@FUZZ
@given(data=st.data())
def test_records_load_completely_or_fail_naming_the_line(model: type, good: dict[str, Any], data) -> None:
    blob = data.draw(files_of(good))
    recs = _load_or_clear_error(lambda: parse_records(blob, model, "q.jsonl"), "q.jsonl", blob)
    if recs is None:
        return
    assert len(recs) == _nonblank_lines(blob)  # no line skipped
    for r in recs:  # every loaded record can be written back as UTF-8 and reads back the same
        assert not isinstance(r.question_id, bool)
        again = parse_records(dumps_lines([record_dict(r)]), model, "again")
        assert record_dict(again[0]) == record_dict(r)


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        (b"[" * 100_000, "q.jsonl:1: unreadable JSON (nested too deeply)"),
        (b'{"question_id": ' + b"9" * 5000 + b"}", "q.jsonl:1: unreadable JSON (Exceeds the limit"),
        (_dump(GOOD_QUESTION) + b'\n{"question_id": 2, "turns": ["\\udc00"]}', "q.jsonl:2: a lone UTF-16"),
        (_dump(GOOD_QUESTION) + b"\n\x0c\n", "q.jsonl:2: malformed JSON"),
        (_dump(GOOD_QUESTION) + b"\n" + _dump(dict(GOOD_QUESTION, question_id=True)), "q.jsonl:2: invalid"),
        (b"\n" + _dump(GOOD_QUESTION)[:-3], "q.jsonl:2: malformed JSON"),
        (_dump(GOOD_QUESTION).replace(b"Hi", b"\xc3\x28"), "q.jsonl:1: not valid UTF-8"),
        (_dump(dict(GOOD_QUESTION, question_id=float("nan"))), "q.jsonl:1: invalid question"),
        (_dump(dict(GOOD_QUESTION, turns="Hi")), "q.jsonl:1: invalid question (turns"),
        (_dump([GOOD_QUESTION]), "q.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_targeted_bad_question_lines(blob: bytes, expected: str) -> None:
    with pytest.raises(JobError) as e:
        parse_records(blob, Question, "q.jsonl")
    assert str(e.value).startswith(expected), str(e.value)


def test_bom_crlf_and_huge_strings_load() -> None:
    big = "x" * 5_000_000
    blob = (
        b"\xef\xbb\xbf"
        + _dump(GOOD_QUESTION)
        + b"\r\n"
        + _dump(dict(GOOD_QUESTION, question_id=2, turns=[big]))
    )
    qs = parse_records(blob, Question, "q.jsonl")
    assert [q.question_id for q in qs] == [1, 2] and qs[1].turns == [big]


# ---- judgments: resume (judge) and aggregation (report) --------------------------------


@pytest.mark.parametrize(("pairwise", "good"), [(False, GOOD_SINGLE), (True, GOOD_PAIR)])
@FUZZ
@given(data=st.data())
def test_judgment_files_load_completely_or_fail_naming_the_line(pairwise: bool, good: dict, data) -> None:
    blob = data.draw(files_of(good))
    with tempfile.TemporaryDirectory() as d:
        Path(d, "j.jsonl").write_bytes(blob)
        store = JudgmentStore(LocalStorage(d), "j.jsonl")
        uri = store.uri

        typed: list[Any] = []

        def check(rec: dict[str, Any], where: str) -> None:
            read_judgment(rec, where, pairwise, resume=True)  # what judge resume accepts
            typed.extend(read_judgment(rec, where, pairwise))  # and what a report reads

        recs = _load_or_clear_error(lambda: store.read(check=check), uri, blob)
        assert Path(d, "j.jsonl").read_bytes() == blob  # reading never changes the file
    if not recs:
        return
    # a torn last line (no newline: an interrupted append) is the one thing dropped, by design
    torn = blob and not blob.endswith(b"\n")
    kept = blob[: blob.rfind(b"\n") + 1] if torn else blob
    assert len(recs) == _nonblank_lines(kept)
    # what passed the check never breaks resume keys or aggregation
    for rec in recs:
        list(stored_games(rec))
    if pairwise:
        agg.pair_frame(typed)
    else:
        df = agg.single_frame(typed, {})
        assert df["score"].map(math.isfinite).all()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"score": "7"}, "score must be a finite number"),
        ({"score": float("nan")}, "score must be a finite number"),
        ({"score": float("inf")}, "score must be a finite number"),
        ({"score": True}, "score must be a finite number"),
        ({"score": 10**400}, "score must be a finite number"),
        ({"turn": "1"}, "turn must be an integer"),
        ({"choice": -1}, "choice must be an integer >= 0"),
        ({"judge": "j"}, "judge must be [judge name, prompt name]"),
        ({"judge": ["j"]}, "judge must be [judge name, prompt name]"),
        ({"model": ["m"]}, "model must be a string"),
        ({"question_id": True}, "question_id must be an integer or a string"),
        ({"status": 3}, "status must be a string"),
    ],
)
def test_targeted_bad_judgments(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(JobError, match=re.escape(f"f.jsonl:4: invalid single judgment ({problem}")):
        read_judgment(dict(GOOD_SINGLE, **change), "f.jsonl:4", pairwise=False)


def test_fastchat_judgment_rows_pass() -> None:
    # FastChat's own rows: no choice/status, score -1 on failure, pairwise without turn
    read_judgment({k: v for k, v in GOOD_SINGLE.items() if k not in ("choice", "status")}, "f", False)
    read_judgment(dict(GOOD_SINGLE, score=-1), "f", False)
    read_judgment({k: v for k, v in GOOD_PAIR.items() if k != "turn"}, "f", True)


# ---- judge prompts -----------------------------------------------------------------------

PROMPT = {
    "name": "single-v1", "type": "single", "system_prompt": "s",
    "prompt_template": "[Q]{question}[A]{answer}", "description": "d", "category": "general",
    "output_format": "[[rating]]",
}  # fmt: skip

templates = st.one_of(
    st.text(max_size=30),
    st.sampled_from([
        "{question}{answer}", "{", "}", "{}", "{0}", "{question!r}{answer}", "{question:>999999999}",
        "{question[0]}", "{question.x}", "{{literal}} {question} {answer}", "{answer_a}", "{question",
    ]),
)  # fmt: skip


@FUZZ
@given(
    data=st.data(),
    template=templates,
    name=st.sampled_from(["single-v1", "single-v1", "pair-v2", ""]),
)
def test_judge_prompt_files_load_or_fail_naming_the_line(data, template: str, name: str) -> None:
    lines = [_dump(dict(PROMPT, prompt_template=template, name=name))]
    lines += data.draw(st.lists(lines_of(PROMPT), max_size=3))
    blob = b"\n".join(lines)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "judge_prompts.jsonl")
        path.write_bytes(blob)
        pset = _load_or_clear_error(lambda: load_prompt_set(path), str(path), blob)
        if pset is None:
            return
        assert len(pset.prompts) == _nonblank_lines(blob)  # duplicates are errors, not overwrites
        chosen = _load_or_clear_error(lambda: select(pset, "single", {(1, False)}), str(path), blob)
    if chosen is None:
        return
    # a prompt that passed the checks is filled exactly as FastChat fills it, without error
    jp = chosen[(1, False)]
    out = jp.prompt_template.format(**dict.fromkeys(expected_placeholders("single", 1, False), "X"))
    assert len(out) <= len(jp.prompt_template) + 10


@pytest.mark.parametrize(
    ("line2", "expected"),
    [
        (dict(PROMPT), ":2: judge prompt 'single-v1' again (first on line 1)"),
        (dict(PROMPT, name=3), ":2: judge prompt lacks name"),
        ({k: v for k, v in PROMPT.items() if k != "output_format"}, ":2: judge prompt lacks output_format"),
    ],
)
def test_targeted_bad_prompt_files(tmp_path: Path, line2: dict[str, Any], expected: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(_dump(PROMPT) + b"\n" + _dump(line2) + b"\n")
    with pytest.raises(JobError, match=re.escape(f"{path}{expected}")):
        load_prompt_set(path)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{question} {", "Single '{' encountered"),
        ("{}{question}", "field {} is not a plain {name}"),
        ("{question:>999999999}", "field {question:>999999999} is not a plain {name}"),
        ("{question!r}", "field {question!r} is not a plain {name}"),
        ("{question[0]}", "unknown placeholders ['question[0]']"),
    ],
)
def test_bad_templates_fail_at_load_not_mid_run(tmp_path: Path, template: str, expected: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(_dump(dict(PROMPT, prompt_template=template)) + b"\n")
    with pytest.raises(JobError, match=re.escape(f"{path}:1: prompt 'single-v1'")) as e:
        select(load_prompt_set(path), "single", {(1, False)})
    assert expected in str(e.value)


# ---- benches: a user's --bench-data dir and the packaged registry ------------------------


@FUZZ
@given(data=st.data(), name=st.sampled_from(["mine", "my.bench-2", "x" * 200]))
def test_custom_bench_dirs_load_or_fail_naming_the_file(data, name: str) -> None:
    blob = data.draw(files_of(GOOD_QUESTION))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / name).mkdir()
        qfile = Path(d) / name / "question.jsonl"
        qfile.write_bytes(blob)
        bench = resolve_bench(name, d)
        got = _load_or_clear_error(bench.load_questions, str(qfile), blob)
    if got is None:
        return
    qs, _sha = got
    assert len(qs) == _nonblank_lines(blob) > 0
    assert len({str(q.question_id) for q in qs}) == len(qs)  # duplicates never pass


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "question.jsonl: no questions in file"),
        ("\n \r\n", "question.jsonl: no questions in file"),
        (
            '{"question_id": 1, "category": "a", "turns": ["x"]}\n{"question_id": "1", "category": "a", "turns": ["y"]}\n',
            "question.jsonl:2: duplicate question_id '1' (first on line 1)",
        ),
    ],
)
def test_targeted_bench_files(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/question.jsonl").write_text(text, "utf-8")
    with pytest.raises(JobError, match=re.escape(expected)):
        resolve_bench("mine", tmp_path).load_questions()


def test_packaged_registry_names_and_paths_stay_inside_the_data_dir() -> None:
    for name, entry in registry().items():
        check_name("bench name", name)
        for logical, f in entry["files"].items():
            p = Path(f["path"])
            assert not p.is_absolute() and ".." not in p.parts, (name, logical, f["path"])
            assert re.fullmatch(r"[0-9a-f]{64}", f["sha256"]), (name, logical)
            assert f["url"].startswith("https://"), (name, logical)


def test_iter_jsonl_accepts_str_too() -> None:
    assert [n for n, _ in iter_jsonl('\ufeff{"a": 1}\r\n\n{"b": 2}', "s")] == [1, 3]


# ---- through the real CLI: exit 2, one `error:` line, no traceback, nothing changed --------


def _clear_cli_error(res: Any, expected: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and res.stderr.rstrip().endswith(errors[0]), res.stderr
    assert expected in errors[0], errors[0]


@pytest.fixture
def judged(run_job, tmp_path: Path) -> Path:
    """A small finished run: smoke bench, mock model, mock judge."""
    out = tmp_path / "o"
    for args in (
        ["generate", "--bench", "smoke", "--model", "mock/echo", "--first-n", "3"],
        ["reduce", "--bench", "smoke"],
        ["judge", "--bench", "smoke", "--judge-model", "mock/judge", "--first-n", "3"],
    ):
        res = run_job(*args, "--output", str(out))
        assert res.returncode == 0, res.stderr
    return out


def test_cli_bom_crlf_question_file_runs(run_job, tmp_path: Path) -> None:
    (tmp_path / "d/mine").mkdir(parents=True)
    lines = [_dump(dict(GOOD_QUESTION, question_id=i)) for i in (1, 2)]
    (tmp_path / "d/mine/question.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
    res = run_job(
        "generate", "--bench", "mine", "--bench-data", str(tmp_path / "d"), "--model", "mock/echo",
        "--output", str(tmp_path / "o"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    shard = tmp_path / "o/mine/shards/echo/shard-00000-of-00001.jsonl"
    assert [it.question_id for it in parse_records(shard.read_bytes(), ShardItem, str(shard))] == [1, 2]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"question_id": 1, "model": "echo", "score": NaN, "turn": 1, "judge": ["j", "single-v1"]}',
         "invalid single judgment (score must be a finite number"),
        (b'{"question_id": 1, "model": "echo", "score": 5, "turn": "1", "judge": ["j", "single-v1"]}',
         "invalid single judgment (turn must be an integer"),
        (b'{"question_id": 1, "model": "echo", "sco', "malformed JSON"),
        (b"\xff\xfe garbage", "not valid UTF-8"),
    ],
)  # fmt: skip
def test_cli_judge_and_report_on_a_damaged_judgment_file(
    run_job, judged: Path, line: bytes, expected: str
) -> None:
    jfile = judged / "smoke/model_judgment/judge_single.jsonl"
    lines = jfile.read_bytes().splitlines(keepends=True)
    damaged = b"".join([lines[0], line + b"\n", *lines[1:]])
    jfile.write_bytes(damaged)
    for args in (
        ["judge", "--bench", "smoke", "--judge-model", "mock/judge", "--first-n", "3"],
        ["report", "--bench", "smoke"],
    ):
        res = run_job(*args, "--output", str(judged))
        _clear_cli_error(res, f"{jfile}:2: {expected}")
        assert jfile.read_bytes() == damaged  # nothing appended, nothing cut
    assert not (judged / "smoke/reports").exists()


def test_cli_bad_judge_prompts_and_answers(run_job, judged: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(_dump(dict(PROMPT, prompt_template="[Q]{question} {answer} {")) + b"\n")
    res = run_job(
        "judge", "--bench", "smoke", "--judge-model", "mock/judge", "--judge-name", "other",
        "--judge-prompts", str(prompts), "--output", str(judged), "--first-n", "3",
    )  # fmt: skip
    _clear_cli_error(res, f"{prompts}:1: prompt 'single-v1': prompt_template is not a valid format string")
    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "deep.jsonl").write_bytes(b'{"question_id": 1, "choices": ' + b"[" * 100_000 + b"\n")
    res = run_job(
        "judge", "--bench", "smoke", "--judge-model", "mock/judge", "--judge-name", "other",
        "--answers-dir", str(answers), "--output", str(judged), "--first-n", "3",
    )  # fmt: skip
    _clear_cli_error(res, f"{answers / 'deep.jsonl'}:1: unreadable JSON (nested too deeply)")
    assert not (judged / "smoke/model_judgment/other_single.jsonl").exists()


def test_cli_report_on_empty_judgments_and_a_broken_manifest(run_job, judged: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty_single.jsonl"
    empty.write_bytes(b"")
    _clear_cli_error(
        run_job("report", "--bench", "smoke", "--judgments", str(empty), "--output", str(judged)),
        f"{empty}: no judgments in file",
    )
    manifest = judged / "smoke/model_judgment/judge_single.manifest.json"
    manifest.write_bytes(b'{"judge": ')
    _clear_cli_error(
        run_job("report", "--bench", "smoke", "--output", str(judged)),
        f"{manifest}: unreadable judge manifest",
    )
