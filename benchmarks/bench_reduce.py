"""`job reduce` at scale: 1,000 shards of a 10,000-question synthetic bench, from local
disk and from S3 (a moto server on 127.0.0.1, started here), as `job generate` lays them out.

    python benchmarks/bench_reduce.py                          # 1000 shards x 10000 questions
    python benchmarks/bench_reduce.py --shards 100 --questions 1000 --backends local
    python benchmarks/bench_reduce.py --profile local          # cProfile top 25 of one reduce

Prints a markdown table: setup (writing the shards), reduce wall time, items/s. Target:
< 30 s for the local reduce of 1,000 shards.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

BENCH = "synthetic"
MODEL = "synthetic-model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--questions", type=int, default=10000)
    ap.add_argument("--num-choices", type=int, default=1)
    ap.add_argument("--answer-chars", type=int, default=400, help="characters per turn answer")
    ap.add_argument("--backends", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    ap.add_argument("--profile", choices=["local", "s3"], help="print a cProfile of that backend's reduce")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    return ap.parse_args(argv)


def write_shards(storage: Any, args: argparse.Namespace) -> None:
    """Shards + manifests exactly as job.generate writes them (answers first, manifest last)."""
    from job.generate.sharding import shard
    from job.layout import manifest_key, shard_key
    from job.records import ShardItem, ShardManifest
    from job.records.jsonl import dumps_lines

    qids = list(range(1, args.questions + 1))
    items = [(q, c) for q in qids for c in range(args.num_choices)]
    now = time.time()
    text = ("lorem ipsum " * (args.answer_chars // 12 + 1))[: args.answer_chars]

    def one(i: int) -> None:
        part = shard(items, args.shards, i)
        rows = [
            ShardItem(question_id=q, choice=c, turns=[f"{q}/{c} {text}", text], num_tokens=100, tstamp=now)
            for q, c in part
        ]
        key = shard_key(BENCH, MODEL, i, args.shards)
        storage.write_bytes(key, dumps_lines(r.model_dump(mode="json") for r in rows))
        m = ShardManifest(
            bench=BENCH, bench_data_sha256="0" * 64, model="mock/synthetic", model_name=MODEL,
            config_hash="c0ffee", sampling={"max_new_tokens": 1024}, shard_index=i,
            num_shards=args.shards, question_ids=qids, num_choices=args.num_choices,
            num_items=len(rows), tokens_generated=100 * len(rows), package_version="bench",
            started_at=now, finished_at=now, wall_seconds=0.0,
        )  # fmt: skip
        storage.write_bytes(manifest_key(key), m.model_dump_json(indent=2).encode())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(args.shards)))


@contextmanager
def moto_server() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


def bench_one(backend: str, root: str, args: argparse.Namespace) -> dict[str, Any]:
    from job.reduce import ReduceConfig, run
    from job.storage import open_storage

    storage = open_storage(root)
    t0 = time.perf_counter()
    write_shards(storage, args)
    setup = time.perf_counter() - t0
    cfg = ReduceConfig(bench=BENCH, model_names=[MODEL], output=root)
    prof = cProfile.Profile() if args.profile == backend else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    merged = run(cfg)[MODEL]
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    if prof:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    n_items = sum(len(a.choices) for a in merged.answers)
    assert n_items == args.questions * args.num_choices, n_items
    return {
        "backend": backend,
        "shards": args.shards,
        "questions": args.questions,
        "items": n_items,
        "setup_s": round(setup, 2),
        "reduce_s": round(wall, 2),
        "items_per_s": round(n_items / wall),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = []
    if "local" in args.backends:
        with tempfile.TemporaryDirectory(prefix="bench-reduce-") as d:
            rows.append(bench_one("local", d, args))
    if "s3" in args.backends:
        with moto_server() as endpoint:
            os.environ.update(
                AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                AWS_EC2_METADATA_DISABLED="true", JOB_S3_ENDPOINT_URL=endpoint,
            )  # fmt: skip
            import boto3

            boto3.session.Session().client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            rows.append(bench_one("s3 (moto)", "s3://bench/run", args))
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
