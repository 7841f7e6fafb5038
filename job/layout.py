"""Object keys under the run root, mirroring FastChat's data/<bench>/ layout.

Model names enter keys only through here, in their reversible safe form
(job.names.path_name: `org/name` -> `org%2Fname`); records keep the exact name.
"""

from __future__ import annotations

import re

from job.names import name_of_path, path_name

SHARD_RE = re.compile(r"shard-(\d{5})-of-(\d{5})\.manifest\.json$")


def shards_prefix(bench: str, model_name: str) -> str:
    return f"{bench}/shards/{path_name(model_name)}/"


def shard_key(bench: str, model_name: str, index: int, num_shards: int) -> str:
    return f"{shards_prefix(bench, model_name)}shard-{index:05d}-of-{num_shards:05d}.jsonl"


def manifest_key(shard: str) -> str:
    return shard.removesuffix(".jsonl") + ".manifest.json"


def shard_of_manifest(manifest: str) -> str:
    return manifest.removesuffix(".manifest.json") + ".jsonl"


def answers_prefix(bench: str) -> str:
    return f"{bench}/model_answer/"


def answer_file(model_name: str) -> str:
    """The file name of a model's answers inside a model_answer/ folder."""
    return f"{path_name(model_name)}.jsonl"


def model_of_answer_file(file_name: str) -> str:
    return name_of_path(file_name.removesuffix(".jsonl"))


def answer_key(bench: str, model_name: str) -> str:
    return answers_prefix(bench) + answer_file(model_name)


def answer_manifest_key(bench: str, model_name: str) -> str:
    return f"{answers_prefix(bench)}{path_name(model_name)}.manifest.json"


def judgment_dir(bench: str) -> str:
    return f"{bench}/model_judgment/"


def reports_dir(bench: str) -> str:
    return f"{bench}/reports/"


def latest_pointer_key(bench: str, model_name: str) -> str:
    return f"latest/{bench}/{path_name(model_name)}.json"
