"""Issue 14 clean-up guards: folding repeated code changed no file format and no CLI text.

- a judgment row is written in FastChat's key order, ours after it (key orders typed by hand
  from FastChat's gen_judgment rows, docs/reference fastchat_llm_judge.md section 1.4);
- an option that several commands take is defined once: the same --help text everywhere.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from job.cli import cli as main
from job.records.judgments import PairJudgment, SingleJudgment, judgment_line, read_judgment

SINGLE_KEYS = [
    "question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp",
    "choice", "status", "error", "inputs_sha256", "sample", "usage", "attempts",
]  # fmt: skip
PAIR_KEYS = [
    "question_id", "model_1", "model_2", "g1_winner", "g2_winner", "judge",
    "g1_user_prompt", "g1_judgment", "g2_user_prompt", "g2_judgment", "turn", "tstamp",
    "choice", "status", "error", "inputs_sha256", "g1_status", "g2_status",
    "sample", "usage", "attempts",
]  # fmt: skip
EXTRAS = {"sample": 1, "usage": {"prompt_tokens": 3, "completion_tokens": 4}, "attempts": []}


def _single() -> dict[str, object]:
    return {"question_id": 81, "model": "m", "judge": ["gpt-4", "single-v1"], "user_prompt": "p",
            "judgment": "[[7]]", "score": 7, "turn": 1, "tstamp": 1.5}  # fmt: skip


def _pair() -> dict[str, object]:
    return {"question_id": 81, "model_1": "a", "model_2": "b", "g1_winner": "model_1", "g2_winner": "tie",
            "judge": ["gpt-4", "pair-v2"], "g1_user_prompt": "p1", "g1_judgment": "[[A]]",
            "g2_user_prompt": "p2", "g2_judgment": "[[C]]", "turn": 1, "tstamp": 1.5}  # fmt: skip


@pytest.mark.parametrize(
    ("model", "row", "keys"), [(SingleJudgment, _single, SINGLE_KEYS), (PairJudgment, _pair, PAIR_KEYS)]
)
def test_judgment_rows_keep_fastchats_key_order(model, row, keys) -> None:  # type: ignore[no-untyped-def]
    full = model.model_validate({**row(), **EXTRAS})
    assert list(judgment_line(full)) == keys
    # FastChat's own row: its keys first, in its order; ours without the unset optional ones
    plain = model.model_validate(row())
    assert list(judgment_line(plain)) == [k for k in keys if k not in EXTRAS]
    assert list(json.loads(json.dumps(judgment_line(plain))))[: len(row())] == list(row())


@pytest.mark.parametrize(
    ("row", "keys", "pairwise"), [(_single, SINGLE_KEYS, False), (_pair, PAIR_KEYS, True)]
)
def test_read_rows_dump_in_the_written_order(row, keys, pairwise) -> None:  # type: ignore[no-untyped-def]
    (rec,) = read_judgment({**row(), **EXTRAS}, "f.jsonl:1", pairwise)
    assert list(rec.model_dump()) == keys


def _help_texts(cmd: str) -> dict[str, str]:
    params = main.get_command(None, cmd).params  # type: ignore[arg-type, union-attr]
    return {o: p.help or "" for p in params for o in p.opts if o.startswith("--")}


@pytest.mark.parametrize(
    ("a", "b"), [("judge", "run"), ("generate", "run"), ("report", "run"), ("judge", "report")]
)
def test_an_option_two_commands_take_has_one_help_text(a: str, b: str) -> None:
    # the options whose meaning differs between the two commands on purpose
    differ = {
        ("judge", "run"): {"--batch-size", "--base-url"},  # run: the generator's; judge: the judge's
        ("generate", "run"): {"--num-shards", "--model"},  # run: shards one after another, --model repeats
        ("judge", "report"): {
            "--model-list",
            "--answers-dir",
            "--judge-name",
            "--bench",
        },  # report: a default
        ("report", "run"): {"--seed", "--judge-name", "--bench"},  # bootstrap vs sampling seed; pick vs name
    }[(a, b)]
    ha, hb = _help_texts(a), _help_texts(b)
    shared = sorted(set(ha) & set(hb) - differ)
    assert shared, "the commands share options"
    assert {o: ha[o] for o in shared} == {o: hb[o] for o in shared}


def test_help_of_every_command_renders() -> None:
    for cmd in ("generate", "judge", "run", "report", "leaderboard"):
        res = CliRunner().invoke(main, [cmd, "--help"])
        assert res.exit_code == 0, res.output


def test_a_finished_models_fingerprint_is_the_one_written_before_the_judge_template() -> None:
    """RunConfig now holds the judge's JudgeConfig; the done/ marker's fingerprint keeps its
    blob (judge fields at the top, the sampling ones under judge_settings), so a model finished
    by the earlier code is still found finished."""
    import hashlib
    from dataclasses import asdict

    from job.generate import GenerateConfig
    from job.judge.plan import JudgeConfig
    from job.pipeline import RunConfig
    from job.pipeline.models import fingerprint

    gen = GenerateConfig(bench="smoke", model="mock/echo", model_name="llm-step-100", num_shards=2)
    judge = JudgeConfig(bench="smoke", judge_model="mock/judge", judge_name="j", judge_samples=3,
                        judge_temperature=0.7, parse_retries=2, backend_options={"concurrency": 4})  # fmt: skip
    cfg = RunConfig(generate=gen, judge=judge, allow_failed=True, publish="/pub")
    blob = {
        "generate": {
            k: v for k, v in asdict(gen).items() if k not in ("dry_run", "num_shards", "shard_index")
        },
        "judge_model": "mock/judge",
        "judge_name": "j",
        "reference": None,
        "judge_settings": {"judge_samples": 3, "judge_temperature": 0.7, "parse_retries": 2},
        "allow_failed": True,
        "report_dir": None,
        "publish": "/pub",
        "step": 100,  # from the default --step-pattern on the model name
    }
    want = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()
    assert fingerprint(cfg, legacy=True) == want
