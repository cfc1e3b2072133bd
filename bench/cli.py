"""The `bench` command: run grids, write reports, list what is registered."""
from __future__ import annotations

import logging
import sys
import time
import tomllib
from pathlib import Path

import click

from bench.config import ConfigError
from bench.data import DataUnavailable

DEFAULT_OUT = "results"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """unlearnable-bench: unlearnable-example attacks x defenses x architectures."""
    _setup_logging(verbose)


@main.command()
@click.option("--grid", "grid_name", default="smoke", show_default=True, help="A shipped grid name or a grid file.")
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False), help="Results folder.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def run(grid_name: str, out: str, device: str) -> None:
    """Run every cell of a grid that has no finished record yet."""
    from bench.grid import load_grid
    from bench.runner import pick_device, run_grid
    from bench.store import Store

    try:
        grid = load_grid(grid_name)
        start = time.perf_counter()
        counts = run_grid(grid, Store(out), pick_device(device))
    except (ConfigError, DataUnavailable) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"grid {grid.name}: {counts['done']} cells run, {counts['skipped']} already done, "
               f"{counts['failed']} failed, in {time.perf_counter() - start:.0f} s; results in {out}/records")
    if counts["failed"]:
        sys.exit(1)


@main.command()
@click.option("--grid", "grid_name", default=None, help="Only the cells of this grid (default: every record).")
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False), help="Results folder.")
@click.option("--metric", type=click.Choice(["test_acc_last", "test_acc_best", "train_acc"]), default="test_acc_last",
              show_default=True)
def report(grid_name: str | None, out: str, metric: str) -> None:
    """Write CSV, Markdown and LaTeX tables from the stored records."""
    from bench.report import write_report
    from bench.store import Store

    records = list(Store(out).records())
    attack_order = defense_order = None
    name = "all"
    if grid_name:
        from bench.grid import load_grid

        try:
            grid = load_grid(grid_name)
        except ConfigError as err:
            raise click.ClickException(str(err)) from None
        ids = {cell.cell_id for cell in grid.cells()}
        records = [r for r in records if r["cell_id"] in ids]
        attack_order, defense_order, name = grid.attacks, grid.defenses, grid.name
    paths = write_report(records, Path(out) / "reports", name, attack_order, defense_order, metric)
    click.echo(paths["md"].read_text())
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@main.command(name="list")
@click.argument("kind", required=False, type=click.Choice(["attacks", "defenses", "archs", "grids"]))
@click.option("--pattern", default="*", show_default=True, help="Glob over names, e.g. 'resnet*'.")
def list_(kind: str | None, pattern: str) -> None:
    """What is registered: attacks, defenses, architectures and grids."""
    from bench.registry import REGISTRIES

    for k in [kind] if kind else ["attacks", "defenses", "archs", "grids"]:
        click.echo(f"{k}:")
        if k == "grids":
            from bench.grid import shipped_grids
            import fnmatch

            for name, res in sorted(shipped_grids().items()):
                if fnmatch.fnmatchcase(name, pattern):
                    click.echo(f"  {name:<14} {tomllib.loads(res.read_text()).get('description', '')}")
            continue
        registry = REGISTRIES[k]
        for name in registry.names(pattern):
            entry = registry.entry(name)
            click.echo(f"  {name:<14} {entry.summary}" + (f"  [{entry.paper}]" if entry.paper else ""))


if __name__ == "__main__":
    main()
