from __future__ import annotations

import click

from job.commands.common import bench_data_option


@click.group()
def bench() -> None:
    """List, download (pull) and checksum (verify) bench data."""


@bench.command("list")
@bench_data_option
def list_cmd(bench_data: str | None) -> None:
    """Registered benches, their licence and the state of their files in the data dir."""
    from job.benches import registry, resolve_data_dir
    from job.benches.sync import check_files

    data_dir = resolve_data_dir(bench_data)
    click.echo(f"data dir: {data_dir}")
    for name, entry in sorted(registry().items()):
        states = [s.state for s in check_files([name], data_dir)]
        state = "ok" if all(s == "ok" for s in states) else f"{states.count('ok')}/{len(states)} files ok"
        click.echo(f"{name:30} {state:14} ref={entry['default_reference']:20} {entry['licence']}")
    click.echo(f"{'smoke':30} {'packaged':14} ref={'smoke-reference':20} our own smoke-test bench")


@bench.command()
@click.argument("names", nargs=-1)
@bench_data_option
@click.option(
    "--base-url",
    envvar="JOB_BENCH_BASE_URL",
    help="Mirror in FastChat data/ layout (default: the pinned upstream URLs).",
)
@click.option("--timeout", type=float, default=60.0, show_default=True)
def pull(names: tuple[str, ...], bench_data: str | None, base_url: str | None, timeout: float) -> None:
    """Download and checksum NAMES (default: all registered benches)."""
    from job.benches import resolve_data_dir
    from job.benches.sync import pull as do_pull

    for st, action in do_pull(list(names), resolve_data_dir(bench_data), base_url, timeout):
        click.echo(f"{action:10} {st.bench}:{st.logical} {st.path}")


@bench.command()
@click.argument("names", nargs=-1)
@bench_data_option
def verify(names: tuple[str, ...], bench_data: str | None) -> None:
    """Check the sha256 of every file of NAMES (default: all); exit 1 on any problem."""
    from job.benches import resolve_data_dir
    from job.benches.sync import check_files

    bad = 0
    for st in check_files(list(names), resolve_data_dir(bench_data)):
        click.echo(f"{st.state:9} {st.bench}:{st.logical} {st.path}")
        bad += st.state != "ok"
    if bad:
        raise click.ClickException(f"{bad} file(s) missing or with a wrong sha256; run `job bench pull`")
