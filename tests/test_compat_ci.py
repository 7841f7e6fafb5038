"""The supported ranges are the tested ones: .ci/run runs the hf tests again on the oldest
transformers, accelerate and tokenizers pyproject.toml allows (.ci/oldest_transformers.sh
reads the bounds from it)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_hf_tests_on_the_oldest_transformers() -> None:
    assert "bash .ci/oldest_transformers.sh" in (REPO / ".ci" / "run").read_text()
    script = (REPO / ".ci" / "oldest_transformers.sh").read_text()
    assert "pyproject.toml" in script and "(transformers|accelerate|tokenizers)>=" in script
    tests = re.findall(r"tests/test_\w+\.py", script)
    assert {"tests/test_hf_batching.py", "tests/test_hf_memory.py"} <= set(tests)
    assert all((REPO / t).is_file() for t in tests), tests


def test_ci_runs_the_readme_test_commands_default_then_slow() -> None:
    """README's "Run the tests" commands are .ci/run's, in order; together the whole not-gpu set."""
    readme = (REPO / "README.md").read_text().split("## Run the tests", 1)[1].split("```", 2)[1]
    ci = "\n".join(
        line for line in (REPO / ".ci" / "run").read_text().splitlines() if not line.lstrip().startswith("#")
    )
    command = r'python -m pytest -q -m "([^"]+)"'
    assert re.findall(command, readme) == ["not gpu and not slow", "slow and not gpu"]
    assert re.findall(command, ci) == re.findall(command, readme)
