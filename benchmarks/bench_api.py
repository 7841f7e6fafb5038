"""API throughput: the openai/<model> backend against a local OpenAI-compatible server
with injected latency, vs the ideal calls x latency / concurrency.

The server (tests/servers/openai_server.py) runs in its own process, so client and
server do not share a GIL. Rows:
- `ours`: OpenAIBackend.generate (AsyncOpenAI, semaphore-bounded, our retry loop)
- `ours 2-turn`: generate_conversations, each turn 2 sent when its own turn 1 returns
- `threads`: FastChat's pattern, a ThreadPoolExecutor calling the sync client once per task

    python benchmarks/bench_api.py                              # 200 ms +- 50 ms, c = 1 8 64
    python benchmarks/bench_api.py --latency 0.5 --concurrency 1 32 128 --seconds 6
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from job.backends.base import GenRequest, GenResult, SamplingParams  # noqa: E402
from job.backends.openai_api import OpenAIBackend  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(latency: float, jitter: float) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    server = REPO / "tests" / "servers" / "openai_server.py"
    cmd = [
        sys.executable,
        str(server),
        "--port",
        str(port),
        "--latency",
        str(latency),
        "--jitter",
        str(jitter),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the test server did not start")


def _req(i: int) -> GenRequest:
    return GenRequest([{"role": "user", "content": f"question {i}"}], SamplingParams(0.0, 64))


def _backend(url: str, c: int) -> OpenAIBackend:
    backend = OpenAIBackend("openai/test-model", "test-model", base_url=url, concurrency=c)
    backend.generate([_req(i) for i in range(c)])  # warm: clients built, connections open
    return backend


def run_ours(url: str, calls: int, c: int) -> tuple[float, int]:
    backend = _backend(url, c)
    t0 = time.perf_counter()
    results = backend.generate([_req(i) for i in range(calls)])
    wall = time.perf_counter() - t0
    backend.close()
    return wall, sum(r.ok for r in results)


def run_ours_two_turn(url: str, calls: int, c: int) -> tuple[float, int]:
    backend = _backend(url, c)

    def follow_up(i: int, res: GenResult) -> GenRequest | None:
        if res.ok and "turn 2" not in res.text:
            msgs = [*_req(i).messages, {"role": "assistant", "content": res.text}]
            return GenRequest([*msgs, {"role": "user", "content": "turn 2"}], SamplingParams(0.0, 64))
        return None

    t0 = time.perf_counter()
    runs = backend.generate_conversations([_req(i) for i in range(calls // 2)], follow_up)
    wall = time.perf_counter() - t0
    backend.close()
    return wall, sum(r.ok for run in runs for r in run)


def run_threads(url: str, calls: int, c: int) -> tuple[float, int]:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"), max_retries=0)

    def one(i: int) -> bool:
        msgs = [{"role": "user", "content": f"question {i}"}]
        out = client.chat.completions.create(
            model="test-model", messages=msgs, temperature=0.0, max_tokens=64
        )  # type: ignore[arg-type]
        return bool(out.choices[0].message.content)

    with concurrent.futures.ThreadPoolExecutor(c) as pool:
        list(pool.map(one, range(c)))  # warm: threads started, connections open
        t0 = time.perf_counter()
        ok = sum(pool.map(one, range(calls)))
        wall = time.perf_counter() - t0
    client.close()
    return wall, ok


MODES: dict[str, Any] = {"ours": run_ours, "ours 2-turn": run_ours_two_turn, "threads": run_threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--jitter", type=float, default=0.05, help="+- seconds, uniform")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--seconds", type=float, default=4.0, help="ideal wall time per row (sets calls)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = ap.parse_args()
    proc, url = start_server(args.latency, args.jitter)
    print(
        f"server {url}: latency {args.latency * 1000:.0f} ms +- {args.jitter * 1000:.0f} ms; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )
    print()
    print("| mode | concurrency | calls | wall s | req/s | ideal req/s | overhead |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    try:
        for c in args.concurrency:
            calls = max(2, round(args.seconds * c / args.latency))
            calls += calls % 2  # the 2-turn mode needs pairs
            ideal_rate = c / args.latency
            for mode in args.modes:
                wall, ok = MODES[mode](url, calls, c)
                if ok != calls:
                    print(f"warning: {mode} c={c}: {calls - ok} calls failed", file=sys.stderr)
                rate = calls / wall
                overhead = wall / (calls * args.latency / c) - 1
                print(
                    f"| {mode} | {c} | {calls} | {wall:.2f} | {rate:.1f} | {ideal_rate:.1f} | {overhead:+.1%} |"
                )
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
