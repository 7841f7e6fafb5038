"""Reasoning models (issue 15 item 1): the reasoning split, what turn 2 and the judge see,
--keep-reasoning, --chat-template-kwargs (hf, vllm) and --extra-body (openai)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from servers.openai_server import OpenAIServer, Reply

from job import reduce
from job.backends import load_backend
from job.backends.base import GenRequest, SamplingParams
from job.errors import JobError
from job.generate import GenerateConfig
from job.generate import run as generate
from job.judge import runner as judge
from job.records import Answer, Choice, ShardManifest, parse_records
from job.records.reasoning import compile_pattern, judged_view, record_fields, split_turn

pytestmark = pytest.mark.timeout(120)

DEFAULT = compile_pattern(None)
# text without the tags the default pattern looks for
plain = st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=40)


# -- the splitter ------------------------------------------------------------------------


@given(reasoning=plain, answer=plain, gap=st.sampled_from(["", "\n", "\n\n", " "]))
def test_think_block_and_answer_reconstruct_the_raw_text(reasoning: str, answer: str, gap: str) -> None:
    raw = f"<think>{reasoning}</think>{gap}{answer}"
    t = split_turn(raw, DEFAULT)
    assert t.raw == raw and not t.unterminated
    assert t.answer == answer.lstrip()
    assert t.reasoning == (reasoning.strip() or None)
    # the raw text is the removed block followed by the answer, the reasoning inside the block
    head = raw[: len(raw) - len(t.answer)]
    assert raw == head + t.answer and (t.reasoning or "") in head


@given(text=st.text(max_size=60))
def test_no_pattern_is_the_identity(text: str) -> None:
    t = split_turn(text, compile_pattern("none"))
    assert (t.answer, t.raw, t.reasoning, t.unterminated) == (text, text, None, False)


@given(text=plain)
def test_text_without_a_block_is_its_own_answer(text: str) -> None:
    t = split_turn(text, DEFAULT)
    assert (t.answer, t.reasoning, t.unterminated) == (text, None, False)


def test_unterminated_block_is_kept_as_it_stands_and_flagged() -> None:
    t = split_turn("<think>step 1, step 2, ste", DEFAULT)
    assert (t.answer, t.reasoning, t.unterminated) == (
        "<think>step 1, step 2, ste",
        "step 1, step 2, ste",
        True,
    )


def test_template_opened_block_r1_style() -> None:
    # DeepSeek-R1 / Qwen3 templates write <think> into the prompt: the reply starts inside it
    t = split_turn("I should add.\n</think>\n\n4", DEFAULT)
    assert (t.answer, t.reasoning) == ("4", "I should add.")


def test_custom_pattern_group_convention() -> None:
    p = compile_pattern(r"\[REASON\](?P<reasoning>.*?)(?:\[/REASON\]|(?P<unterminated>\Z))")
    assert split_turn("[REASON]x[/REASON] y", p).answer == "y"
    assert split_turn("[REASON]x", p).unterminated
    assert split_turn("<think>x</think>y", p).answer == "<think>x</think>y"  # only its own tags


def test_api_reasoning_field_and_record_fields() -> None:
    t1 = split_turn("final", DEFAULT, api_reasoning="thought")
    t2 = split_turn("<think>a</think>b", DEFAULT)
    assert (t1.answer, t1.reasoning) == ("final", "thought")
    fields = record_fields([t1, t2])
    assert fields == {"turns": ["final", "b"], "raw_turns": ["final", "<think>a</think>b"],
                      "reasoning": ["thought", "a"], "reasoning_unterminated": None}  # fmt: skip
    plain_fields = record_fields([split_turn("x", DEFAULT)])
    assert plain_fields == {
        "turns": ["x"],
        "raw_turns": None,
        "reasoning": None,
        "reasoning_unterminated": None,
    }


def test_bad_pattern_is_a_one_line_error() -> None:
    with pytest.raises(JobError, match=r"--reasoning-pattern '\(unclosed': not a regular expression"):
        compile_pattern("(unclosed")


def test_fastchat_answer_loads_unchanged_and_judged_view() -> None:
    line = '{"question_id": 81, "answer_id": "x", "model_id": "m", "choices": [{"index": 0, "turns": ["a", "b"]}], "tstamp": 1.0}'
    (a,) = parse_records(line, Answer, "m.jsonl")
    assert a.choices[0].raw_turns is None and judged_view(a, True) is a
    ours = Answer(question_id=1, choices=[Choice(index=0, turns=["b"], raw_turns=["<think>a</think>b"])])
    assert judged_view(ours, True).choices[0].turns == ["<think>a</think>b"]
    assert judged_view(ours, False).choices[0].turns == ["b"]


# -- end to end: the OpenAI-compatible test server ------------------------------------


def _gen_reply(body: dict[str, Any]) -> Reply | str:
    if body["model"] == "judge":
        return "Rating: [[7]]"
    if len(body["messages"]) == 1:  # turn 1: a <think> block in the content and a separate field
        return Reply("<think>secret plan</think>\n\nanswer one", reasoning_content="api thoughts")
    return Reply("<think>cut off before closi")  # turn 2: unterminated


def _gen_cfg(out: Path, srv: OpenAIServer, **extra: Any) -> GenerateConfig:
    opts = {"base_url": srv.url, "concurrency": 2, "max_retries": 0, **extra}
    return GenerateConfig(bench="smoke", model="openai/gen", question_ids=["1"], output=str(out),
                          max_new_tokens=64, backend_options=opts)  # fmt: skip


def _judge(out: Path, srv: OpenAIServer, keep: bool) -> None:
    cfg = judge.JudgeConfig(bench="smoke", judge_model="openai/judge", output=str(out), question_ids=["1"],
                            keep_reasoning=keep, backend_options={"base_url": srv.url, "api_key_env": None})  # fmt: skip
    judge.run(cfg)


def test_history_and_judge_get_the_answer_keep_reasoning_the_raw(
    make_openai_server: Any, tmp_path: Path
) -> None:
    srv: OpenAIServer = make_openai_server(reply=_gen_reply, models=["gen", "judge"])
    out = tmp_path / "runs"
    generate(_gen_cfg(out, srv))
    reduce.run(reduce.ReduceConfig(bench="smoke", model_names=["gen"], output=str(out)))

    gen = [r for r in srv.requests if r.body["model"] == "gen"]
    assert len(gen) == 2
    # turn 2's history holds the answer only: no think block, no API reasoning
    assert gen[1].messages[1] == {"role": "assistant", "content": "answer one"}

    (a,) = parse_records((out / "smoke/model_answer/gen.jsonl").read_bytes(), Answer, "gen.jsonl")
    c = a.choices[0]
    assert c.turns == ["answer one", "<think>cut off before closi"]
    assert c.raw_turns == ["<think>secret plan</think>\n\nanswer one", "<think>cut off before closi"]
    assert c.reasoning == ["api thoughts\n\nsecret plan", "cut off before closi"]
    assert c.reasoning_unterminated == [False, True]

    _judge(out, srv, keep=False)
    prompts = [r.last_user for r in srv.requests if r.body["model"] == "judge"]
    assert len(prompts) == 2  # turn 1 and turn 2 of question 1
    assert all("answer one" in p and "secret plan" not in p and "api thoughts" not in p for p in prompts)
    assert any("<think>cut off before closi" in p for p in prompts)  # judged as it stands

    before = len(srv.requests)
    _judge(out, srv, keep=True)  # a changed judged text: both games asked again
    kept = [r.last_user for r in srv.requests[before:]]
    assert len(kept) == 2 and all("<think>secret plan</think>" in p for p in kept)
    assert not any("api thoughts" in p for p in kept)  # the API's field is not the content


def test_extra_body_is_sent_recorded_and_hashed(make_openai_server: Any, tmp_path: Path) -> None:
    srv: OpenAIServer = make_openai_server(reply=lambda body: "plain answer", models=["gen"])
    out = tmp_path / "runs"
    generate(_gen_cfg(out, srv, extra_body={"reasoning_effort": "low"}))
    assert {r.body.get("reasoning_effort") for r in srv.requests} == {"low"}
    (manifest_path,) = (out / "smoke/shards/gen").glob("*.manifest.json")
    manifest = ShardManifest.model_validate_json(manifest_path.read_text())
    assert manifest.sampling["extra_body"] == {"reasoning_effort": "low"}
    with pytest.raises(JobError, match="holds a shard of a different run"):
        generate(_gen_cfg(out, srv, extra_body={"reasoning_effort": "high"}))
    with pytest.raises(JobError, match="--extra-body: model is set by the backend"):
        load_backend("openai/gen", base_url=srv.url, extra_body={"model": "other"})


def test_bad_json_option_is_a_one_line_error(run_job: Any) -> None:
    res = run_job("generate", "--bench", "smoke", "--model", "hf-tiny", "--chat-template-kwargs", "{bad")
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert "--chat-template-kwargs: not valid JSON" in last, res.stderr
    with pytest.raises(JobError, match="--extra-body applies to openai/ models only"):
        load_backend("hf-tiny", extra_body={"reasoning_effort": "low"})


# -- chat template kwargs: hf and vllm ------------------------------------------------

# also rendered by vLLM's own chat path: tests/test_vllm_contract.py (the "kwargs" case)
THINK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
    "{% if enable_thinking is defined and enable_thinking is false %}<think></think>NO-THINK{% endif %}"
)
REQ = GenRequest([{"role": "user", "content": "2+2?"}], SamplingParams(0.0, 4))


def test_hf_chat_template_kwargs_reach_the_template(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tpl = tmp_path / "think.jinja"
    tpl.write_text(THINK_TEMPLATE)
    on = load_backend(f"hf/{tiny_model}", chat_template=str(tpl), device="cpu")
    off = load_backend(f"hf/{tiny_model}", chat_template=str(tpl), device="cpu",
                       chat_template_kwargs={"enable_thinking": False})  # fmt: skip
    assert "NO-THINK" not in on.render(REQ)  # type: ignore[attr-defined]
    assert off.render(REQ).endswith("assistant:<think></think>NO-THINK")  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, "job.backends.template_kwargs"):
        typo = load_backend(f"hf/{tiny_model}", chat_template=str(tpl), device="cpu",
                            chat_template_kwargs={"enable_thinkin": False})  # fmt: skip
    assert "NO-THINK" not in typo.render(REQ)  # type: ignore[attr-defined]
    assert "the chat template never reads enable_thinkin" in caplog.text


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from test_vllm_backend import use_fake_vllm

    yield from use_fake_vllm(monkeypatch)


def test_vllm_chat_template_kwargs_reach_the_template(
    fake_vllm: Any, tiny_model: Path, tmp_path: Path
) -> None:
    tpl = tmp_path / "think.jinja"
    tpl.write_text(THINK_TEMPLATE)
    on = load_backend(f"vllm/{tiny_model}", chat_template=str(tpl))
    off = load_backend(
        f"vllm/{tiny_model}", chat_template=str(tpl), chat_template_kwargs={"enable_thinking": False}
    )
    text = off.tokenizer.decode(off.encode(REQ))  # type: ignore[attr-defined]
    assert text.endswith("NO-THINK") and "NO-THINK" not in on.tokenizer.decode(on.encode(REQ))  # type: ignore[attr-defined]


def test_job_run_passes_extra_body_to_the_generator_only(
    make_openai_server: Any, run_job: Any, tmp_path: Path
) -> None:
    srv: OpenAIServer = make_openai_server(reply=_gen_reply, models=["gen", "judge"])
    res = run_job(
        "run", "--bench", "smoke", "--model", "openai/gen", "--base-url", srv.url, "--question-ids", "1",
        "--extra-body", '{"reasoning_effort": "low"}', "--judge-model", "openai/judge",
        "--judge-base-url", srv.url, "--output", str(tmp_path / "runs"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    efforts = {r.body["model"]: r.body.get("reasoning_effort") for r in srv.requests}
    assert efforts == {"gen": "low", "judge": None}
    judged = [r.last_user for r in srv.requests if r.body["model"] == "judge"]
    assert judged and not any("secret plan" in p for p in judged)


def test_dry_run_prints_the_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = GenerateConfig(bench="smoke", model="openai/gen", output=str(tmp_path), dry_run=True,
                         reasoning_pattern="none", backend_options={"extra_body": {"reasoning_effort": "low"}})  # fmt: skip
    generate(cfg)
    out = capsys.readouterr().out
    assert (
        'reasoning and template settings: {"extra_body": {"reasoning_effort": "low"}, "reasoning_pattern": "none"}'
        in out
    )


def test_api_reply_with_only_reasoning_is_an_empty_answer(make_openai_server: Any) -> None:
    # vLLM's reasoning parser when the limit runs out inside the reasoning: content null
    reply = Reply("", finish_reason="length", reasoning_content="still thinking")
    srv: OpenAIServer = make_openai_server(reply=lambda body: reply, faults=["null_content"])
    backend = load_backend("openai/test-model", base_url=srv.url, max_retries=2)
    try:
        (res,) = backend.generate([REQ])
    finally:
        backend.close()
    # the limit ran out inside the reasoning: an empty answer cut by the length limit (judged)
    assert (res.status, res.text, res.finish_reason, res.reasoning) == ("ok", "", "length", "still thinking")
    assert len(srv.requests) == 1  # asking again would pay for the same reasoning
