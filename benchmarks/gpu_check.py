"""The GPU check behind benchmarks/gpu_check.sh (run that; it adds the time limit and the log).

For a machine with one GPU, torch and transformers, no internet and no vllm: everything is
built on the spot. Per model shape (random-initialised Llama architecture, bf16, BPE
tokenizer trained in-process on the questions as job.backends.smoke_model does; EOS suppressed so
every answer has exactly --max-new-tokens tokens):

- ours: the hf backend through job generate's turn waves on every question x 2 turns x
  --num-choices (greedy dedupe off, so every conversation is generated);
- FastChat: its one-question-at-a-time loop on the first --fastchat-sample questions (one
  choice), extrapolated to ours' token count at the same tokens/s (labelled as such).

Prints a table: tokens, wall s, tok/s, ratio to FastChat, peak memory, model forward calls
and the fraction of the memory-bandwidth bound (weight bytes x forward calls / --hbm-tbps,
over the measured time; every decode step reads all weights once). Before that, the hf
GPU tests (`pytest -m gpu tests/test_hf_gpu.py`). Exit 1 when any step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

# Llama-architecture shapes: TinyLlama-1.1B (GQA) and Llama-2-7B (MHA); tiny = job.backends.smoke_model's
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4},
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
           "num_attention_heads": 32, "num_key_value_heads": 4},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32},
}  # fmt: skip
FASTCHAT = "FastChat loop (extrapolated from {n} questions x 1 choice)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tiny", action="store_true", help="CPU, the tiny model, 16 tokens: proves the check runs"
    )
    ap.add_argument("--bench-data", help="FastChat data/ dir holding mt_bench/question.jsonl")
    ap.add_argument(
        "--shapes", help="comma-separated: " + ", ".join(SHAPES) + " (default 1b,7b; --tiny: tiny)"
    )
    ap.add_argument("--max-new-tokens", type=int, help="tokens per turn, forced (default 128; --tiny: 16)")
    ap.add_argument("--num-choices", type=int, default=5)
    ap.add_argument("--fastchat-sample", type=int, default=2, help="questions FastChat's loop runs")
    ap.add_argument("--token-budget", type=int, help="our hf backend's token budget (default: its own)")
    ap.add_argument("--hbm-tbps", type=float, default=4.8, help="memory bandwidth in TB/s (H200: 4.8)")
    ap.add_argument("--vocab-size", type=int, default=32000, help="BPE vocabulary asked for (GPU shapes)")
    ap.add_argument("--skip-pytest", action="store_true")
    ap.add_argument("--out", help="also write gpu_check.md and gpu_check.json here")
    args = ap.parse_args(argv)
    args.shapes = (args.shapes or ("tiny" if args.tiny else "1b,7b")).split(",")
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    args.max_new_tokens = args.max_new_tokens or (16 if args.tiny else 128)
    return args


def bench_data_dir(given: str | None) -> tuple[str | None, str]:
    """(--bench-data for resolve_bench, bench name): mt_bench where its questions are found,
    else the project's packaged smoke bench (9 questions), said loudly."""
    if given and not (Path(given) / "mt_bench" / "question.jsonl").is_file():
        raise SystemExit(f"gpu_check: no mt_bench/question.jsonl under --bench-data {given}")
    for cand in (given, os.environ.get("JOB_BENCH_DATA"), str(REPO.parent / "shared" / "bench_data")):
        if cand and (Path(cand) / "mt_bench" / "question.jsonl").is_file():
            return cand, "mt_bench"
    print(
        "gpu_check: mt_bench questions not found (pass --bench-data DIR holding mt_bench/question.jsonl, "
        "or set JOB_BENCH_DATA); using the packaged smoke bench (9 questions): NOT mt_bench numbers",
        flush=True,
    )
    return None, "smoke"


def run_pytest(device: str) -> str | None:
    """The hf GPU tests; None when they passed (skips included: on CPU they skip), else why not."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        return "pytest is not installed (pip install pytest, or carry a wheel)"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "--noconftest", "-p", "no:cacheprovider"]
    cmd += ["-o", "addopts=-ra", str(REPO / "tests" / "test_hf_gpu.py")]
    print(f"== pytest -m gpu ({device})", flush=True)
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return None if r.returncode == 0 else f"pytest -m gpu exited {r.returncode}"


def build_model(shape: str, out: Path, questions: list[Any], device: str, vocab_size: int) -> Path:
    """A random Llama of `shape` with a BPE trained on the questions, saved to out (built on
    the device: seconds even for 7B)."""
    import torch
    from transformers import LlamaForCausalLM

    from job.backends.smoke_model import build, build_tokenizer, chat_config, generation_config

    corpus = [t for q in questions for t in q.turns]
    if shape == "tiny":
        return build(out, corpus=corpus)
    tok = build_tokenizer(out, vocab_size=vocab_size, corpus=corpus)
    config = chat_config(tok, **SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.generation_config = generation_config(config)
    model.save_pretrained(out)
    del model
    return out


def peak_memory_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return float(torch.cuda.max_memory_allocated()) / 2**30
    # CPU: the process's peak RSS (KiB on Linux), not resettable per variant
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def timed(backend: Any, device: str, run: Any) -> dict[str, Any]:
    """run() -> (tokens, wall, cpu) with the model's forward calls counted and peak memory."""
    import torch

    calls = [0]
    hook = backend.model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    reset_peak(device)
    try:
        tokens, wall, _cpu = run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    finally:
        hook.remove()
    return {"tokens": tokens, "wall_s": wall, "forward_calls": calls[0], "peak_gib": peak_memory_gib(device)}


