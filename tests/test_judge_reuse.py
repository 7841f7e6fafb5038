"""Content-addressed judgment reuse (issue 12, items 1, 2, 10a, 10c): a stored judgment is
reused only when what was judged is the same (answers, filled prompt, reference, judge spec
and sampling); rows of other inputs stop counting; a run where every request failed exits
non-zero with its rows stored; S3 reads never double-count after a crash in compaction."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from moto_s3 import S3Env
from test_judge_cli import _answer_dir, _custom_bench, _jsonl, smoke_answers

from job.backends.base import SamplingParams
from job.judge import Match, build_matches, inputs_sha256
from job.judge.prompts import load_prompt_set, select
from job.judge.store import JudgmentStore, current_rows, parts_prefix
from job.records import Answer, Question
from job.storage import open_storage

SMOKE = Path(__file__).resolve().parents[1] / "bench_data" / "smoke"
MJ = ["--judge-name", "mj"]


def _judged(stdout: str) -> str:
    """What `job judge` says it stored this run: '18 ok', 'nothing new', ..."""
    m = re.search(r"judged \S+ with \S+: (.*?); \d+ games were already stored", stdout)
    assert m, stdout
    return m.group(1)


def _current(out: Path, bench: str = "smoke", judge: str = "mj") -> list[dict[str, Any]]:
    """The rows the judge manifest names as current (what the report counts)."""
    d = out / bench / "model_judgment"
    man = json.loads((d / f"{judge}_single.manifest.json").read_text())
    return current_rows(_jsonl(d / f"{judge}_single.jsonl"), man)


@pytest.fixture
def answers(run_job: Any, tmp_path: Path) -> Path:
    return smoke_answers(run_job, tmp_path)


def _report(run_job: Any, out: Path, tmp_path: Path, *args: str) -> dict[str, Any]:
    """`job report` on the stored judgments: report.json (what the report counted)."""
    rep = tmp_path / "rep"
    r = run_job("report", "--output", str(out), "--output-dir", str(rep), *args)
    assert r.returncode == 0, r.stderr
    return dict(json.loads((rep / "report.json").read_text()))


def _overall(doc: dict[str, Any], model: str) -> dict[str, Any]:
    return next(s for s in doc["scores"] if (s["model"], s["category"], s["turn"]) == (model, "all", "all"))


def _smoke(run_job: Any, out: Path, *args: str) -> Any:
    r = run_job("judge", "--bench", "smoke", "--output", str(out), *MJ, *args)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.timeout(120)
def test_regenerated_answers_are_judged_again(run_job: Any, tmp_path: Path) -> None:
    """generate (some answers failed) + reduce --allow-failed + judge, then generate --force
    + reduce + judge: the new answers are judged; the old answer_error rows stop counting."""
    out = tmp_path / "runs"
    script = tmp_path / "replies.json"
    script.write_text(json.dumps(["an answer", {"error": "overloaded"}]))  # every other call fails
    gen = ["generate", "--bench", "smoke", "--model-name", "m", "--output", str(out)]
    r = run_job(*gen, "--model", f"mock/script:{script}")
    assert r.returncode == 0, r.stderr
    assert run_job("reduce", "--bench", "smoke", "--output", str(out), "--allow-failed").returncode == 0
    judge = ["--judge-model", "mock/fixed:[[5]]"]
    first = _judged(_smoke(run_job, out, *judge).stdout)
    assert re.fullmatch(r"(\d+) answer_error, (\d+) ok", first) and first != "0 answer_error, 18 ok", first
    assert run_job(*gen, "--model", "mock/echo", "--force").returncode == 0
    assert run_job("reduce", "--bench", "smoke", "--output", str(out)).returncode == 0
    assert _judged(_smoke(run_job, out, *judge).stdout) == "18 ok"
    rows = _current(out)
    assert len(rows) == 18 and {r["status"] for r in rows} == {"ok"}
    # the old rows stay in the file (FastChat's tools read it) but the report does not count them
    assert len(_jsonl(out / "smoke" / "model_judgment" / "mj_single.jsonl")) == 36
    doc = _report(run_job, out, tmp_path, "--bench", "smoke")
    assert (_overall(doc, "m")["n_scored"], _overall(doc, "m")["n_failed"]) == (18, 0)
    # identical inputs: nothing is asked again, the same rows stay current
    assert _judged(_smoke(run_job, out, *judge).stdout) == "nothing new"
    assert _current(out) == rows


@pytest.mark.timeout(120)
def test_changed_judge_prompts_rejudge_only_the_prompts_that_changed(
    run_job: Any, answers: Path, tmp_path: Path
) -> None:
    judge = ["--judge-model", "mock/fixed:[[5]]"]
    assert _judged(_smoke(run_job, answers, *judge).stdout) == "36 ok"  # 9 questions x 2 turns x 2 choices
    prompts = [json.loads(x) for x in (SMOKE / "judge_prompts.jsonl").read_text().splitlines() if x.strip()]
    for p in prompts:
        if p["name"] == "single-v1":
            p["system_prompt"] = "You are a strict grader."
    mine = tmp_path / "prompts.jsonl"
    mine.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    r = _smoke(run_job, answers, *judge, "--judge-prompts", str(mine))
    # single-v1: turn 1 of the 6 questions without a reference, x 2 choices
    assert _judged(r.stdout) == "12 ok"
    assert "12 stored judgments were made with other inputs" in r.stderr
    man = json.loads((answers / "smoke" / "model_judgment" / "mj_single.manifest.json").read_text())
    assert man["judge_prompts"] == str(mine) and len(man["rows"]) == 36
    rows = _current(answers)
    assert len(rows) == 36 and len({(r["question_id"], r["turn"], r["choice"]) for r in rows}) == 36
    v1 = [r for r in rows if r["judge"][1] == "single-v1"]
    assert len(v1) == 12 and all(r["inputs_sha256"] in man["rows"] for r in rows)
    # the report counts exactly those rows (48 stored), and its provenance is the new prompt file's
    doc = _report(run_job, answers, tmp_path, "--bench", "smoke")
    assert _overall(doc, "echo")["n_scored"] == 36
    assert doc["provenance"]["judge_prompts_sha256"] == man["judge_prompts_sha256"]
    assert [(f["rows"], f["stored_rows"]) for f in doc["provenance"]["judgment_files"]] == [(36, 48)]
    # back to the bench's prompt file: its judgments are still stored, so nothing is asked
    assert _judged(_smoke(run_job, answers, *judge).stdout) == "nothing new"
    assert len(_current(answers)) == 36 and not [r for r in _current(answers) if r in v1]


@pytest.mark.timeout(120)
def test_changed_reference_rejudges_the_questions_whose_reference_changed(
    run_job: Any, tmp_path: Path
) -> None:
    data = _custom_bench(tmp_path)
    refs = _jsonl(data / "mine" / "reference_answer" / "ref.jsonl")
    for x in refs:
        if x["question_id"] == 4:
            x["choices"][0]["turns"][0] = "A corrected reference."
    (data / "mine" / "reference_answer" / "ref2.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in refs)
    )
    out = tmp_path / "out"
    base = ["judge", "--bench", "mine", "--bench-data", str(data), "--answers-dir", str(_answer_dir(tmp_path)),
            "--judge-model", "mock/fixed:[[5]]", *MJ, "--output", str(out)]  # fmt: skip
    r = run_job(*base, "--reference", "ref")
    assert r.returncode == 0 and _judged(r.stdout) == "18 ok", r.stderr
    r = run_job(*base, "--reference", "ref2")
    assert r.returncode == 0 and _judged(r.stdout) == "2 ok", r.stderr  # question 4, both turns
    rows = _current(out, "mine")
    assert len(rows) == 18
    man = json.loads((out / "mine" / "model_judgment" / "mj_single.manifest.json").read_text())
    assert man["reference"] == "ref2"


@pytest.mark.timeout(120)
def test_changed_judge_spec_rejudges_under_the_same_judge_name(run_job: Any, answers: Path) -> None:
    assert _judged(_smoke(run_job, answers, "--judge-model", "mock/fixed:[[5]]").stdout) == "36 ok"
    assert _judged(_smoke(run_job, answers, "--judge-model", "mock/fixed:[[7]]").stdout) == "36 ok"
    rows = _current(answers)
    assert len(rows) == 36 and {r["score"] for r in rows} == {7}


@pytest.mark.timeout(120)
def test_models_judged_in_separate_runs_stay_current_while_the_settings_match(
    run_job: Any, tmp_path: Path
) -> None:
    data = _custom_bench(tmp_path)
    ans = _answer_dir(tmp_path)
    (ans / "n.jsonl").write_text((ans / "m.jsonl").read_text().replace('"b"', '"other"'))
    out = tmp_path / "out"
    base = ["judge", "--bench", "mine", "--bench-data", str(data), "--answers-dir", str(ans), "--judge-model",
            "mock/fixed:[[5]]", *MJ, "--reference", "ref", "--output", str(out)]  # fmt: skip
    for m in ("m", "n"):
        r = run_job(*base, "--model-list", m)
        assert r.returncode == 0 and _judged(r.stdout) == "18 ok", r.stderr
    man = json.loads((out / "mine" / "model_judgment" / "mj_single.manifest.json").read_text())
    assert man["models"] == ["m", "n"] and len(man["rows"]) == 36
    assert {x["model"] for x in _current(out, "mine")} == {"m", "n"} and len(_current(out, "mine")) == 36
    # other settings for m: n's rows were judged with the old ones, so they stop counting (and it says so)
    prompts = data / "mine" / "judge_prompts.jsonl"
    mine = tmp_path / "prompts.jsonl"
    mine.write_text(prompts.read_text().replace("You are a careful assistant.", "You are strict."))
    r = run_job(*base, "--model-list", "m", "--judge-prompts", str(mine))
    assert (
        r.returncode == 0
        and "18 stored judgments outside this run" in r.stderr
        and "judge_prompts_sha256" in r.stderr
    )
    assert {x["model"] for x in _current(out, "mine")} == {"m"} and len(_current(out, "mine")) == 18


def _pair_match(answer_2: str, **sampling: Any) -> tuple[Match, str]:
    q = Question.model_validate({"question_id": 1, "category": "writing", "turns": ["q1", "q2"]})
    recs = {
        m: {1: Answer.model_validate({"question_id": 1, "choices": [{"index": 0, "turns": ["a", t]}]})}
        for m, t in (("x", "b"), ("y", answer_2))
    }
    pset = load_prompt_set(SMOKE / "judge_prompts.jsonl")
    prompts = select(pset, "pairwise", {(1, False), (2, False)})
    m = build_matches([q], ["x", "y"], recs, prompts, {}, "pairwise-all")[1]  # turn 2
    return m, inputs_sha256("openai/judge", SamplingParams(**sampling), m)


def test_inputs_hash_covers_both_sides_and_the_sampling() -> None:
    m, h = _pair_match("b")
    assert _pair_match("b")[1] == h and len(h) == 64
    assert _pair_match("other")[1] != h  # model_2's answer is judged too
    assert _pair_match("b", max_new_tokens=4096)[1] != h
    assert inputs_sha256("openai/other-judge", SamplingParams(), m) != h


def test_allow_missing_drops_a_question_only_for_the_model_without_it(run_job: Any, tmp_path: Path) -> None:
    data = _custom_bench(tmp_path)
    ans = _answer_dir(tmp_path, skip=(2,))
    (tmp_path / "n").mkdir()
    full = _jsonl(_answer_dir(tmp_path / "n") / "m.jsonl")
    (ans / "n.jsonl").write_text("".join(json.dumps(x) + "\n" for x in full))
    out = tmp_path / "out"
    r = run_job("judge", "--bench", "mine", "--bench-data", str(data), "--answers-dir", str(ans), "--judge-model",
                "mock/fixed:[[5]]", *MJ, "--reference", "ref", "--output", str(out), "--allow-missing")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = _jsonl(out / "mine" / "model_judgment" / "mj_single.jsonl")
    by = {m: {x["question_id"] for x in rows if x["model"] == m} for m in ("m", "n")}
    assert by["n"] == set(range(1, 10)) and by["m"] == set(range(1, 10)) - {2}
    assert len(rows) == 18 + 16


@pytest.mark.timeout(60)
def test_every_request_failed_exits_nonzero_and_stores_the_failures(run_job: Any, answers: Path) -> None:
    r = run_job("judge", "--bench", "smoke", "--output", str(answers), *MJ, "--judge-model", "mock/fail")
    last = r.stderr.strip().splitlines()[-1]
    assert (
        r.returncode != 0 and last.startswith("error: ") and "36" in last and "mock/fail always fails" in last
    )
    rows = _jsonl(answers / "smoke" / "model_judgment" / "mj_single.jsonl")
    assert rows and {x["status"] for x in rows} == {"api_error"} and all(x["error"] for x in rows)


@pytest.mark.timeout(60)
def test_every_reply_unparsable_exits_nonzero(run_job: Any, answers: Path) -> None:
    r = run_job(
        "judge", "--bench", "smoke", "--output", str(answers), *MJ, "--judge-model", "mock/fixed:no rating"
    )
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and "all 36" in last and "no [[rating]]" in last, r.stderr
    rows = _jsonl(answers / "smoke" / "model_judgment" / "mj_single.jsonl")
    assert len(rows) == 36 and {x["status"] for x in rows} == {"parse_error"}


def _no_system_role(model: Path, dst: Path) -> Path:
    """A copy of the tiny model whose chat template rejects a system message (Gemma-style)."""
    dst.mkdir()
    for f in model.iterdir():
        (dst / f.name).symlink_to(f)
    template = dst / "chat_template.jinja"
    template.unlink()
    template.write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    return dst


@pytest.mark.timeout(180)
@pytest.mark.parametrize("provider", ["vllm", "hf"])
def test_local_judge_request_failure_is_a_failed_status_never_ok(
    run_job: Any, answers: Path, tiny_model: Path, tmp_path: Path, provider: str
) -> None:
    """hf / vllm (the fake engine) judge whose template rejects the system role: every row
    is a failure with the template's error, never `status: ok` with score -1; exit non-zero."""
    judge = _no_system_role(tiny_model, tmp_path / "judge-model")
    fakes = str(Path(__file__).parent / "fakes")
    env = {"PYTHONPATH": os.pathsep.join([fakes, os.environ.get("PYTHONPATH", "")])}
    spec = f"{provider}/{judge}"
    r = run_job("judge", "--bench", "smoke", "--output", str(answers), *MJ, "--judge-model", spec, env=env)
    assert r.returncode != 0 and "System role not supported" in r.stderr.strip().splitlines()[-1], r.stderr
    rows = _jsonl(answers / "smoke" / "model_judgment" / "mj_single.jsonl")
    assert rows and all(x["status"] == "judge_error" and "System role" in x["error"] for x in rows)


