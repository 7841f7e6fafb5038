from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click


@click.command(context_settings={"show_default": True})
@click.argument("inputs", nargs=-1, required=True, metavar="[NAME=]FILE...")
@click.option(
    "--judges",
    nargs=2,
    metavar="A B",
    help="The two judges to compare (the same name twice: a judge against itself, e.g. human human)."
    " Default: the two judges found (author votes aside), or the one found against itself.",
)
@click.option("--turn", type=int, multiple=True, help="Only this turn (repeatable). Default: every turn.")
@click.option("--no-ties", is_flag=True, help="Only the numbers without ties (default: with and without).")
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Also write the numbers as JSON to FILE (with the judges and each input file's sha256).",
)
def agreement(
    inputs: tuple[str, ...],
    judges: tuple[str, str] | None,
    turn: tuple[int, ...],
    no_ties: bool,
    output: str | None,
) -> None:
    """Agreement between two judges, or a judge and humans, as FastChat's compute_agreement.py
    computes it (per turn, with and without ties), plus Cohen's kappa.

    FILE: human votes in the mt_bench_human_judgments format (question_id, model_a, model_b,
    winner, judge, turn; a JSON array, JSONL or parquet export), or judgment files, ours or
    FastChat's (<judge>_pair.jsonl: a game's verdict, inconsistent orders as tie;
    <judge>_single.jsonl: scores compared per question and turn, equal as tie), or a folder of
    them (a run's <bench>/model_judgment/). NAME=FILE names
    the judge of every vote in FILE; otherwise expert_* votes are `human`, ["gpt-4", "pair-v2"]
    is `gpt4-pair` (FastChat's names) and other judges are <model>-pair / <model>-single.
    """
    from job.errors import JobError
    from job.report.agreement import agreement as compute
    from job.report.agreement import input_files, pick_judges, read_votes, render_table

    votes = [v for spec in inputs for v in read_votes(spec)]
    pair = pick_judges(votes, judges)
    result = compute(votes, pair, turns=list(turn) or None, ties=(False,) if no_ties else (True, False))
    click.echo(render_table(pair, result))
    if output:
        files = [f for spec in inputs for f in input_files(spec)[1]]
        sums = [{"path": str(f), "sha256": hashlib.sha256(f.read_bytes()).hexdigest()} for f in files]
        doc = {"judges": list(pair), "inputs": list(inputs), "files": sums, "turns": result}
        try:
            Path(output).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise JobError(f"--output {output}: {e.strerror}") from None
