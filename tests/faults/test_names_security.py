"""Security (issue 8): names cannot escape the output root, and model repos run no code of
their own without --trust-remote-code.

Every CLI entry that takes a bench, model, judge, reference, baseline or run name gets
path-like and odd values (`../`, absolute, slashes, newlines, leading dot, too long) and
must stop with exit 2 and one `error: invalid ...` line, writing nothing. Names found
inside files (judgment records, custom bench folders) are checked where they become paths.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from job.cli import cli
from job.errors import JobError
from job.names import check_name, default_model_name

BAD_NAMES = ["../evil", "/etc/passwd", "a/b", "..", ".hidden", "a b", "x\ny", "é", "x" * 201, "a\\b"]
# model names may be Hugging Face ids and any printable text (issue 12): keys hold them
# percent-encoded (job.names.path_name), so only path-like or unprintable ones are refused
BAD_MODEL_NAMES = ["../evil", "/etc/passwd", "..", ".hidden", "x\ny", "x" * 201]
MODEL_ENTRIES = {
    "generate --model-name", "reduce --model-name", "judge --model-list", "judge --baseline-model",
    "report --model-list", "report --baseline-model", "run --model-name",
}  # fmt: skip

# every CLI entry that takes a name; {v} is the bad value, {o} the output root of a finished run
ENTRIES: dict[str, list[str]] = {
    "generate --bench": ["generate", "--bench", "{v}", "--model", "mock/echo"],
    "generate --model-name": ["generate", "--bench", "smoke", "--model", "mock/echo", "--model-name", "{v}"],
    "reduce --bench": ["reduce", "--bench", "{v}"],
    "reduce --model-name": ["reduce", "--bench", "smoke", "--model-name", "{v}"],
    "judge --bench": ["judge", "--bench", "{v}", "--judge-model", "mock/judge"],
    "judge --judge-name": ["judge", "--bench", "smoke", "--judge-model", "mock/judge", "--judge-name", "{v}"],
    "judge --model-list": ["judge", "--bench", "smoke", "--judge-model", "mock/judge", "--model-list", "{v}"],
    "judge --baseline-model": [
        "judge", "--bench", "smoke", "--judge-model", "mock/judge", "--mode", "pairwise-baseline",
        "--baseline-model", "{v}",
    ],
    "judge --reference": [
        "judge", "--bench", "smoke", "--judge-model", "mock/judge", "--judge-name", "j2", "--reference", "{v}",
    ],
    "report --bench": ["report", "--bench", "{v}"],
    "report --judge-name": ["report", "--bench", "smoke", "--judge-name", "{v}"],
    "report --model-list": ["report", "--bench", "smoke", "--model-list", "{v}"],
    "report --baseline-model": [
        "report", "--bench", "smoke", "--mode", "pairwise-baseline", "--baseline-model", "{v}",
    ],
    "run --bench": ["run", "--bench", "{v}", "--model", "mock/echo", "--judge-model", "mock/judge"],
    "run --model-name": [
        "run", "--bench", "smoke", "--model", "mock/echo", "--model-name", "{v}", "--judge-model", "mock/judge",
    ],
    "run --judge-name": [
        "run", "--bench", "smoke", "--model", "mock/echo", "--judge-model", "mock/judge", "--judge-name", "{v}",
    ],
    "run --reference": [
        "run", "--bench", "smoke", "--model", "mock/echo", "--judge-model", "mock/judge", "--reference", "{v}",
    ],
    "run --dry-run --judge-name": [
        "run", "--bench", "smoke", "--model", "mock/echo", "--judge-model", "mock/judge", "--judge-name", "{v}",
        "--dry-run",
    ],
}  # fmt: skip


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished smoke run (mock model, mock judge), so later stages get as far as names matter."""
    out = tmp_path_factory.mktemp("named") / "o"
    res = CliRunner().invoke(
        cli,
        ["run", "--bench", "smoke", "--model", "mock/echo", "--judge-model", "mock/judge", "--first-n", "2"]
        + ["--output", str(out)],
    )
    assert res.exit_code == 0, res.output
    return out


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_an_accepted_name_is_one_path_component_inside_the_root(name: str) -> None:
    root = Path("/srv/runs")
    try:
        check_name("model name", name)
    except JobError as e:
        assert "\n" not in str(e).replace("\\n", "")
        return
    assert name and "/" not in name and "\\" not in name and "\x00" not in name and ".." not in name
    assert not name.startswith((".", "-")) and name.isascii() and name.isprintable()
    joined = Path(os.path.normpath(root / name))
    assert joined.parent == root and joined.name == name


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/b", "a\x00b", "..", ".", "", "x" * 201, " x", "x\r"])
def test_check_name_rejects(bad: str) -> None:
    with pytest.raises(JobError, match="invalid bench name"):
        check_name("bench name", bad)


