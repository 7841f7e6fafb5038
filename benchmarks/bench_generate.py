"""Answer generation: our hf path (job.generate + HFBackend's continuous batching) vs FastChat's
loop vs plain transformers batched `generate`, and our previous turn-wave scheduler.

FastChat's `gen_model_answer.get_model_answers` runs one question at a time: for each
choice i it calls torch.manual_seed(i), then one `model.generate` per turn at batch
size 1. `fastchat_loop` below re-implements that loop faithfully on the SAME loaded
model, tokenizer, chat template, questions and max_new_tokens. `plain_generate` is what
one would write with transformers alone: left-padded waves of --plain-wave conversations
in question order, one `generate` per wave and turn (a wave waits for its longest answer).

--eos forced (the default for the tiny random model) makes every side produce exactly N
tokens per turn (min_new_tokens = max_new_tokens masks EOS), so the time ratios compare
like for like; --eos natural (the default with --model: a real model ends its answers
at varied lengths) lets EOS stop each answer, and tokens/s (EOS not counted) compare.

    python benchmarks/bench_generate.py                       # tiny random model, CPU
    python benchmarks/bench_generate.py --model /models/llama-3-8b-instruct --max-new-tokens 256
    job smoke-model --from-gguf SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2   # a real 135M model
    python benchmarks/bench_generate.py --model /tmp/smollm2 --first-n 16 --num-choices 1 --max-new-tokens 128

Prints markdown tables: tokens/s, wall time and the ratios for --num-choices 1 and 5, the
fraction of the CPU compute bound (matmul FLOP/s measured here / 2 x parameters FLOP per
token; on a GPU the column is left out), then the speedup of splitting the work into shards
run by separate processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))  # generate_baselines, also when imported (gpu_check)

from generate_baselines import compute_bound, fastchat_loop, plain_generate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF model dir (default: build the tiny random model)")
    ap.add_argument("--bench", default="mt_bench")
    ap.add_argument("--bench-data", default=str(REPO.parent / "shared" / "bench_data"))
    ap.add_argument(
        "--tokenizer-corpus",
        choices=["bench", "builtin"],
        default="bench",
        help="tiny model only: train its BPE on the questions it runs (bench: realistic prompt "
        "lengths, ~0.3 tokens/char on mt_bench English) or only on its small built-in text (~0.67)",
    )
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--eos",
        choices=["forced", "natural"],
        help="forced: exactly --max-new-tokens per turn (EOS masked); natural: EOS ends answers "
        "(default: natural with --model, forced for the tiny random model)",
    )
    ap.add_argument(
        "--plain-wave",
        type=int,
        default=16,
        help="conversations per wave of the plain transformers batched generate variant (0: skip it)",
    )
    ap.add_argument("--num-choices", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--first-n", type=int, help="only the first N questions (default: all)")
    ap.add_argument("--shards", type=int, default=2, help="processes for the sharding comparison (0: skip)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in total")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--token-budget", type=int)
    ap.add_argument("--skip-fastchat", action="store_true", help="only time our path")
    ap.add_argument(
        "--fastchat-sample",
        type=int,
        metavar="N",
        help="time FastChat's loop on the first N questions x 1 choice only and compare tokens/s "
        "(its rate does not depend on the run's size: batch 1 throughout); the time columns stay empty",
    )
    ap.add_argument(
        "--turn-waves", action="store_true", help="also time our previous scheduler (one generate per turn)"
    )
    ap.add_argument("--repeats", type=int, default=1, help="report the best of this many runs")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    # internal: one shard worker of the sharding comparison
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shard-index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--num-shards", type=int, default=1, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def load_questions(args: argparse.Namespace) -> list[Any]:
    from job.benches import resolve_bench, select_questions

    questions, _ = resolve_bench(args.bench, args.bench_data).load_questions()
    return select_questions(questions, [], args.first_n)


def _fastchat_bench() -> Any:
    """A bench with FastChat's behaviour (temperature table), whatever --bench is."""
    from job.benches import Bench

    return Bench("fastchat", REPO)


def load_backend(args: argparse.Namespace, model: str) -> Any:
    from job.backends.hf import HFBackend

    return HFBackend(
        "hf/" + model,
        model,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        token_budget=args.token_budget,
        min_new_tokens=args.max_new_tokens if forced(args) else None,
    )


def forced(args: argparse.Namespace) -> bool:
    return (args.eos or ("natural" if args.model else "forced")) == "forced"


def ours(
    backend: Any, questions: list[Any], num_choices: int, n: int, dedupe: bool, refill: bool = True
) -> tuple[int, float, float]:
    """What `job generate` does for one shard: Conversations through run_waves, on the continuous
    batch (refill) or, refill False, with one backend `generate` call per turn (turn waves)."""
    from job.backends.base import SamplingParams
    from job.generate import Conversation, GenerateConfig, run_waves, temperature_of, work_items

    cfg = GenerateConfig(bench="", model="", num_choices=num_choices, max_new_tokens=n)
    fastchat = _fastchat_bench()
    convs = [
        Conversation(q, c, SamplingParams(temperature_of(q, cfg, fastchat), n, cfg.seed + c))
        for q, c in work_items(questions, num_choices)
    ]
    streams = backend.streams_conversations
    backend.streams_conversations = streams and refill
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        run_waves(backend, convs, dedupe, lambda done, tokens: None)
    finally:
        backend.streams_conversations = streams
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert all(c.status == "ok" for c in convs), [c.error for c in convs if c.status != "ok"][:3]
    return sum(c.num_tokens for c in convs), dt, cpu


