"""The `job` command: a thin click group; each subcommand lives in job/commands/ and is
imported only when invoked, so `job --help` stays fast and never imports torch."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from job import __version__
from job.errors import JobError, Terminated

# name -> "module:attribute"; one line per command keeps parallel work conflict-free
COMMANDS: dict[str, str] = {
    "generate": "job.commands.generate:generate",
    "reduce": "job.commands.reduce:reduce_cmd",
    "bench": "job.commands.bench:bench",
    "smoke-model": "job.commands.smoke_model:smoke_model",
    "judge": "job.commands.judge:judge",
    "report": "job.commands.report:report",
    "run": "job.commands.run:run_cmd",
    "compare": "job.commands.compare:compare",
    "agreement": "job.commands.agreement:agreement",
    "leaderboard": "job.commands.leaderboard:leaderboard",
}

HELP = {
    "generate": "Generate answers for a shard of (question, choice) conversations.",
    "reduce": "Merge a model's shards into FastChat's model_answer file.",
    "bench": "List, download and verify bench data.",
    "smoke-model": "Build the tiny offline smoke-test chat model into a directory.",
    "judge": "Judge answers with FastChat's prompts (single or pairwise); resumable.",
    "report": "Aggregate judgments: FastChat show_result numbers, Swallow N-sample means, CIs.",
    "run": "generate -> reduce -> judge -> report in one command; gate on a baseline (exit 3).",
    "compare": "Per-category score deltas with CIs between two report.json files.",
    "agreement": "Judge-vs-judge / judge-vs-human agreement (FastChat compute_agreement) and kappa.",
    "leaderboard": "Table + score-vs-step trend per bench over every report published under ROOT.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # short help from the table, so `job --help` imports no command module
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobError as e:
            # one line, no traceback: the message names the file/record and the fix
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except Terminated as e:
            # preemption: the command's finally blocks saved what was done; say what
            click.echo(
                f"terminated by SIGTERM; kept {e.kept or 'all work committed before the signal'}", err=True
            )
            ctx.exit(e.exit_code)


@click.group(
    cls=LazyGroup, context_settings={"auto_envvar_prefix": "JOB", "help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="mtbench-job")
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
def cli(log_level: str) -> None:
    """MT-bench and Japanese MT-bench as a batch job: generate -> reduce -> judge -> report.

    Every option can also be set from the environment as JOB_<COMMAND>_<OPTION>
    (e.g. JOB_GENERATE_NUM_CHOICES); the common ones have short names:
    JOB_MODEL, JOB_BENCH, JOB_BENCH_DATA, JOB_OUTPUT, JOB_NUM_SHARDS.
    """
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    from job import signals as terminate

    terminate.install()  # SIGTERM -> Terminated: finally blocks run, the exit code is 143
    try:
        cli(prog_name="job")
    except Terminated as e:  # arrived outside a command (start-up, argument parsing)
        click.echo("terminated by SIGTERM", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
