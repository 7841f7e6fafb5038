"""Object keys under the run root, mirroring FastChat's data/<bench>/ layout."""

from __future__ import annotations

import re

SHARD_RE = re.compile(r"shard-(\d{5})-of-(\d{5})\.manifest\.json$")


def shards_prefix(bench: str, model_name: str) -> str:
    return f"{bench}/shards/{model_name}/"


def shard_key(bench: str, model_name: str, index: int, num_shards: int) -> str:
    return f"{shards_prefix(bench, model_name)}shard-{index:05d}-of-{num_shards:05d}.jsonl"


def manifest_key(shard: str) -> str:
    return shard.removesuffix(".jsonl") + ".manifest.json"


def shard_of_manifest(manifest: str) -> str:
    return manifest.removesuffix(".manifest.json") + ".jsonl"


def answer_key(bench: str, model_name: str) -> str:
    return f"{bench}/model_answer/{model_name}.jsonl"


def answer_manifest_key(bench: str, model_name: str) -> str:
    return f"{bench}/model_answer/{model_name}.manifest.json"


def judgment_dir(bench: str) -> str:
    return f"{bench}/model_judgment/"


def reports_dir(bench: str) -> str:
    return f"{bench}/reports/"
