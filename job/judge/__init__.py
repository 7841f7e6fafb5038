"""The judge stage (`job judge`): FastChat's LLM-as-a-judge over the reduced answers.

Owns: the judge prompt files (prompts.py), matches in FastChat's order (matches.py, pure),
rating/verdict parsing (parse.py, pure), resume keys and the records written (results.py,
pure), planning (plan.py: config, answers and references, what is still to send), --dry-run's
token and cost estimate (estimate.py), the runner that sends and resumes (runner.py), the
recorder that turns replies into stored records and asks unparseable ones again
(recorder.py), the run's totals in the manifest (totals.py), the manifest's rows merged
across runs (manifest.py) and the judgment store (store.py). Only plan, estimate, runner,
recorder, totals, manifest and store do I/O.

Imports core, job.benches, job.backends and job.storage only: never generate, reduce,
report, gate, pipeline or commands (import-linter, pyproject.toml).
"""

from job.judge.matches import (
    DONE_STATUSES,
    FAILED_STATUSES,
    JUDGE_MAX_TOKENS,
    JUDGE_PARAMS,
    JUDGE_TEMPERATURE,
    MODES,
    Match,
    build_judge_prompt,
    build_matches,
    judge_messages,
    needs_ref,
)
from job.judge.parse import (
    parse_rating,
    parse_verdict,
)
from job.judge.results import (
    GameKey,
    GameResult,
    RowKey,
    game_key,
    game_result,
    inputs_sha256,
    make_record,
    row_key,
    stored_games,
    stored_row_key,
)

__all__ = [
    "DONE_STATUSES",
    "FAILED_STATUSES",
    "GameKey",
    "GameResult",
    "JUDGE_MAX_TOKENS",
    "JUDGE_PARAMS",
    "JUDGE_TEMPERATURE",
    "MODES",
    "Match",
    "RowKey",
    "build_judge_prompt",
    "build_matches",
    "game_key",
    "game_result",
    "inputs_sha256",
    "judge_messages",
    "make_record",
    "needs_ref",
    "parse_rating",
    "parse_verdict",
    "row_key",
    "stored_games",
    "stored_row_key",
]
