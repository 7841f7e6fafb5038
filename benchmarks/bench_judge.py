"""Judging throughput: our judge path vs FastChat's thread pool, against a slow local server.

A real OpenAI-compatible HTTP server (tests/servers/openai_server.py, in its own process)
answers every chat request after `--latency` seconds +- `--jitter` (uniform), so the
numbers measure how well each client keeps requests in flight, not a model.

- ours: `job.judge.runner.run` (what `job judge` does): real mt_bench questions, synthetic
  answer files, FastChat judge prompts, the openai backend (AsyncOpenAI, bounded
  concurrency), calls streamed, judgments stored in groups of --batch-size.
- FastChat: gen_judgment's pattern, a ThreadPoolExecutor of `--parallel` workers, each
  calling the synchronous client for one judgment at a time and appending its line to
  the output file (FastChat uses openai<1; the sync openai>=1 client stands in).

Ideal wall time = calls x mean latency / concurrency. Prints judgments/s and the overhead.

    python benchmarks/bench_judge.py                     # concurrency 1, 8, 32, 64
    python benchmarks/bench_judge.py --concurrency 64 --latency 0.5 --jitter 0.1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
JUDGE_MODEL = "bench-judge"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-data", default=str(REPO.parent / "shared" / "bench_data"))
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--jitter", type=float, default=0.05, help="+- seconds, uniform")
    ap.add_argument(
        "--calls-per-slot", type=int, default=40, help="about this many calls per concurrent slot"
    )
    ap.add_argument("--batch-size", type=int, nargs="+", default=[64], help="job judge --batch-size values")
    ap.add_argument("--skip-fastchat", action="store_true")
    return ap.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(latency: float, jitter: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, str(REPO / "tests/servers/openai_server.py"), "--port", str(port)]
    cmd += ["--latency", str(latency), "--jitter", str(jitter), "--model", JUDGE_MODEL]
    cmd += ["--reply", "The answer is fine. Rating: [[7]]"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc, url + "/v1"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the OpenAI-compatible test server did not start")


def write_answers(root: Path, models: list[str], question_ids: list[Any]) -> None:
    """Synthetic FastChat answer files (no benchmark text copied)."""
    root.mkdir(parents=True, exist_ok=True)
    for m in models:
        lines = [
            json.dumps(
                {
                    "question_id": qid,
                    "answer_id": f"{m}-{qid}",
                    "model_id": m,
                    "choices": [
                        {"index": 0, "turns": [f"{m} answer one to {qid}", f"{m} answer two to {qid}"]}
                    ],
                    "tstamp": 0.0,
                }
            )
            for qid in question_ids
        ]
        (root / f"{m}.jsonl").write_text("\n".join(lines) + "\n")


def workload(concurrency: int, calls_per_slot: int, questions: int) -> tuple[int, int]:
    """(first_n questions, models) giving about calls_per_slot x concurrency calls (2 per question)."""
    want = max(40, calls_per_slot * concurrency)
    models = max(1, math.ceil(want / (2 * questions)))
    first_n = min(questions, math.ceil(want / (2 * models)))
    return first_n, models


def run_ours(args: argparse.Namespace, url: str, c: int, batch: int, tmp: Path) -> tuple[int, float]:
    from job.benches import resolve_bench
    from job.judge.runner import JudgeConfig, run

    questions, _ = resolve_bench("mt_bench", args.bench_data).load_questions()
    first_n, n_models = workload(c, args.calls_per_slot, len(questions))
    models = [f"model{i}" for i in range(n_models)]
    answers = tmp / f"answers-{c}-{batch}"
    write_answers(answers, models, [q.question_id for q in questions])
    cfg = JudgeConfig(
        bench="mt_bench",
        judge_model=f"openai/{JUDGE_MODEL}",
        judge_name="gpt-4",  # reference answers are gpt-4.jsonl
        model_list=models,
        first_n=first_n,
        output=str(tmp / f"out-{c}-{batch}"),
        answers_dir=str(answers),
        bench_data=args.bench_data,
        batch_size=batch,
        backend_options={"base_url": url, "concurrency": c, "max_retries": 0, "request_timeout": 60.0},
    )
    t0 = time.perf_counter()
    counts = run(cfg)
    dt = time.perf_counter() - t0
    calls = first_n * 2 * n_models
    assert counts.get("ok", 0) == calls, f"expected {calls} ok judgments, got {dict(counts)}"
    return calls, dt


def run_fastchat(args: argparse.Namespace, url: str, c: int, tmp: Path) -> tuple[int, float]:
    """gen_judgment.py: shuffle matches, ThreadPoolExecutor(parallel), one sync call per judgment."""
    import random

    from openai import OpenAI

    from job.benches import resolve_bench
    from job.judge import parse_rating

    questions, _ = resolve_bench("mt_bench", args.bench_data).load_questions()
    first_n, n_models = workload(c, args.calls_per_slot, len(questions))
    matches = [(m, q, t) for m in range(n_models) for t in (1, 2) for q in questions[:first_n]]
    random.Random(0).shuffle(matches)
    client = OpenAI(base_url=url, api_key="EMPTY", max_retries=0)
    out = tmp / f"fastchat-{c}.jsonl"
    lock = threading.Lock()

    def play(match: tuple[int, Any, int]) -> None:
        m, q, turn = match
        user = f"[Question]\n{q.turns[turn - 1][:200]}\n\n[The Start of Assistant's Answer]\nanswer {m}\n"
        resp = client.chat.completions.create(
            model=JUDGE_MODEL,
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": user},
            ],
            temperature=0,
            max_tokens=2048,
            n=1,
        )
        judgment = resp.choices[0].message.content or ""
        score = parse_rating(judgment)
        line = json.dumps(
            {"question_id": q.question_id, "model": m, "judgment": judgment, "score": score, "turn": turn}
        )
        with lock, open(out, "a") as f:
            f.write(line + "\n")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=c) as pool:
        list(pool.map(play, matches))
    return len(matches), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
    import openai  # noqa: F401  (both sides import the client before the clock starts)

    import job.judge.runner  # noqa: F401

    proc, url = start_server(args.latency, args.jitter)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-judge-") as d:
            tmp = Path(d)
            for c in args.concurrency:
                results = []
                for b in args.batch_size:
                    results.append((f"ours: job judge (batch {b})", *run_ours(args, url, c, b, tmp)))
                if not args.skip_fastchat:
                    results.append(("FastChat thread pool", *run_fastchat(args, url, c, tmp)))
                for name, calls, dt in results:
                    ideal = calls * args.latency / c
                    rows.append(
                        [
                            c,
                            name,
                            calls,
                            f"{dt:.2f}",
                            f"{ideal:.2f}",
                            f"{calls / dt:.1f}",
                            f"{(dt / ideal - 1) * 100:+.0f}%" if ideal > 0 else "-",
                        ]
                    )
                print(f"concurrency {c} done", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"server latency {args.latency * 1000:.0f} ms +- {args.jitter * 1000:.0f} ms (uniform)\n")
    headers = ["concurrency", "client", "judgments", "wall s", "ideal s", "judgments/s", "over ideal"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