FASTCHAT_VARIANT = "FastChat gen_model_answer loop"
OURS = "ours (job generate, hf continuous batching)"
TURN_WAVES = "ours, turn waves (previous scheduler)"
_SAMPLED: dict[int, tuple[int, float, float]] = {}
"""--fastchat-sample: the loop's one measurement (first N questions, 1 choice) per max new tokens."""
Measure = Callable[[], tuple[int, float, float]]


def variants(
    args: argparse.Namespace, backend: Any, questions: list[Any], choices: int
) -> dict[str, Measure]:
    """The variants to time for one --num-choices value: name -> run() giving (tokens, wall s, cpu s)."""
    n, eos = args.max_new_tokens, forced(args)
    out: dict[str, Measure] = {OURS: lambda: ours(backend, questions, choices, n, False)}
    from job.benches import FASTCHAT

    if choices > 1 and any(FASTCHAT.temperature(q.category) == 0.0 for q in questions):
        # only a greedy question has choices to share (else the same run again)
        out[f"{OURS} + greedy dedupe (default)"] = lambda: ours(backend, questions, choices, n, True)
    if args.turn_waves:
        out[TURN_WAVES] = lambda: ours(backend, questions, choices, n, False, refill=False)
    if args.plain_wave:
        out[f"plain transformers batched generate ({args.plain_wave} per wave)"] = lambda: plain_generate(
            backend, questions, choices, n, args.plain_wave, eos
        )
    if args.fastchat_sample:
        # batch 1 at every step: its rate does not depend on the number of choices; run once
        sample = questions[: args.fastchat_sample]
        out[FASTCHAT_VARIANT] = lambda: _SAMPLED.setdefault(n, fastchat_loop(backend, sample, 1, n, eos))
    elif not args.skip_fastchat:
        out[FASTCHAT_VARIANT] = lambda: fastchat_loop(backend, questions, choices, n, eos)
    return out


def warm_up(backend: Any) -> None:
    from job.backends.base import GenRequest, SamplingParams

    backend.generate([GenRequest([{"role": "user", "content": "warm up"}], SamplingParams(0.0, 8))])


def worker(args: argparse.Namespace) -> None:
    """One process of the sharding comparison: load, generate its shard, print JSON."""
    import torch

    from job.generate import work_items
    from job.generate.sharding import shard

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    questions = load_questions(args)
    backend = load_backend(args, args.model)
    warm_up(backend)
    t_loaded = time.perf_counter()
    # the shard's slice of (question, choice) items, exactly as job generate cuts it
    items = shard(work_items(questions, args.num_choices[0]), args.num_shards, args.shard_index)
    from job.backends.base import SamplingParams
    from job.generate import Conversation, GenerateConfig, run_waves, temperature_of

    cfg = GenerateConfig(
        bench="", model="", num_choices=args.num_choices[0], max_new_tokens=args.max_new_tokens
    )
    fastchat = _fastchat_bench()
    convs = [
        Conversation(q, c, SamplingParams(temperature_of(q, cfg, fastchat), cfg.max_new_tokens, c))
        for q, c in items
    ]
    t0 = time.perf_counter()
    run_waves(backend, convs, False, lambda d, t: None)
    t1 = time.perf_counter()
    out = {"tokens": sum(c.num_tokens for c in convs), "gen_s": t1 - t0, "setup_s": t_loaded - t_start}
    print("RESULT " + json.dumps(out), flush=True)


