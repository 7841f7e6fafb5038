"""`job leaderboard` over N published runs (default 200), from local disk and from S3 (moto's
server on 127.0.0.1, tests/moto_s3.py): seconds to list, read every report.json, and write
index.html, leaderboard.csv and leaderboard.json. Each run is an MT-bench-sized report.json
(8 categories x 3 turns of scores, 80 per-question entries, about 20 kB).

    python benchmarks/bench_leaderboard.py               # 200 runs, local + S3
    python benchmarks/bench_leaderboard.py --runs 1000 --no-s3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from job.report.leaderboard import write  # noqa: E402

CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


def report(i: int) -> dict[str, Any]:
    model, mean = f"llm-step-{(i + 1) * 100}", 3 + 6 * i / 200

    def row(cat: str, turn: str, m: float) -> dict[str, Any]:
        return {"model": model, "category": cat, "turn": turn, "mean": m, "std": 1.2, "n_scored": 160,
                "n_failed": 0, "ci_low": m - 0.3, "ci_high": m + 0.3, "n_runs": 1}  # fmt: skip

    scores = [row(c, t, mean) for c in ("all", *CATEGORIES) for t in ("1", "2", "all")]
    per_q = {
        str(q): {"category": CATEGORIES[q % 8], "sum": [mean, mean], "n": [1, 1]} for q in range(81, 161)
    }
    prov = {"bench": "mt_bench", "mode": "single", "judges": ["gpt-4"], "judge_model": "openai/gpt-4",
            "bench_data_sha256": "q" * 64, "judge_prompts_sha256": "p" * 64, "reference": "gpt-4",
            "num_choices": {model: 1}, "git_revision": "0" * 40, "created_at": 1.79e9 + i, "step": None}  # fmt: skip
    return {"provenance": prov, "scores": scores, "per_question": {model: per_q}, "pairwise": []}


def timed(root: str) -> float:
    t0 = time.perf_counter()
    write(root)
    return time.perf_counter() - t0


def bench_local(n: int, tmp: str) -> float:
    for i in range(n):
        d = Path(tmp, "pub", "mt_bench", f"run{i:04d}")
        d.mkdir(parents=True)
        (d / "report.json").write_text(json.dumps(report(i)))
    return timed(str(Path(tmp, "pub")))


def bench_s3(n: int, tmp: str) -> float:
    from moto_s3 import BUCKET, s3_env_vars, start_moto

    with start_moto() as server:
        os.environ.update(s3_env_vars(server.endpoint, tmp))
        import boto3

        client = boto3.client("s3", endpoint_url=server.endpoint)
        client.create_bucket(Bucket=BUCKET)
        for i in range(n):
            client.put_object(
                Bucket=BUCKET, Key=f"pub/mt_bench/run{i:04d}/report.json", Body=json.dumps(report(i))
            )
        return timed(f"s3://{BUCKET}/pub")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("local disk", bench_local(args.runs, tmp)))
        if not args.no_s3:
            rows.append(("S3 (moto, 127.0.0.1)", bench_s3(args.runs, tmp)))
    print("\n| source | runs | seconds (list + read + write) |\n|---|---:|---:|")
    for name, secs in rows:
        print(f"| {name} | {args.runs} | {secs:.2f} |")


if __name__ == "__main__":
    main()
