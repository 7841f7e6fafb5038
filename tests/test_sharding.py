"""Shard plan properties and the shard index from flags / Slurm / Kubernetes env."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job.errors import JobError
from job.generate.sharding import resolve_shard, shard, shard_bounds


@given(n_items=st.integers(0, 400), num_shards=st.integers(1, 100))
def test_every_item_in_exactly_one_shard(n_items: int, num_shards: int) -> None:
    items = list(range(n_items))
    parts = [shard(items, num_shards, i) for i in range(num_shards)]
    flat = [x for p in parts for x in p]
    assert flat == items  # contiguous, ordered, no gaps, no duplicates
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    # floor-plus-remainder: the larger shards come first
    assert sizes == sorted(sizes, reverse=True)


def test_fastchat_chunking_bug_does_not_happen() -> None:
    # FastChat's len // n chunking makes 26+26+26+2 for 80/3; we make 27+27+26
    assert [len(shard(list(range(80)), 3, i)) for i in range(3)] == [27, 27, 26]
    # more shards than items: empty shards, never a crash
    assert [len(shard([1, 2], 5, i)) for i in range(5)] == [1, 1, 0, 0, 0]


@pytest.mark.parametrize(
    ("index", "count", "env", "expected"),
    [
        (None, None, {}, ([0], 1)),
        (2, 4, {}, ([2], 4)),
        (None, 3, {}, ([0, 1, 2], 3)),  # a count and no index: run every shard here
        (None, None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, ([3], 4)),
        # arrays may start at 1 (--array=1-4): the offset is removed
        (
            None,
            None,
            {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"},
            ([3], 4),
        ),
        (None, None, {"JOB_COMPLETION_INDEX": "1", "JOB_NUM_SHARDS": "2"}, ([1], 2)),
        (None, 5, {"JOB_COMPLETION_INDEX": "4"}, ([4], 5)),
        # explicit flags beat the environment
        (0, 2, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}, ([0], 2)),
    ],
)
def test_resolve_shard(index, count, env, expected) -> None:
    assert resolve_shard(index, count, env) == expected


@pytest.mark.parametrize(
    ("index", "count", "env", "message"),
    [
        (None, 0, {}, "--num-shards must be >= 1"),
        (3, 3, {}, "out of range"),
        (-1, 3, {}, "out of range"),
        (None, None, {"JOB_COMPLETION_INDEX": "1"}, "shard count"),
        (None, None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "not an integer"),
    ],
)
def test_resolve_shard_errors(index, count, env, message) -> None:
    with pytest.raises(JobError, match=message):
        resolve_shard(index, count, env)


def test_bounds_validate() -> None:
    with pytest.raises(JobError):
        shard_bounds(10, 0, 0)