def sharded(args: argparse.Namespace, model: str, num_shards: int, num_choices: int) -> dict[str, Any]:
    """Run num_shards worker processes at once, threads split between them."""
    threads = max(1, args.threads // num_shards)
    base = [sys.executable, __file__, "--worker", "--model", model, "--bench", args.bench]
    base += ["--bench-data", args.bench_data, "--max-new-tokens", str(args.max_new_tokens)]
    base += ["--eos", "forced" if forced(args) else "natural"]
    base += ["--num-choices", str(num_choices), "--threads", str(threads), "--num-shards", str(num_shards)]
    base += ["--device", args.device, "--dtype", args.dtype]
    if args.first_n:
        base += ["--first-n", str(args.first_n)]
    if args.batch_size:
        base += ["--batch-size", str(args.batch_size)]
    if args.token_budget:
        base += ["--token-budget", str(args.token_budget)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(base + ["--shard-index", str(i)], stdout=subprocess.PIPE, text=True, env=env)
        for i in range(num_shards)
    ]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"shard worker failed with exit code {p.returncode}")
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line.removeprefix("RESULT ")))
    wall = time.perf_counter() - t0
    return {
        "shards": num_shards,
        "threads_each": threads,
        "tokens": sum(r["tokens"] for r in results),
        "gen_s": max(r["gen_s"] for r in results),
        "wall_s": wall,
    }


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    import torch

    torch.set_num_threads(args.threads)
    model = args.model
    tmp = None
    questions = load_questions(args)
    if not model:
        from job.backends.smoke_model import build

        # the BPE learns from the bench text at run time (never stored in the repo)
        corpus = [t for q in questions for t in q.turns] if args.tokenizer_corpus == "bench" else None
        tmp = tempfile.TemporaryDirectory(prefix="bench-tiny-")
        model = str(build(Path(tmp.name) / "tiny", corpus=corpus))
    n = args.max_new_tokens
    backend = load_backend(args, model)
    warm_up(backend)
    turns = [t for q in questions for t in q.turns]
    per_char = sum(len(backend.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in turns) / max(
        1, sum(len(t) for t in turns)
    )
    print(
        f"model {model} on {backend.device} ({str(backend.dtype).removeprefix('torch.')}), "
        f"tokenizer {per_char:.2f} tokens/char on the questions"
        + (f" (BPE trained on: {args.tokenizer_corpus})" if not args.model else "")
        + f", {len(questions)} questions x {len(questions[0].turns)} turns, "
        + (
            f"{n} new tokens per turn (forced), "
            if forced(args)
            else f"natural EOS, at most {n} new tokens per turn, "
        )
        + f"torch threads {args.threads}, token budget {backend.token_budget}, best of {args.repeats}\n"
    )
    bound = compute_bound(backend)
    if bound:
        print(
            f"compute bound: {bound[1]:.0f} new tokens/s (a {1024}^3 matmul runs at {bound[0]:.1f} GFLOP/s here, "
            f"2 x {sum(p.numel() for p in backend.model.parameters()) / 1e6:.0f}M FLOP per token)\n"
        )
    rows: list[list[Any]] = []
    records: list[dict[str, Any]] = []
    for choices in args.num_choices:
        # best of --repeats (interleaved): a busy machine only ever makes a run slower
        measured: dict[str, tuple[int, float, float]] = {}
        for _ in range(args.repeats):
            for name, run in variants(args, backend, questions, choices).items():
                tokens, dt, cpu = run()
                best = measured.get(name)
                measured[name] = (tokens, min(dt, best[1]), min(cpu, best[2])) if best else (tokens, dt, cpu)
        ref = measured.get(FASTCHAT_VARIANT)
        for name, (tokens, dt, cpu) in measured.items():
            # time ratios: equal to tok/s ratios where the token counts are equal (forced EOS, no dedupe)
            same_work = ref and not args.fastchat_sample
            vs = [f"{ref[1] / dt:.1f}x", f"{ref[2] / cpu:.1f}x"] if ref and same_work else ["-", "-"]
            vs.append(f"{(tokens / dt) / (ref[0] / ref[1]):.1f}x" if ref else "-")
            if bound:
                vs.append(f"{tokens / dt / bound[1]:.0%}")
            if name == FASTCHAT_VARIANT and args.fastchat_sample:
                name = f"{name} (first {args.fastchat_sample} questions x 1 choice; rate only)"
            rows.append([choices, name, tokens, f"{dt:.2f}", f"{cpu:.2f}", f"{tokens / dt:.0f}", *vs])
            records.append(
                {"num_choices": choices, "variant": name, "tokens": tokens, "wall_s": dt, "cpu_s": cpu}
            )
        print(f"num_choices {choices} done", file=sys.stderr)
    headers = [
        "choices",
        "variant",
        "new tokens",
        "wall s",
        "cpu s",
        "tok/s",
        "speedup (wall)",
        "speedup (cpu)",
        "tok/s vs FastChat",
    ] + (["of compute bound"] if bound else [])
    print(table(headers, rows))
    backend.close()
    if args.shards and args.shards > 1:
        srows = []
        choices = args.num_choices[-1]
        one = sharded(args, model, 1, choices)
        many = sharded(args, model, args.shards, choices)
        for r in (one, many):
            srows.append(
                [
                    r["shards"],
                    r["threads_each"],
                    r["tokens"],
                    f"{r['gen_s']:.2f}",
                    f"{r['tokens'] / r['gen_s']:.0f}",
                    f"{one['gen_s'] / r['gen_s']:.2f}x",
                    f"{r['wall_s']:.2f}",
                    f"{one['wall_s'] / r['wall_s']:.2f}x",
                ]
            )
            records.append({"sharding": r, "num_choices": choices})
        print(f"\nsharding across processes (num_choices {choices}; wall includes imports + model load):")
        print(
            table(
                [
                    "processes",
                    "threads each",
                    "new tokens",
                    "gen s",
                    "tok/s",
                    "gen speedup",
                    "wall s",
                    "wall speedup",
                ],
                srows,
            )
        )
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
