"""``clustkit bench``: run recipes × override axes × seeds, each as a normal run folder, and tabulate.

    clustkit bench recipes/cc.toml --grid losses.cluster.weight=1,0 --seeds 0,1 --out runs/abl
    clustkit bench benchmarks/ablations/cc.toml --jobs 2
    clustkit bench benchmarks/digits.toml --executor slurm --executor-option partition=gpu

Every (cell, seed) is the run ``clustkit run RECIPE --out DIR/<cell>/seed<k> --set ... --set run.seed=k``.
This module is the command and what it prints; the bench itself is the library ``clustkit.bench``
(``session``: prepare, run, collect; ``plan``, ``tasks``, ``execute``, ``report``, and the Slurm and Ray
executors). A run whose ``summary.json`` exists is reused, one with only a checkpoint is resumed, a failed one
is recorded and retried by the next invocation. See docs/bench.md.
"""

from __future__ import annotations

import itertools
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from clustkit.cli.console import fail
from clustkit.errors import UserError

if TYPE_CHECKING:  # the command imports pydantic and the engine's helpers only when it runs, to keep --help fast
    from clustkit.bench.session import Bench, BenchOptions
    from clustkit.bench.tasks import RunTask

THREADS_HELP = "Torch CPU threads per run (0: PyTorch's default)."  # `clustkit run --threads` too


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    wide = None if getattr(stream, "isatty", lambda: False)() else 160  # logs and pipes: do not cut the table at 80
    return Console(stderr=stderr, highlight=False, width=wide)


def _run_line(t: RunTask, i: int, n: int) -> str:
    from rich.markup import escape

    head = f"[{i}/{n}] {escape(t.cell.id)} seed {t.seed}:"
    if t.status == "failed":
        return f"{head} [red]failed[/red] {escape(t.error or '')}"
    s = t.summary or {}
    bits = [f"{k}={s[k]:.4f}" for k in ("acc", "nmi", "ari") if isinstance(s.get(k), (int, float))]
    if isinstance(s.get("wall_s"), (int, float)):
        bits.append(f"{s['wall_s']:.1f} s")
    if t.resources and t.resources.get("peak_rss_mb"):
        bits.append(f"{t.resources['peak_rss_mb']:.0f} MB")
    return f"{head} [green]{t.status}[/green] " + " ".join(bits)


def _table(meta: dict[str, Any], cells: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    from clustkit.bench.report import METRICS, fmt, runs_text

    cols = [m for m in METRICS if any(m[0] in c["metrics"] for c in cells)]
    table = Table(title=f"bench {meta['name']} (mean ± std over seeds {', '.join(map(str, meta['seeds']))})")
    table.add_column("cell", overflow="fold")
    table.add_column("runs ok")
    for _, head, _ in cols:
        table.add_column(head, justify="right")
    published = any(c.get("published") for c in cells)
    if published:  # the paper's ACC beside the measured one (papers.toml)
        table.add_column("published ACC", justify="right")
    for c in cells:
        style = "red" if c["n_failed"] else None
        row = [c["id"], runs_text(c), *[fmt(c["metrics"].get(k), d) for k, _, d in cols]]
        if published:
            acc = (c.get("published") or {}).get("acc")
            row.append("–" if acc is None else f"{acc:.3f}")
        table.add_row(*row, style=style)
    return table


def bench(
    source: Annotated[str | None, typer.Argument(
        metavar="BENCH_OR_RECIPE", show_default=False,
        help="Bench file (a TOML with a \\[bench] table), a recipe file or a shipped recipe's name (cc). Omit it to "
             "continue the bench in --out.")] = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", "-g",
        help="An axis: --grid losses.cluster.weight=1,0 (repeatable, one axis each; values are TOML).")] = None,
    seeds: Annotated[str | None, typer.Option(
        "--seeds", help="Comma-separated seeds (default: the bench file's, else 0,1,2).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Bench folder (default: runs/bench-<name>).")] = None,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1, show_default=False,
        help="Runs at a time, each in its own process (default 1; with --executor slurm the array's parallelism, "
             "with ray as many as the cluster's resources allow).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Override a key in every cell: --set run.epochs=20 (repeatable).")] = None,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Run only cells whose id matches this glob (repeatable).")] = None,
    threads: Annotated[int, typer.Option(
        "--threads", min=0, help=THREADS_HELP + " Fixed, so results do not depend on --jobs.")] = 1,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=1, help="Seconds a run may take before it is stopped and failed.")] = None,
    in_process: Annotated[bool, typer.Option(
        "--in-process", help="Run in this process, one at a time (no start-up cost per run; for tiny runs).")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the cells, runs and their state; run nothing (with --executor slurm also write the "
                          "sbatch script to OUT/slurm/sbatch.sh).")] = False,
    executor: Annotated[str | None, typer.Option(
        "--executor", metavar="local|slurm|ray", show_default=False,
        help="Where the runs execute: local (default), slurm (a job array through submitit) or ray (Ray tasks). "
             "Default: the bench file's executor, else local.")] = None,
    executor_option: Annotated[list[str] | None, typer.Option(
        "--executor-option", metavar="KEY=VALUE",
        help="A setting of --executor slurm or ray (repeatable), as in \\[bench.slurm] / \\[bench.ray]: "
             "partition=gpu, gpus_per_node=1, timeout_min=60, address=auto, num_gpus=1 (docs/bench.md).")] = None,
) -> None:
    """Run recipes × override axes × seeds; tabulate mean ± std per cell (results.csv/json/md, results.png)."""
    from clustkit.bench.session import BenchOptions

    options = BenchOptions(source, grid or [], seeds, out, jobs, set_ or [], only or [], threads, timeout, in_process,
                           executor, executor_option or [])
    try:
        code = _bench(options, dry_run)
    except UserError as exc:
        fail(exc)
        return
    if code:
        raise typer.Exit(code)