def check_shape(
    args: argparse.Namespace, shape: str, bench: tuple[str | None, str], device: str
) -> list[dict[str, Any]]:
    from bench_generate import fastchat_loop, ours

    from job.backends.hf import HFBackend
    from job.benches import resolve_bench

    questions, _ = resolve_bench(bench[1], bench[0]).load_questions()
    n = args.max_new_tokens
    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{shape}-") as tmp:
        t0 = time.perf_counter()
        path = build_model(shape, Path(tmp) / shape, questions, device, args.vocab_size)
        backend = HFBackend(
            f"hf/{shape}", str(path), device=device, token_budget=args.token_budget, min_new_tokens=n
        )
        setup = time.perf_counter() - t0
    params = sum(p.numel() for p in backend.model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in backend.model.parameters())
    print(
        f"== {shape}: {params / 1e6:,.1f}M parameters, {weight_bytes / 2**30:.2f} GiB weights "
        f"({str(backend.dtype).removeprefix('torch.')}), vocab {backend.model.config.vocab_size}, "
        f"built and loaded in {setup:.0f} s, token budget {backend.token_budget}",
        flush=True,
    )
    try:
        ours(backend, questions[:2], 1, 8, False)  # warm-up: kernels, allocator
        mine = timed(backend, device, lambda: ours(backend, questions, args.num_choices, n, False))
        sample = questions[: args.fastchat_sample]
        fc = timed(backend, device, lambda: fastchat_loop(backend, sample, 1, n, True))
    finally:
        backend.close()
    expect = sum(len(q.turns) for q in questions) * args.num_choices * n
    if mine["tokens"] != expect:
        raise RuntimeError(f"ours generated {mine['tokens']} tokens, expected {expect} (EOS not suppressed?)")
    rows = []
    for name, m in (
        (f"ours ({len(questions)} q x 2 turns x {args.num_choices})", mine),
        (FASTCHAT.format(n=len(sample)), fc),
    ):
        rate = m["tokens"] / m["wall_s"]
        bound = weight_bytes * m["forward_calls"] / (args.hbm_tbps * 1e12)
        rows.append({
            "shape": shape, "variant": name, "tokens": m["tokens"], "wall_s": m["wall_s"], "tok_s": rate,
            "peak_gib": m["peak_gib"], "forward_calls": m["forward_calls"], "params": params,
            "hbm_fraction": bound / m["wall_s"] if device.startswith("cuda") else None,
        })  # fmt: skip
    ours_row, fc_row = rows
    fc_row["extrapolated_wall_s"] = mine["tokens"] / fc_row["tok_s"]
    fc_row["extrapolated_to"] = f"{len(questions)} q x 2 turns x {args.num_choices}"
    ours_row["ratio"] = ours_row["tok_s"] / fc_row["tok_s"]
    fc_row["ratio"] = 1.0
    return rows


def table(rows: list[dict[str, Any]], device: str) -> str:
    head = ["shape", "variant", "new tokens", "wall s", "tok/s", "vs FastChat", "peak GiB", "forward calls",
            "HBM bound"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        wall = f"{r['wall_s']:.1f}"
        if "extrapolated_wall_s" in r:
            wall += f" ({r['extrapolated_to']}, extrapolated: {r['extrapolated_wall_s']:.0f})"
        frac = "-" if r["hbm_fraction"] is None else f"{100 * r['hbm_fraction']:.0f}%"
        cells = [r["shape"], r["variant"], f"{r['tokens']:,}", wall, f"{r['tok_s']:,.0f}", f"{r['ratio']:.1f}x",
                 f"{r['peak_gib']:.1f}", f"{r['forward_calls']:,}", frac]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    mem = "GPU max_memory_allocated" if device.startswith("cuda") else "process peak RSS (CPU)"
    lines.append(f"\npeak = {mem}; HBM bound = weight bytes x forward calls / bandwidth, over wall time")
    return "\n".join(lines)


def environment(device: str) -> str:
    import torch
    import transformers

    where = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    return (
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
        f"device {device} ({where})"
    )


def report(
    args: argparse.Namespace,
    device: str,
    bench: tuple[str | None, str],
    rows: list[dict[str, Any]],
    failures: list[str],
    done: bool,
) -> None:
    """Print the table and write it, with the JSON, to --out."""
    text = (
        f"{environment(device)}; bench {bench[1]}, {args.max_new_tokens} tokens per turn (EOS suppressed)\n\n"
    )
    text += table(rows, device) if rows else "(no rows)"
    if failures:
        text += "\n\nFAILED:\n" + "\n".join(f"- {f}" for f in failures)
    if not done:
        text += f"\n\n(partial: {len(rows) // 2} of {len(args.shapes)} shapes so far)"
    print("\n" + text, flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "gpu_check.md").write_text(text + "\n")
        doc = {"rows": rows, "failures": failures, "complete": done}
        Path(args.out, "gpu_check.json").write_text(json.dumps(doc, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch (run with --tiny on a CPU)", flush=True)
        return 1
    failures: list[str] = []
    print("== " + environment(device), flush=True)
    if not args.skip_pytest and (why := run_pytest(device)):
        failures.append(why)
    bench = bench_data_dir(args.bench_data)
    rows: list[dict[str, Any]] = []
    for shape in args.shapes:
        try:
            rows += check_shape(args, shape, bench, device)
        except Exception as e:  # one shape failing must not hide the others' numbers
            traceback.print_exc()
            failures.append(f"{shape}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if device == "cuda":
            torch.cuda.empty_cache()
        # after every shape: a run stopped by the time limit keeps what it measured
        report(args, device, bench, rows, failures, done=shape == args.shapes[-1])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