@given(st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_default_names_from_any_model_spec_are_safe(spec: str) -> None:
    # the answer-file stem derived from --model (hf/../../x, openai/a/b, ...) always passes
    check_name("model name", default_model_name(spec))


# 'a/b' is a valid model name (org/name): tests/test_report_forks.py checks where it lands
CLI_CASES = [
    (entry, bad)
    for entry in sorted(ENTRIES)
    for bad in ("../evil", "/etc/passwd", "a/b", "x\ny")
    if entry not in MODEL_ENTRIES or bad in BAD_MODEL_NAMES
]


@pytest.mark.parametrize(("entry", "bad"), CLI_CASES)
def test_every_cli_name_is_checked(finished_run: Path, tmp_path: Path, entry: str, bad: str) -> None:
    before = _tree(finished_run)
    args = [a.replace("{v}", bad) for a in ENTRIES[entry]] + ["--output", str(finished_run)]
    if entry.startswith("judge") or entry.startswith("run"):
        args += ["--first-n", "2"]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a relative escape would land here
    try:
        res = CliRunner().invoke(cli, args)
    finally:
        os.chdir(cwd)
    assert res.exit_code == 2, (entry, res.output, res.exception)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: invalid ") and repr(bad) in last, (entry, res.stderr)
    assert "Traceback" not in res.stderr
    assert _tree(finished_run) == before  # nothing written, nothing changed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", BAD_MODEL_NAMES)
def test_model_name_values(run_job: Any, tmp_path: Path, bad: str) -> None:
    """The real CLI (subprocess), every odd value, on the option that names the output files."""
    out = tmp_path / "o"
    res = run_job(
        "generate", "--bench", "smoke", "--model", "mock/echo", "--model-name", bad, "--output", str(out)
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: invalid model name")
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
    assert {p.name for p in tmp_path.iterdir()} <= {"o", "cache"}  # cwd is tmp_path: nothing beside


def test_env_names_are_checked_too(run_job: Any, tmp_path: Path) -> None:
    res = run_job(
        "generate", "--output", str(tmp_path / "o"),
        env={"JOB_BENCH": "smoke", "JOB_MODEL": "mock/echo", "JOB_MODEL_NAME": "../../escape"},
    )  # fmt: skip
    assert res.returncode == 2 and "invalid model name '../../escape'" in res.stderr
    assert not (tmp_path.parent / "escape").exists()


def test_odd_bench_folder_names(tmp_path: Path) -> None:
    from job.benches import resolve_bench

    data = tmp_path / "data"
    (data / ".hidden").mkdir(parents=True)
    (data / ".hidden/question.jsonl").write_text('{"question_id": 1, "category": "a", "turns": ["x"]}\n')
    for bad in (".hidden", "..", "../data/.hidden", str(data / ".hidden")):
        with pytest.raises(JobError, match="invalid bench name"):
            resolve_bench(bad, data)


def test_model_names_inside_judgment_files_do_not_reach_outside(finished_run: Path, tmp_path: Path) -> None:
    """A judgment file whose model is `../../x` must not make report/html read outside model_answer/."""
    run = tmp_path / "o"
    shutil.copytree(finished_run, run)
    secret = run / "smoke" / "secret.jsonl"  # what model "../secret" would point at
    secret.write_text(json.dumps({"question_id": 1, "choices": [{"index": 0, "turns": ["stolen"]}]}) + "\n")
    jfile = run / "smoke/model_judgment/judge_single.jsonl"
    lines = jfile.read_text("utf-8").splitlines()
    recs = [json.loads(x) for x in lines]
    for r in recs:
        r["model"] = "../secret"
    jfile.write_text("".join(json.dumps(r) + "\n" for r in recs), "utf-8")
    for extra in ([], ["--ja-chars"]):
        res = CliRunner().invoke(cli, ["report", "--bench", "smoke", "--output", str(run), *extra])
        assert res.exit_code == 2, res.output
        assert "invalid model name (in the judgments) '../secret'" in res.stderr
    assert "stolen" not in "".join(p.read_text("utf-8", "replace") for p in (run / "smoke/reports").glob("*"))


# ---- trust_remote_code ------------------------------------------------------------------


@pytest.fixture
def remote_code_model(tiny_model: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny model, re-typed so that loading it needs the repo's own evil_code.py, which
    writes a marker file when it is imported."""
    model = tmp_path / "remote-code-model"
    shutil.copytree(tiny_model, model)
    marker = tmp_path / "REMOTE_CODE_RAN"
    (model / "evil_code.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('remote code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil_llama'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n",
        "utf-8",
    )
    cfg = json.loads((model / "config.json").read_text("utf-8"))
    cfg["model_type"] = "evil_llama"
    cfg["auto_map"] = {"AutoConfig": "evil_code.EvilConfig", "AutoModelForCausalLM": "evil_code.EvilModel"}
    (model / "config.json").write_text(json.dumps(cfg), "utf-8")
    return model, marker


@pytest.mark.timeout(240)
def test_remote_code_runs_only_with_the_flag(
    run_job: Any, remote_code_model: tuple[Path, Path], tmp_path: Path
) -> None:
    model, marker = remote_code_model
    base = ["--bench", "smoke", "--first-n", "1", "--max-new-tokens", "2"]
    res = run_job("generate", *base, "--model", f"hf/{model}", "--output", str(tmp_path / "a"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "ships its own Python code; pass --trust-remote-code" in res.stderr.strip().splitlines()[-1]
    assert not marker.exists()
    # the judge loads hf/ models through the same backend: same rule
    out = str(tmp_path / "a")
    assert run_job("generate", *base, "--model", "mock/echo", "--output", out).returncode == 0
    assert run_job("reduce", "--bench", "smoke", "--output", out).returncode == 0
    res = run_job(
        "judge", "--bench", "smoke", "--judge-model", f"hf/{model}", "--output", out, "--first-n", "1"
    )
    assert "ships its own Python code" in res.stderr, res.stderr
    assert res.returncode == 2 and not marker.exists(), res.stderr
    # with the explicit flag the repo's code is trusted: it runs (the marker) and the model loads
    res = run_job(
        "generate", *base, "--model", f"hf/{model}", "--trust-remote-code", "--output", str(tmp_path / "b")
    )
    assert res.returncode == 0, res.stderr
    assert marker.read_text() == "remote code ran"
