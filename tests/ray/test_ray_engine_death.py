"""`--executor ray` when a replica's vLLM engine dies (the fake vllm's FAKE_VLLM_DIE_AT):
the replica is replaced by a fresh process, never given another shard on the dead engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray_netns import job_netns

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
FAKES = Path(__file__).resolve().parent.parent / "fakes"


@pytest.mark.slow  # a Ray cluster whose engine actor is killed: ~30 s loaded
def test_dead_engine_replica_is_replaced_and_every_shard_completes(
    netns: None, tiny_model: Path, shared_bench_data: Path, ray_env: dict[str, str], tmp_path: Path
) -> None:
    out, log = tmp_path / "out", tmp_path / "vllm.jsonl"
    # one replica, 3 shards of 2 engine calls (turn 1, turn 2); each engine process dies at its
    # 3rd call: replica A runs shard 1 and dies in shard 2, B redoes shard 2 and dies in shard 3,
    # C redoes shard 3. A dead replica reused would fail shards 2 and 3.
    env = dict(ray_env, PYTHONPATH=str(FAKES), FAKE_VLLM_DIE_AT="3", FAKE_VLLM_LOG=str(log))
    args = [
        "generate", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--model", f"vllm/{tiny_model}",
        "--model-name", "v", "--first-n", "3", "--max-new-tokens", "4", "--output", str(out),
        "--executor", "ray", "--num-shards", "3", "--num-replicas", "1", "--device", "cpu",
    ]  # fmt: skip
    r = job_netns(args, env, tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stderr.count("engine died during shard") == 2, r.stderr[-4000:]
    assert len(list((out / "mt_bench/shards/v").glob("*.manifest.json"))) == 3
    engines = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "init"]
    assert len(engines) == 3, "a fresh engine (process) for each death"
