"""The `bench` command: run grids, write reports, list what is registered.

Each command imports the layers it uses when it runs (the executors, the report, `bench bench`), so
that `bench --help` and `bench list` do not load what they do not need: `bench --help` and `bench CMD
--help` load no torch (tests/test_cli.py checks it). The results folder is `--results` on every command
that reads or writes one; `--out`, its older name, still works and is left out of the help.
"""
from __future__ import annotations

import functools
import logging
import sys
import time
import tomllib
from pathlib import Path

import click

from bench.version import __version__
from bench.config import ConfigError, budget_label, parse_number
from bench.published import DEFAULT_TOLERANCE

DEFAULT_OUT = "results"
DEFAULT_GRID = "smoke"  # what `bench run` runs without --grid (and says so)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})  # every command inherits -h
@click.version_option(__version__, "--version", prog_name="bench", message="%(prog)s %(version)s (unlearnable-bench)")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """unlearnable-bench: unlearnable-example attacks x defenses x architectures."""
    _setup_logging(verbose)


def results_folder(command):
    """`--results DIR` (the results folder), and `--out`, its older name, hidden; passed on as `out`."""

    @functools.wraps(command)
    def with_results(*args, results: str | None, out_alias: str | None, **kwargs):
        if results is not None and out_alias is not None and Path(results) != Path(out_alias):
            raise click.UsageError(f"--results {results} and --out {out_alias} name two folders; --out is the old "
                                   "name of --results: give one")
        return command(*args, out=results or out_alias or DEFAULT_OUT, **kwargs)

    with_results = click.option("--out", "out_alias", default=None, hidden=True, type=click.Path(file_okay=False),
                                help="The old name of --results.")(with_results)
    return click.option("--results", default=None, type=click.Path(file_okay=False), metavar="DIR",
                        help=f"Results folder (records, poison cache, reports).  [default: {DEFAULT_OUT}]")(with_results)


def _data_unavailable() -> type:
    """bench.data's DataUnavailable, imported when a command catches it (bench.data loads torch)."""
    from bench.data import DataUnavailable

    return DataUnavailable


def plugin_files(command):
    """`--plugins FILE` (repeatable): import each plugin file (bench.plugin_files) before the command runs."""

    @functools.wraps(command)
    def with_plugins(*args, plugin_paths: tuple[str, ...], **kwargs):
        if plugin_paths:
            from bench.plugin_files import load_plugin_files  # imports the plugins' modules (torch) only when asked

            try:
                load_plugin_files(plugin_paths, where="--plugins")
            except ConfigError as err:
                raise click.ClickException(str(err)) from None
        return command(*args, **kwargs)

    return click.option("--plugins", "plugin_paths", multiple=True, metavar="FILE",
                        help="A Python file whose registered plugins to load first (no packaging); "
                             "repeatable.")(with_plugins)


def grid_overrides(command):
    """Options that change a grid before it is checked (bench.grid.GridOverrides), passed on as `overrides`."""

    @functools.wraps(command)
    def with_overrides(*args, set_: tuple[str, ...], attacks: str | None, defenses: str | None, archs: str | None,
                       seeds: str | None, **kwargs):
        from bench.grid import GridOverrides

        try:
            overrides = GridOverrides.from_cli(set_, attacks, defenses, archs, seeds)
        except ConfigError as err:
            raise click.ClickException(str(err)) from None
        return command(*args, overrides=overrides, **kwargs)

    options = [
        click.option("--set", "set_", multiple=True, metavar="NAME.FIELD=VALUE",
                     help="Set a config field of an attack, defense or arch of the grid, or recipe.FIELD / data.FIELD; repeatable."),
        click.option("--attacks", default=None, metavar="A,B", help="Replace the grid's attacks (any registered names)."),
        click.option("--defenses", default=None, metavar="A,B", help="Replace the grid's defenses."),
        click.option("--archs", default=None, metavar="A,B", help="Replace the grid's architectures."),
        click.option("--seeds", default=None, metavar="0,1", help="Replace the grid's seeds."),
    ]
    for option in reversed(options):
        with_overrides = option(with_overrides)
    return with_overrides


