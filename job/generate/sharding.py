"""Pure shard plan and the shard index/count from flags or the scheduler's environment."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TypeVar

from job.errors import JobError

T = TypeVar("T")


def shard_bounds(n_items: int, num_shards: int, index: int) -> tuple[int, int]:
    """[start, end) of shard `index`: contiguous floor-plus-remainder split.

    The first `n_items % num_shards` shards get one extra item, so every item
    lands in exactly one shard for any num_shards >= 1 (shards may be empty).
    """
    if num_shards < 1:
        raise JobError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= index < num_shards:
        raise JobError(f"shard index {index} is out of range for {num_shards} shards (0..{num_shards - 1})")
    base, extra = divmod(n_items, num_shards)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def shard(items: Sequence[T], num_shards: int, index: int) -> list[T]:
    start, end = shard_bounds(len(items), num_shards, index)
    return list(items[start:end])


def _int_env(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise JobError(f"environment variable {key}={raw!r} is not an integer") from None


def resolve_shard(
    shard_index: int | None, num_shards: int | None, env: Mapping[str, str] | None = None
) -> tuple[list[int], int]:
    """(indices to run here, count) from flags, else Slurm array vars, else a Kubernetes Indexed Job.

    Slurm: SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN, count SLURM_ARRAY_TASK_COUNT.
    Kubernetes: JOB_COMPLETION_INDEX, count from --num-shards / JOB_NUM_SHARDS.
    With a count but no index anywhere, this process runs every shard in turn.
    """
    env = os.environ if env is None else env
    index, count = shard_index, num_shards
    if index is None:
        task = _int_env(env, "SLURM_ARRAY_TASK_ID")
        if task is not None:
            index = task - (_int_env(env, "SLURM_ARRAY_TASK_MIN") or 0)
            if count is None:
                count = _int_env(env, "SLURM_ARRAY_TASK_COUNT")
        else:
            index = _int_env(env, "JOB_COMPLETION_INDEX")
    if count is None:
        count = _int_env(env, "JOB_NUM_SHARDS")
    if count is None:
        if index is not None:
            raise JobError(
                "a shard index is set but not the shard count; pass --num-shards or set JOB_NUM_SHARDS"
            )
        count = 1
    if index is None:
        shard_bounds(0, count, 0)  # validates the count
        return list(range(count)), count
    shard_bounds(0, count, index)  # validates
    return [index], count
