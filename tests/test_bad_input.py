"""Bad input: a clear one-line error, a non-zero exit, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest


def _custom_bench(root: Path, text: str) -> Path:
    (root / "mine").mkdir(parents=True)
    (root / "mine/question.jsonl").write_text(text, "utf-8")
    return root


GOOD = '{"question_id": 1, "category": "writing", "turns": ["Hi", "More"]}\n'


@pytest.mark.parametrize(
    ("case", "args", "expected"),
    [
        (
            "unknown bench",
            ["--bench", "no_such_bench", "--model", "mock/echo"],
            "unknown bench 'no_such_bench'",
        ),
        (
            "missing data dir",
            ["--bench", "mt_bench", "--bench-data", "{tmp}/nope", "--model", "mock/echo"],
            "bench data dir {tmp}/nope does not exist",
        ),
        (
            "corrupt line",
            ["--bench", "mine", "--bench-data", "{corrupt}", "--model", "mock/echo"],
            "{corrupt}/mine/question.jsonl:2: malformed JSON",
        ),
        (
            "no turns",
            ["--bench", "mine", "--bench-data", "{noturns}", "--model", "mock/echo"],
            "{noturns}/mine/question.jsonl:2: invalid question (turns: Field required)",
        ),
        (
            "zero shards",
            ["--bench", "smoke", "--model", "mock/echo", "--num-shards", "0"],
            "--num-shards must be >= 1",
        ),
        (
            "index out of range",
            ["--bench", "smoke", "--model", "mock/echo", "--num-shards", "3", "--shard-index", "3"],
            "shard index 3 is out of range for 3 shards",
        ),
        (
            "missing model path",
            ["--bench", "smoke", "--model", "hf/{tmp}/no-model"],
            "model path '{tmp}/no-model' does not exist",
        ),
        (
            "unwritable output",
            ["--bench", "smoke", "--model", "mock/echo", "--output", "{tmp}/afile/runs"],
            "is not writable",
        ),
        ("unknown provider", ["--bench", "smoke", "--model", "gpt/4"], "unknown model provider 'gpt'"),
        (
            "bad model name",
            ["--bench", "smoke", "--model", "mock/echo", "--model-name", "../../etc"],
            "invalid model name",
        ),
        (
            "unknown question id",
            ["--bench", "smoke", "--model", "mock/echo", "--question-ids", "999"],
            "no question with id 999",
        ),
    ],
)
def test_generate_bad_input(run_job, tmp_path: Path, case: str, args: list[str], expected: str) -> None:
    corrupt = _custom_bench(tmp_path / "c", GOOD + '{"question_id": 2, "category": "x", "turns": ["a"\n')
    noturns = _custom_bench(tmp_path / "n", GOOD + '{"question_id": 2, "category": "x"}\n')
    (tmp_path / "afile").write_text("not a dir")
    fill = {"tmp": str(tmp_path), "corrupt": str(corrupt), "noturns": str(noturns)}
    args = [a.format(**fill) for a in args]
    out = tmp_path / "out"
    if "--output" not in args:
        args += ["--output", str(out)]
    res = run_job("generate", *args)
    assert res.returncode == 2, (case, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), res.stderr
    assert expected.format(**fill) in lines[-1], res.stderr
    assert "Traceback" not in res.stderr
    # nothing half-written
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_missing_extra_names_the_pip_install(run_job, tmp_path: Path) -> None:
    # vllm is not installed here: the error says which extra fixes it
    res = run_job(
        "generate", "--bench", "smoke", "--model", "vllm/some-model", "--output", str(tmp_path / "o")
    )
    assert res.returncode == 2
    assert "pip install 'mtbench-job[vllm]'" in res.stderr


def test_model_without_chat_template_is_a_clear_error(run_job, tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg = (bare / "tokenizer_config.json").read_text("utf-8")
    import json

    data = json.loads(cfg)
    data.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(data), "utf-8")
    res = run_job("generate", "--bench", "smoke", "--model", f"hf/{bare}", "--output", str(tmp_path / "o"))
    assert res.returncode == 2 and "has no chat template; pass --chat-template FILE" in res.stderr
    # with a template file it works
    tmpl = tmp_path / "t.jinja"
    from job.backends.smoke_model import CHAT_TEMPLATE

    tmpl.write_text(CHAT_TEMPLATE, "utf-8")
    res = run_job(
        "generate",
        "--bench",
        "smoke",
        "--model",
        f"hf/{bare}",
        "--chat-template",
        str(tmpl),
        "--first-n",
        "1",
        "--max-new-tokens",
        "4",
        "--output",
        str(tmp_path / "o"),
    )
    assert res.returncode == 0, res.stderr


def test_existing_shard_of_another_run_is_not_overwritten(run_job, tmp_path: Path) -> None:
    out = tmp_path / "o"
    base = ["generate", "--bench", "smoke", "--model", "mock/echo", "--output", str(out), "--first-n", "2"]
    assert run_job(*base).returncode == 0
    shard = out / "smoke/shards/echo/shard-00000-of-00001.jsonl"
    before = shard.read_bytes()
    res = run_job(*base, "--max-new-tokens", "7")
    assert res.returncode == 2 and "different run" in res.stderr and "--force" in res.stderr
    assert shard.read_bytes() == before
    assert run_job(*base, "--max-new-tokens", "7", "--force").returncode == 0


def test_import_job_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, job, job.cli, job.generate, job.reduce, job.backends;"
        "from click.testing import CliRunner; CliRunner().invoke(job.cli.cli, ['--help']);"
        "heavy = [m for m in ('torch', 'vllm', 'ray', 'transformers') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