def test_s3_read_never_double_counts_after_a_crash_in_compaction(s3: S3Env) -> None:
    storage = open_storage(s3.uri("run"))
    st = JudgmentStore(storage, "b/model_judgment/j_single.jsonl")
    assert st.use_parts
    st.append([{"a": 1}])
    st.append([{"a": 2}, {"a": 3}])
    parts = storage.list(parts_prefix(st.key))
    saved = {p: storage.read_bytes(p) for p in parts}
    st.compact()  # the main object's PUT ...
    for p, data in saved.items():  # ... and a crash before the part deletes
        storage.write_bytes(p, data)
    assert st.read() == [{"a": 1}, {"a": 2}, {"a": 3}]
    st.append([{"a": 4}])
    assert st.read() == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}]
    st.compact()
    assert st.read() == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}] and storage.list(parts_prefix(st.key)) == []


def test_current_rows_keeps_fastchat_files_and_the_last_row_per_input() -> None:
    fastchat = [{"question_id": 1, "model": "m", "score": 8}, {"question_id": 1, "model": "m", "score": 8}]
    assert current_rows(fastchat, None) == fastchat and current_rows(fastchat, {"judge": "x"}) == fastchat
    ours = [
        {"question_id": 1, "status": "api_error", "inputs_sha256": "h1"},
        {"question_id": 2, "status": "ok", "inputs_sha256": "old"},
        {"question_id": 1, "status": "ok", "inputs_sha256": "h1"},
        {"question_id": 2, "status": "ok", "inputs_sha256": "h2"},
    ]
    assert current_rows(ours, {"rows": ["h1", "h2"]}) == ours[2:]


