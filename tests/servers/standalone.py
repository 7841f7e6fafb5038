"""`python tests/servers/openai_server.py --port 8000 --latency 0.2`: the test OpenAI server
as a process of its own (benchmarks/, manual tests); faults by rate only."""

from __future__ import annotations

import argparse
import time

from servers.openai_server import OpenAIServer
from servers.replies import ReplyFn, echo_reply


def main(argv: list[str] | None = None) -> None:
    """Standalone server (benchmarks, manual tests); faults by rate only."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds per chat request")
    ap.add_argument("--jitter", type=float, default=0.0, help="+- seconds, uniform")
    ap.add_argument("--fault-rate", action="append", default=[], metavar="KIND=P", help="e.g. 429=0.05")
    ap.add_argument("--model", action="append", default=[], help="served model ids (default test-model)")
    ap.add_argument("--reply", default=None, help="fixed reply text (default: echo)")
    args = ap.parse_args(argv)
    rates = {k: float(v) for k, _, v in (s.partition("=") for s in args.fault_rate)}
    reply: ReplyFn = echo_reply if args.reply is None else (lambda body: args.reply)
    srv = OpenAIServer(
        reply, latency=args.latency, jitter=args.jitter, fault_rates=rates,
        models=args.model or ["test-model"],
    )  # fmt: skip
    srv.start(args.port)
    print(f"serving {srv.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