def _bench(o: BenchOptions, dry_run: bool) -> int:
    """Prepare, show and run the bench of ``o``, then print its table; the exit code (0, 1: a run failed,
    2: a dry run found invalid runs, 130: interrupted)."""
    from rich.markup import escape

    from clustkit.bench.session import prepare

    b = prepare(o)
    console = _console()
    err = _console(stderr=True)
    todo = b.todo
    if dry_run:
        code = _show_plan(console, b)
        if b.choice.name == "slurm":
            _show_sbatch(console, b)
        return code
    b.save_plan()
    n_cached = sum(t.status == "cached" and t.selected for t in b.tasks)
    n_invalid = sum(t.status == "failed" for t in b.tasks)
    how = {"local": ", in-process" if o.in_process else f", jobs {o.jobs or 1}"}.get(b.choice.name,
                                                                                    f", on {b.choice.name}")
    err.print(f"bench [bold]{b.plan.name}[/bold]: {len(b.chosen)} cell(s) × {len(b.plan.seeds)} seed(s) -> {b.out}; "
              f"{len(todo)} to run, {n_cached} already done, {n_invalid} invalid{how}")
    for t in b.tasks:
        if t.status == "failed":
            err.print(_run_line(t, 0, 0).replace("[0/0] ", "", 1))
    interrupted = False
    started = time.perf_counter()
    if todo:
        interrupted = b.run(_progress(err, len(todo)), lambda text: err.print(escape(text)))
        if interrupted:
            err.print("[yellow]interrupted: finished runs are kept; run the same command again to resume.[/yellow]")
    cells, meta = b.results(_command_line(b))
    console.print(_table(meta, cells))
    for c in cells:
        for w in c.get("warnings", []):
            console.print(f"[yellow]warning[/yellow] {escape(c['id'])}: {escape(w)}", highlight=False, soft_wrap=True)
    n_failed = sum(c["n_failed"] for c in cells)
    console.print(f"results in {b.out}/results.{{csv,json,md,png}} ({time.perf_counter() - started:.0f} s)"
                  + (f"; [red]{n_failed} run(s) failed[/red] (see results.md; the next invocation retries them)"
                     if n_failed else ""))
    if interrupted:
        return 130
    return 1 if n_failed else 0


def _progress(err: Any, n: int) -> Callable[[RunTask], None]:
    """Print each run's line as it ends: [i/n] cell seed: status metrics."""
    count = itertools.count(1)
    return lambda t: err.print(_run_line(t, next(count), n))


def _command_line(b: Bench) -> str:
    """The ``clustkit bench`` command that repeats this invocation (recorded in results.json and results.md)."""
    o = b.options
    cmd = ["clustkit", "bench"] + ([str(o.source)] if o.source else [])
    for g in o.grid:
        cmd += ["--grid", g]
    if o.seeds:
        cmd += ["--seeds", o.seeds]
    for s in o.overrides:
        cmd += ["--set", s]
    cmd += ["--out", str(b.out)]
    if o.jobs is not None and (o.jobs > 1 or b.choice.name != "local"):
        cmd += ["--jobs", str(o.jobs)]
    if o.threads != 1:
        cmd += ["--threads", str(o.threads)]
    if o.in_process:
        cmd.append("--in-process")
    if o.executor:
        cmd += ["--executor", o.executor]
    for opt in o.executor_options:
        cmd += ["--executor-option", opt]
    return shlex.join(cmd)


def _show_sbatch(console: Any, b: Bench) -> None:
    """--dry-run --executor slurm: the job array's sbatch script, printed and written to OUT/slurm/sbatch.sh."""
    from clustkit.bench.executor_settings import SlurmSettings

    assert isinstance(b.choice.settings, SlurmSettings)
    written = b.sbatch()
    if written is None:
        console.print("nothing to submit: every selected run is done or invalid.")
        return
    path, text = written
    console.print(f"sbatch script of the {len(b.todo)} job(s) ({path}; cluster {b.choice.settings.cluster}):",
                  markup=False)
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _show_plan(console: Any, b: Bench) -> int:
    from rich.table import Table

    table = Table(title=f"bench {b.plan.name}: {len(b.tasks)} run(s) in {b.out}")
    for col in ("cell", "seed", "state", "command / error"):
        table.add_column(col, overflow="fold")
    for t in b.tasks:
        state = {"todo": "to run", "resume": "to resume"}.get(t.status, t.status)
        table.add_row(t.cell.id, str(t.seed), state, t.error if t.status == "failed" else shlex.join(t.command))
    console.print(table)
    # A dry run is how a bench file is checked before spending hours on it: invalid runs fail it.
    return 2 if any(t.status == "failed" for t in b.tasks) else 0