def test_keep_reasoning_is_recorded_and_not_mixed_with_final_answer_rows(tmp_path: Path) -> None:
    from job.judge.runner import JudgeConfig, run

    ans = tmp_path / "answers"
    ans.mkdir()
    for m in ("a", "b"):
        choice = {"index": 0, "turns": ["final one", "final two"],
                  "raw_turns": ["<think>plan</think>final one", "<think>more</think>final two"]}  # fmt: skip
        (ans / f"{m}.jsonl").write_text(
            json.dumps({"question_id": 1, "model_id": m, "choices": [choice]}) + "\n"
        )
    out = tmp_path / "out"

    def judge(model: str, keep: bool) -> dict[str, Any]:
        run(JudgeConfig(bench="smoke", judge_model="mock/fixed:[[5]]", judge_name="mj", output=str(out),
                        answers_dir=str(ans), question_ids=["1"], model_list=[model], keep_reasoning=keep))  # fmt: skip
        return dict(json.loads((out / "smoke/model_judgment/mj_single.manifest.json").read_text()))

    assert judge("a", keep=True)["keep_reasoning"] is True  # what was judged: the raw text
    assert "<think>plan</think>" in _current(out)[0]["user_prompt"]
    man = judge("b", keep=False)
    assert man["keep_reasoning"] is None
    # a's rows judged its raw text (another answers_sha256 than its final answers): not current
    assert man["models"] == ["b"] and {r["model"] for r in _current(out)} == {"b"}


def test_a_stored_row_with_choice_null_is_choice_0_on_resume(tmp_path: Path, capsys: Any) -> None:
    from job.judge.runner import JudgeConfig, run

    ans = tmp_path / "answers"
    ans.mkdir()
    (ans / "a.jsonl").write_text(
        json.dumps({"question_id": 1, "choices": [{"index": 0, "turns": ["x", "y"]}]}) + "\n"
    )
    cfg = JudgeConfig(bench="smoke", judge_model="mock/fixed:[[5]]", judge_name="mj", output=str(tmp_path / "out"),
                      answers_dir=str(ans), question_ids=["1"])  # fmt: skip
    run(cfg)
    path = tmp_path / "out/smoke/model_judgment/mj_single.jsonl"
    rows = _jsonl(path)
    path.write_text(
        "".join(json.dumps({**r, "choice": None}) + "\n" for r in rows)
    )  # a hand-made file's null
    capsys.readouterr()
    run(cfg)
    assert "judged smoke with mj: nothing new; 2 games were already stored" in capsys.readouterr().out