@main.command()
@click.option("--grid", "grid_name", default=None, help=f"A shipped grid name or a grid file.  [default: {DEFAULT_GRID}]")
@results_folder
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (local executor).")
@click.option("--executor", type=click.Choice(["local", "ray", "slurm"]), default="local", show_default=True,
              help="local: this machine (one worker per GPU); ray: a Ray cluster; slurm: submitit job arrays.")
@click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="Tries after the first before a cell is recorded as failed (NaN losses and bad configs are not retried).")
@click.option("--cells-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells run at once on each GPU (local, ray); more than 1 helps when one cell leaves the GPU idle.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="local on a CPU-only machine: worker processes.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (first-epoch compile time is recorded).")
@click.option("--ray-address", default=None, help="ray: the cluster to join (default: RAY_ADDRESS or a local instance).")
@click.option("--slurm-partition", default=None, help="slurm: the partition.")
@click.option("--slurm-timeout", "slurm_timeout", type=click.IntRange(min=1), default=240, show_default=True,
              help="slurm: minutes per task.")
@click.option("--dry-run", is_flag=True, help="List the cells (done, failed, pending), the poisons to generate and a "
                                               "cost estimate from recorded timings; run nothing.")
@click.option("--rehearse", is_flag=True, help="Run each distinct combination of the grid once at toy scale (a few "
                                                "dozen images, one epoch, smallest presets) in a scratch folder, a "
                                                "line each; the results folder is not touched. Exits 1 if any failed.")
@grid_overrides
@plugin_files
def run(grid_name: str, out: str, device: str, executor: str, retries: int, cells_per_gpu: int, workers: int | None,
        compile_: bool, ray_address: str | None, slurm_partition: str | None, slurm_timeout: int, dry_run: bool,
        rehearse: bool, overrides) -> None:
    """Run every cell of a grid that has no finished record yet."""
    from bench.data import DataUnavailable
    from bench.environment import pick_device
    from bench.executors import make_executor, run_grid
    from bench.grid import load_grid
    from bench.store import Store

    if grid_name is None:
        grid_name = DEFAULT_GRID
        click.echo(f"no --grid: running the shipped grid {DEFAULT_GRID} (bench list grids shows the others)", err=True)
    options = {"local": {"workers": workers, "cells_per_gpu": cells_per_gpu},
               "ray": {"address": ray_address, "cells_per_gpu": cells_per_gpu},
               "slurm": {"partition": slurm_partition, "timeout_min": slurm_timeout}}[executor]
    if rehearse and (dry_run or executor != "local"):
        raise click.UsageError("--rehearse runs on this machine, in a scratch folder: not with --dry-run, "
                               "and only with --executor local")
    if rehearse:
        _rehearse(grid_name, device, overrides, make_executor("local", **options))
        return
    try:
        grid = load_grid(grid_name, overrides)
        torch_device = pick_device(device)
        if dry_run:
            from bench.plan import format_plan, plan_grid

            click.echo(format_plan(plan_grid(grid, Store(out), _content(grid))))
            return
        start = time.perf_counter()
        counts = run_grid(grid, Store(out), torch_device, executor=make_executor(executor, **options),
                          retries=retries, compile=compile_)
    except (ConfigError, DataUnavailable) as err:
        raise click.ClickException(str(err)) from None
    elsewhere = f", {counts['elsewhere']} left to another run on {out}" if counts.get("elsewhere") else ""
    click.echo(f"grid {grid.name}: {counts['done']} cells run, {counts['skipped']} already done, "
               f"{counts['failed']} failed{elsewhere}, in {time.perf_counter() - start:.0f} s; results in {out}/records")
    if counts["failed"]:
        sys.exit(1)


def _content(grid):
    """The run's own done-test for `bench run --dry-run` and `bench status --grid` (`content_of`: the
    data loaded and fingerprinted, the attacks' files hashed); None, with a line saying so, where the
    data cannot be loaded: records are then judged by their cell ids alone."""
    from bench.executors import content_of

    try:
        return content_of(grid.cells())
    except (ConfigError, _data_unavailable()) as err:
        click.echo(f"note: grid {grid.name}: its data could not be loaded ({str(err).splitlines()[0]}); done records "
                   "are counted as done without checking the data they were made on", err=True)
        return None


def _rehearse(grid_name: str, device: str, overrides, executor) -> None:
    """`bench run --rehearse`: a line per combination as it finishes, a summary, exit 1 if any failed."""
    from bench.data import DataUnavailable
    from bench.environment import pick_device
    from bench.rehearse import rehearse

    start = time.perf_counter()
    cells_log = logging.getLogger("bench")
    level = cells_log.level
    if not cells_log.isEnabledFor(logging.DEBUG):  # a line per combination says it all; -v shows the cells' own log
        cells_log.setLevel(logging.CRITICAL)
    try:
        outcomes = rehearse(grid_name, pick_device(device), overrides, executor=executor, echo=click.echo)
    except (ConfigError, DataUnavailable) as err:
        raise click.ClickException(str(err)) from None
    finally:
        cells_log.setLevel(level)
    failed = [o for o in outcomes if not o.passed]
    click.echo(f"rehearsal of {grid_name}: {len(outcomes) - len(failed)} of {len(outcomes)} combinations passed, "
               f"{len(failed)} failed, in {time.perf_counter() - start:.0f} s")
    if failed:
        sys.exit(1)


@main.command()
@click.option("--grid", "grid_name", default=None, help="Only the cells of this grid (default: every record).")
@results_folder
@click.option("--format", "formats", default="latex,csv,md,fig", show_default=True,
              help="Any comma-separated subset of latex, csv, md, fig.")
@click.option("--metric", type=click.Choice(["test_acc_last", "test_acc_best", "train_acc", "test_acc_early_stop"]),
              default="test_acc_last", show_default=True,
              help="What the tables show (the CSV holds every metric; test_acc_early_stop: cells with early_stop only).")
@click.option("--rows", default="attack", show_default=True, help="Table rows: attack, defense, arch, dataset, recipe, poison_ratio.")
@click.option("--columns", default="defense", show_default=True, help="Table columns: another of the same factors.")
@click.option("--curves", default=None,
              help="Cells whose training curves are drawn: comparisons of columns with values joined by 'and', e.g. "
                   "\"defense == 'none' and seed == 0\" or \"attack in [em, ops]\" "
                   "(default: every attack under the first defense, first arch and seed).")
@click.option("--compare", default=None, metavar="SOURCES",
              help="Put each cell beside the published number for it: 'published' (every source in bench/published) "
                   "or source ids, comma-separated (iss2023, apbench2023, ...); says what is not comparable and why.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=DEFAULT_TOLERANCE, show_default=True,
              help="--compare: flag comparable cells further than this many points from the published number.")
@plugin_files
def report(grid_name: str | None, out: str, formats: str, metric: str, rows: str, columns: str, curves: str | None,
           compare: str | None, tolerance: float) -> None:
    """Tables (LaTeX, CSV, Markdown), the MI analysis and figures from the stored records; prints the main
    tables and where every file went."""
    from bench.published import select_sources
    from bench.report import TableLayout, parse_formats, write_report
    from bench.store import Store

    try:
        sources = select_sources(compare) if compare is not None else ()
    except ValueError as err:  # an unknown source, or a source file that does not parse (ConfigError)
        raise click.ClickException(str(err)) from None

    store = Store(out)
    records = list(store.records())
    orders: dict = {}
    name = "all"
    if grid_name:
        from bench.grid import load_grid

        try:
            grid = load_grid(grid_name)
        except ConfigError as err:
            raise click.ClickException(str(err)) from None
        cells = {cell.cell_id: cell for cell in grid.cells()}
        # Under the grid's own names: a cell another grid ran, or one run under a variant's older name, is its cell.
        records = [r.named(cells[r.cell_id].variants) for r in records if r.cell_id in cells]
        orders = {"attack_order": grid.attacks, "defense_order": grid.defenses, "arch_order": grid.archs}
        name = grid.name
    else:
        orders = _orders_of_record_grids(records)
    try:
        done = write_report(records, Path(out) / "reports", name, metric=metric, formats=parse_formats(formats),
                            layout=TableLayout(rows, columns), store=store, curves=curves, compare=sources,
                            tolerance=tolerance, **orders)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:  # a full disk, a read-only folder: every file written is whole, the rest the last report's
        raise click.ClickException(f"report: could not write {err.filename or Path(out) / 'reports'} "
                                   f"({err.strerror or err}); each file there is whole, this report's or the "
                                   f"previous one's: free space and run it again") from None
    click.echo(done.summary)
    click.echo(done.files_text())


def _orders_of_record_grids(records) -> dict:
    """Without --grid, rows and columns in the order of the shipped grids the records name (the grid with
    the most records first), so a folder of one grid reports as `--grid` would order it; a name no
    shipped grid lists comes after those, sorted (records do not keep their grid file's order)."""
    from collections import Counter

    from bench.grid import load_grid, shipped_grids

    shipped = shipped_grids()
    counts = Counter(r.grid for r in records if r.grid in shipped)
    grids = []
    for grid_name, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        try:
            grids.append(load_grid(grid_name))
        except ConfigError:  # a shipped grid naming a plugin this installation lacks orders nothing
            continue
    return {f"{factor}_order": list(dict.fromkeys(n for grid in grids for n in getattr(grid, factor + "s")))
            for factor in ("attack", "defense", "arch")}


@main.command()
@click.option("--grid", "grid_names", multiple=True,
              help="A shipped grid name or a grid file; repeatable (default: every grid that has records).")
@results_folder
@grid_overrides
@plugin_files
def status(grid_names: tuple[str, ...], out: str, overrides) -> None:
    """Done, failed and pending cells per grid, and each failure's error."""
    from bench.grid import GridOverrides, load_grid, shipped_grids
    from bench.plan import format_status, grid_status, records_by_cell, store_status
    from bench.store import Store

    if overrides != GridOverrides() and not grid_names:
        raise click.ClickException("--set, --attacks, --defenses, --archs and --seeds need --grid")
    records = records_by_cell(Store(out))
    try:
        if grid_names:
            grids = [load_grid(name, overrides) for name in grid_names]
            statuses = [grid_status(grid, records, _content(grid)) for grid in grids]
        else:
            statuses = store_status(records, {name: load_grid(name) for name in sorted(shipped_grids())})
    except (ConfigError, _data_unavailable()) as err:
        raise click.ClickException(str(err)) from None
    if not statuses:
        click.echo(f"no records in {Path(out) / 'records'}")
    for summary in statuses:
        click.echo(format_status(summary))


@main.command(name="list")
@click.argument("kind", required=False, type=click.Choice(["attacks", "defenses", "archs", "grids"]))
@click.option("--pattern", default="*", show_default=True, help="Glob over names, e.g. 'resnet*'.")
@plugin_files
def list_(kind: str | None, pattern: str) -> None:
    """What is registered: attacks, defenses, architectures and grids."""
    import fnmatch

    from bench.grid import shipped_grids
    from bench.registry import REGISTRIES

    rows = {}  # kind -> [(name, what reports call it, description)]
    for k in [kind] if kind else ["attacks", "defenses", "archs", "grids"]:
        if k == "grids":
            rows[k] = [(name, "", tomllib.loads(res.read_text()).get("description", ""))
                       for name, res in sorted(shipped_grids().items()) if fnmatch.fnmatchcase(name, pattern)]
            continue
        registry = REGISTRIES[k]
        rows[k] = []
        for name in registry.names(pattern):
            entry = registry.entry(name)
            rows[k].append((name, entry.display, entry.summary + (f"  [{entry.paper}]" if entry.paper else "")))
    # One column each for every kind: the name, the display name reports show, the summary.
    width = max((len(name) for listed in rows.values() for name, _, _ in listed), default=0)
    shown = max((len(display) for listed in rows.values() for _, display, _ in listed), default=0)
    for k, listed in rows.items():
        click.echo(f"{k}:")
        for name, display, description in listed:
            click.echo(f"  {name:<{width}}  {display:<{shown}}  {description}".rstrip())


@main.command()
@click.argument("name")
@plugin_files
def show(name: str) -> None:
    """The settings of an attack, defense, arch or recipe: default, type, help (with units), presets.

    NAME is a registered name or a recipe preset (`bench show em`, `bench show em60`, `bench show
    recipe`); KIND:NAME says which where one name is of two kinds (`bench show attack:em`).
    """
    from bench.describe import describe, format_description

    try:
        descriptions = describe(name)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    click.echo("\n\n".join(map(format_description, descriptions)))


@main.command()
@results_folder
@click.option("--failed", is_flag=True, help="Remove the records of failed cells (they run again at the next "
                                             "`bench run` either way; this takes them out of status and reports).")
@click.option("-y", "--yes", is_flag=True, help="Remove without asking.")
def clean(out: str, failed: bool, yes: bool) -> None:
    """Remove failed cells' records, after listing them; a finished record is never touched."""
    from bench.cell import cell_label
    from bench.plan import error_line
    from bench.store import Store

    if not failed:
        raise click.UsageError("say what to remove: --failed (the records of failed cells; nothing else is removed)")
    store = Store(out)
    failures = [r for r in store.records() if r.status == "failed"]
    if not failures:
        click.echo(f"no failed records in {store.records_dir}")
        return
    click.echo(f"{len(failures)} failed record{'s' * (len(failures) != 1)} in {store.records_dir}:")
    for r in failures:
        label = cell_label(r.name("attack"), r.name("defense"), r.name("arch"), r.seed)
        click.echo(f"  {r.cell_id}  {label}: {error_line(r.error)}")
    if not yes and not click.confirm("remove them?", default=False):
        click.echo("nothing removed")
        return
    removed = sum(store.remove_failed(r.cell_id) for r in failures)
    kept = len(failures) - removed
    click.echo(f"removed {removed}" + (f"; kept {kept}: running now, or no longer a failed record" if kept else ""))


@main.group()
@plugin_files
def poison() -> None:
    """Poisons to publish and to check: list the cache, export a bundle, convert a release, verify one."""


def _one_line(action):
    """Bad input, a bad file or a budget a poison breaks: one line, no traceback."""

    @functools.wraps(action)
    def wrapped(*args, **kwargs):
        try:
            return action(*args, **kwargs)
        except (ValueError, _data_unavailable()) as err:  # ConfigError, BudgetError, BundleError
            raise click.ClickException(str(err)) from None

    return wrapped


def _budget_text(norm: str, value: float) -> str:
    """A budget as the reports write it (`Linf 8/255`, `L2 1.30`, `L0 1 px`); `Linf 0` for none."""
    return budget_label(norm, value) or f"{norm.capitalize()} 0"


def _budget(value: str) -> float:
    """`8/255`, `0.5` or `32`: a budget as people write it."""
    try:
        return float(parse_number(value))
    except (ValueError, ZeroDivisionError):
        raise click.BadParameter(f"{value!r} is not a number or a fraction such as 8/255", param_hint="--eps") from None


@poison.command(name="list")
@results_folder
@_one_line
def poison_list(out: str) -> None:
    """The poisons cached in a results folder, with the key `bench poison export` takes."""
    from bench.publish import cached_poisons
    from bench.store import Store

    found = cached_poisons(Store(out))
    width = max((len(p.attack) for p in found), default=0)
    click.echo(f"{len(found)} cached poisons in {out}" + (":" if found else ""))
    for p in found:
        click.echo(f"  {p.key}  {p.attack:<{width}}  seed {p.seed}  {p.count:,} images of {p.data}  "
                   f"{_budget_text(p.norm, p.budget)}")


@poison.command(name="export")
@click.argument("key")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@results_folder
@click.option("--force", is_flag=True, help="Replace another bundle (or other files) in BUNDLE.")
@_one_line
def poison_export(key: str, bundle: Path, out: str, force: bool) -> None:
    """Write the cached poison KEY as a bundle in the folder BUNDLE: images and a manifest. BUNDLE may hold this
    same poison already; anything else there is refused without --force."""
    from bench.publish import export_cached
    from bench.store import Store

    manifest = export_cached(Store(out), key, bundle, force=force)
    click.echo(f"wrote {bundle}: {manifest.count} images of {manifest.attack} (seed {manifest.seed}) on "
               f"{manifest.dataset}, {_budget_text(manifest.norm, manifest.budget)} claimed, "
               f"{_budget_text(manifest.norm, manifest.measured[manifest.norm])} measured, sha256 {manifest.sha256[:16]}")


@poison.command(name="convert")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.option("--attack", required=True, help="What made the poison (e.g. tap, ar, em): the bundle's name for it.")
@click.option("--format", "fmt", default="auto", show_default=True,
              help="png-folder (TAP, AR releases), npz (x_train), em-pt (EM's perturbation.pt), or auto from the name.")
@click.option("--data", default="cifar10", show_default=True, help="The clean dataset the poison perturbs.")
@click.option("--norm", default="linf", show_default=True, type=click.Choice(["linf", "l2", "l0"]),
              help="The norm its authors claim.")
@click.option("--eps", default="8/255", show_default=True, help="The budget its authors claim, e.g. 8/255 or 0.5.")
@click.option("--seed", type=int, default=None, help="The seed, where the release says.")
@click.option("--em-noise", default="official", show_default=True, type=click.Choice(["official", "full"]),
              help="em-pt: official = what EM's loader trains on (the positive half of the noise); full = both signs.")
@click.option("--force", is_flag=True, help="Replace another bundle (or other files) in BUNDLE.")
@_one_line
def poison_convert(source: Path, bundle: Path, attack: str, fmt: str, data: str, norm: str, eps: str,
                   seed: int | None, em_noise: str, force: bool) -> None:
    """Convert a poison released as SOURCE into a bundle in the folder BUNDLE, checked against the clean data."""
    from bench.publish import convert_release

    manifest = convert_release(source, bundle, fmt=fmt, data=data, attack=attack, norm=norm, eps=_budget(eps),
                               seed=seed, em_noise=em_noise, force=force)
    click.echo(f"wrote {bundle}: {manifest.count} images of {attack} on {data}, {_budget_text(norm, manifest.budget)} "
               f"claimed, {_budget_text(norm, manifest.measured[norm])} measured, sha256 {manifest.sha256[:16]}")


@poison.command(name="verify")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", default=None, help="The clean dataset to check against (default: the one the manifest names).")
@_one_line
def poison_verify(bundle: Path, data: str | None) -> None:
    """Check BUNDLE: its hash, the clean images it was made from, their order, and its budget."""
    from bench.publish import verify_bundle

    done = verify_bundle(bundle, data)
    m = done.manifest
    click.echo(f"{bundle}: ok, {m.count} images of {m.attack} (seed {m.seed}) made from {done.data} (clean "
               f"fingerprint {m.clean_fingerprint}), {_budget_text(m.norm, m.budget)} claimed, "
               f"{_budget_text(m.norm, done.measured)} measured, "
               f"sha256 {m.sha256[:16]}")


@main.command(name="bench")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--quick", is_flag=True, help="Small windows: seconds, for a check that it all runs; noisy figures.")
@click.option("--memory", is_flag=True, help="Also peak host/GPU memory of each attack's generation on 50,000 images.")
@click.option("--full", is_flag=True, help="Also a 60-epoch ResNet-18 cell and EM (official settings) on all of "
                                           "CIFAR-10: for a GPU; days on a CPU.")
@click.option("--only", "only", default=None, metavar="PARTS",
              help="Run just these parts, comma-separated: training, compile, jpeg, defenses, generation, report, "
                   "concurrent, memory, cell, em.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures to this JSON file.")
def bench_(device: str, quick: bool, memory: bool, full: bool, only: str | None, json_path: Path | None) -> None:
    """Speed on this machine: our training loop beside the conventional one, JPEG, defenses, generation, report."""
    import json

    from bench.perf import parse_parts, plan_for, run_benchmarks
    from bench.environment import pick_device

    try:
        torch_device = pick_device(device)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    try:
        parts = parse_parts(only) if only else plan_for(torch_device, quick).parts
    except ValueError as err:
        raise click.BadParameter(str(err).removeprefix("--only: "), param_hint="--only") from None
    parts += ("memory",) * memory + ("cell", "em") * full
    figures = run_benchmarks(torch_device, quick=quick, parts=tuple(dict.fromkeys(parts)), echo=click.echo)
    if json_path is not None:
        json_path.write_text(json.dumps(figures, indent=1, default=str))
        click.echo(f"figures written to {json_path}")


if __name__ == "__main__":
    main()
