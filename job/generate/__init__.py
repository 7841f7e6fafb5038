"""The generate stage (`job generate`): answer the shard's (question, choice) conversations.

Owns: the shard plan (plan.py), the wave scheduler, batched and streaming (waves.py), shard
generation, commit and resume (shards.py), the Ray executor (ray_executor.py) and shard
slicing (sharding.py). Turn 1 of every conversation in the shard goes to the backend as one
batch; turn 2 (each conversation with its own turn-1 answer) is the next batch. The shard
object and its manifest are written atomically at the end, so a crashed task leaves nothing
half-written and a re-run of a finished shard is a no-op.

Imports core, job.benches, job.backends and job.storage only: never reduce, judge, report,
gate, pipeline or commands (checked by import-linter, pyproject.toml).
"""

from job.benches import select_questions
from job.generate.plan import (
    GenerateConfig,
    ShardPlan,
    backend_options,
    parse_category_temperatures,
    plan,
    print_plan,
    temperature_of,
    work_items,
)
from job.generate.shards import commit_shard, committed_note, generate_shard, pending_shards, run
from job.generate.waves import Conversation, run_waves

__all__ = [
    "Conversation",
    "GenerateConfig",
    "ShardPlan",
    "backend_options",
    "commit_shard",
    "committed_note",
    "generate_shard",
    "parse_category_temperatures",
    "pending_shards",
    "plan",
    "print_plan",
    "run",
    "run_waves",
    "select_questions",
    "temperature_of",
    "work_items",
]
