"""``clustkit bench``: run recipes × override axes × seeds, each as a normal run folder, and tabulate.

    clustkit bench recipes/cc.toml --grid losses.cluster.weight=1,0 --seeds 0,1 --out runs/abl
    clustkit bench benchmarks/ablations/cc.toml --jobs 2
    clustkit bench benchmarks/digits.toml --executor slurm --executor-option partition=gpu

Every (cell, seed) is the run ``clustkit run RECIPE --out DIR/<cell>/seed<k> --set ... --set run.seed=k``
(``plan``: what to run; ``tasks``: the state of each run folder; ``execute``: running them;
``report``: the tables; ``executor_settings``, ``remote``, ``slurm_jobs``, ``ray_tasks``: running them on
Slurm or Ray). A run whose ``summary.json`` exists is reused, one with only a checkpoint is resumed, a
failed one is recorded and retried by the next invocation. See docs/bench.md.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

from clustkit.errors import UserError

if TYPE_CHECKING:  # the command imports pydantic and the engine's helpers only when it runs, to keep --help fast
    from clustkit.bench.execute import Executor
    from clustkit.bench.executor_settings import ExecutorChoice
    from clustkit.bench.plan import Cell, Plan
    from clustkit.bench.tasks import RunTask

PLAN_FILE = "plan.json"


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
    for c in cells:
        style = "red" if c["n_failed"] else None
        table.add_row(c["id"], runs_text(c), *[fmt(c["metrics"].get(k), d) for k, _, d in cols], style=style)
    return table


def bench(
    source: Optional[str] = typer.Argument(
        None, metavar="BENCH_OR_RECIPE", show_default=False, help="Bench file (a TOML with a \\[bench] table), a recipe file or a shipped recipe's name (cc). Omit it to continue the bench in --out."),
    grid: list[str] = typer.Option(
        [], "--grid", "-g", help="An axis: --grid losses.cluster.weight=1,0 (repeatable, one axis each; values are TOML)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds (default: the bench file's, else 0,1,2)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bench folder (default: runs/bench-<name>)."),
    jobs: Optional[int] = typer.Option(
        None, "--jobs", "-j", min=1, show_default=False,
        help="Runs at a time, each in its own process (default 1; with --executor slurm the array's parallelism, "
             "with ray as many as the cluster's resources allow)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a key in every cell: --set run.epochs=20 (repeatable)."),
    only: list[str] = typer.Option([], "--only", help="Run only cells whose id matches this glob (repeatable)."),
    threads: int = typer.Option(1, "--threads", min=0,
                                help="Torch CPU threads per run (0: PyTorch's default). Fixed, so results do not depend on --jobs."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=1, help="Seconds a run may take before it is stopped and failed."),
    in_process: bool = typer.Option(False, "--in-process", help="Run in this process, one at a time (no start-up cost per run; for tiny runs)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cells, runs and their state; run nothing "
                                 "(with --executor slurm also write the sbatch script to OUT/slurm/sbatch.sh)."),
    executor: Optional[str] = typer.Option(
        None, "--executor", metavar="local|slurm|ray", show_default=False,
        help="Where the runs execute: local (default), slurm (a job array through submitit) or ray (Ray tasks). "
             "Default: the bench file's executor, else local."),
    executor_option: list[str] = typer.Option(
        [], "--executor-option", metavar="KEY=VALUE",
        help="A setting of --executor slurm or ray (repeatable), as in \\[bench.slurm] / \\[bench.ray]: partition=gpu, "
             "gpus_per_node=1, timeout_min=60, address=auto, num_gpus=1 (docs/bench.md)."),
) -> None:
    """Run recipes × override axes × seeds; tabulate mean ± std per cell (results.csv/json/md, results.png)."""
    try:
        code = _bench(source, grid, seeds, out, jobs, set_, only, threads, timeout, in_process, dry_run, executor,
                      executor_option)
    except UserError as exc:
        from clustkit.cli.app import fail

        fail(exc)
        return
    if code:
        raise typer.Exit(code)


def _bench(source: str | Path | None, grid: list[str], seeds: str | None, out: Path | None, jobs: int | None,
           set_: list[str], only: list[str], threads: int, timeout: float | None, in_process: bool, dry_run: bool,
           executor: str | None = None, executor_option: list[str] | None = None) -> int:
    from clustkit.bench.execute import Executor
    from clustkit.bench.executor_settings import choose_executor, require
    from clustkit.bench.plan import BenchFileError, build_plan, read_plan, select
    from clustkit.bench.tasks import plan_tasks

    executor_option = executor_option or []
    if in_process and (jobs or 1) > 1:
        raise UserError("--in-process runs one run at a time; drop --jobs or --in-process.")
    if source is None:
        if out is None or not (out / PLAN_FILE).exists():
            raise UserError("give a bench file or a recipe, or --out of an existing bench folder (with plan.json) "
                            "to continue it.")
        if grid or set_ or seeds:
            raise UserError("--grid, --set and --seeds need a bench file or recipe; to continue the bench in "
                            f"{out} give only --out.")
        plan = read_plan(out / PLAN_FILE)
    else:
        from clustkit.recipe import resolve_recipe

        plan = build_plan(resolve_recipe(source), grid, seeds, set_)
    choice = choose_executor(plan, executor, executor_option)
    if choice.name != "local":
        if in_process:
            raise UserError(f"--in-process runs in the bench's own process, not on {choice.name}: drop it, or "
                            f"pass --executor local.")
        require(choice.name)
    plan.executor = choice.name  # saved in plan.json, with the settings: `bench --out DIR` continues the same way
    if choice.given:
        plan.executor_options[choice.name] = choice.given
    out = out or Path("runs") / f"bench-{plan.name}"
    for i, r in enumerate(plan.recipes):
        if not r.path.is_file():
            raise BenchFileError(plan.source, f"bench.recipes[{i}]", f"recipe {str(r.path)!r} not found.")
    all_cells = plan.cells()
    chosen = select(all_cells, only)
    tasks = plan_tasks(plan, all_cells, {c.id for c in chosen}, out)
    ex = Executor(threads, timeout, in_process)
    for t in tasks:
        t.command = ex.command(t)
    console = _console()
    err = _console(stderr=True)
    todo = [t for t in tasks if t.status in ("todo", "resume")]
    if dry_run:
        code = _show_plan(console, plan, tasks, out)
        if choice.name == "slurm":
            _show_sbatch(console, choice, plan, out, len(todo), jobs)
        return code
    out.mkdir(parents=True, exist_ok=True)
    from clustkit.atomic import atomic_write

    atomic_write(out / PLAN_FILE, json.dumps(plan.to_json(), indent=2) + "\n")
    n_cached = sum(t.status == "cached" and t.selected for t in tasks)
    n_invalid = sum(t.status == "failed" for t in tasks)
    how = {"local": ", in-process" if in_process else f", jobs {jobs or 1}"}.get(choice.name, f", on {choice.name}")
    err.print(f"bench [bold]{plan.name}[/bold]: {len(chosen)} cell(s) × {len(plan.seeds)} seed(s) -> {out}; "
              f"{len(todo)} to run, {n_cached} already done, {n_invalid} invalid{how}")
    for t in tasks:
        if t.status == "failed":
            err.print(_run_line(t, 0, 0).replace("[0/0] ", "", 1))
    interrupted = False
    started = time.perf_counter()
    if todo:
        try:
            if in_process:  # in the main thread: the run's output is redirected to its bench.log meanwhile
                _warm_up()
                for i, t in enumerate(todo, 1):
                    err.print(_run_line(ex.run(t), i, len(todo)))
            elif choice.name == "local":
                _run_pool(ex, todo, jobs or 1, err)
            else:
                _run_elsewhere(choice, todo, plan, out, jobs, threads, timeout, err)
        except KeyboardInterrupt:
            interrupted = True
            err.print("[yellow]interrupted: finished runs are kept; run the same command again to resume.[/yellow]")
        for t in todo:
            if t.status in ("todo", "resume"):
                t.status = "pending"
    cells, meta = _collect(plan, all_cells, tasks, out, source, grid, seeds, set_, jobs, threads, in_process, choice,
                           executor, executor_option)
    from rich.markup import escape

    from clustkit.bench.report import write_all

    write_all(out, meta, cells, [a.name for a in plan.axes])
    console.print(_table(meta, cells))
    for c in cells:
        for w in c.get("warnings", []):
            console.print(f"[yellow]warning[/yellow] {escape(c['id'])}: {escape(w)}", highlight=False, soft_wrap=True)
    n_failed = sum(c["n_failed"] for c in cells)
    console.print(f"results in {out}/results.{{csv,json,md,png}} ({time.perf_counter() - started:.0f} s)"
                  + (f"; [red]{n_failed} run(s) failed[/red] (see results.md; the next invocation retries them)"
                     if n_failed else ""))
    if interrupted:
        return 130
    return 1 if n_failed else 0


def _progress(err: Any, n: int) -> Callable[[RunTask], None]:
    """Print each run's line as it ends: [i/n] cell seed: status metrics."""
    count = itertools.count(1)
    return lambda t: err.print(_run_line(t, next(count), n))


def _run_pool(ex: Executor, todo: list[RunTask], jobs: int, err: Any) -> None:
    pool = cf.ThreadPoolExecutor(max_workers=jobs)
    futures = [pool.submit(ex.run, t) for t in todo]
    report = _progress(err, len(todo))
    try:
        for fut in cf.as_completed(futures):
            report(fut.result())
    except KeyboardInterrupt:
        ex.stop()
        for f in futures:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_elsewhere(choice: ExecutorChoice, todo: list[RunTask], plan: Plan, out: Path, jobs: int | None,
                   threads: int, timeout: float | None, err: Any) -> None:
    """Each run as the local executor runs it (``remote.run_remote``), in a Slurm job or a Ray task."""
    from rich.markup import escape

    from clustkit.bench.remote import Remote

    remote = Remote.here(threads, timeout)
    report, note = _progress(err, len(todo)), (lambda text: err.print(escape(text)))
    if choice.name == "slurm":
        from clustkit.bench.executor_settings import SlurmSettings
        from clustkit.bench.slurm_jobs import run_jobs

        assert isinstance(choice.settings, SlurmSettings)
        run_jobs(todo, choice.settings, out / "slurm", remote, f"bench-{plan.name}", jobs, report, note)
    else:
        from clustkit.bench.executor_settings import RaySettings
        from clustkit.bench.ray_tasks import run_tasks

        assert isinstance(choice.settings, RaySettings)
        run_tasks(todo, choice.settings, remote, jobs, report, note)


def _show_sbatch(console: Any, choice: ExecutorChoice, plan: Plan, out: Path, n_runs: int, jobs: int | None) -> None:
    """--dry-run --executor slurm: the job array's sbatch script, printed and written to OUT/slurm/sbatch.sh."""
    from clustkit.bench.executor_settings import SlurmSettings
    from clustkit.bench.slurm_jobs import SBATCH, sbatch_script

    assert isinstance(choice.settings, SlurmSettings)
    if not n_runs:
        console.print("nothing to submit: every selected run is done or invalid.")
        return
    folder = out / "slurm"
    text = sbatch_script(choice.settings, folder, n_runs, f"bench-{plan.name}", jobs)
    folder.mkdir(parents=True, exist_ok=True)
    from clustkit.atomic import atomic_write

    atomic_write(folder / SBATCH, text)
    console.print(f"sbatch script of the {n_runs} job(s) ({folder / SBATCH}; cluster {choice.settings.cluster}):",
                  markup=False)
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _warm_up() -> None:
    """Pay one-time lazy imports (torch, the optimizers' torch._dynamo) before the first in-process run,
    so that its wall_s is comparable with the next ones'."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def _show_plan(console: Any, plan: Plan, tasks: list[RunTask], out: Path) -> int:
    from rich.table import Table

    table = Table(title=f"bench {plan.name}: {len(tasks)} run(s) in {out}")
    for col in ("cell", "seed", "state", "command / error"):
        table.add_column(col, overflow="fold")
    for t in tasks:
        state = {"todo": "to run", "resume": "to resume"}.get(t.status, t.status)
        table.add_row(t.cell.id, str(t.seed), state, t.error if t.status == "failed" else shlex.join(t.command))
    console.print(table)
    # A dry run is how a bench file is checked before spending hours on it: invalid runs fail it.
    return 2 if any(t.status == "failed" for t in tasks) else 0


def _collect(plan: Plan, cells: list[Cell], tasks: list[RunTask], out: Path, source: Path | None, grid: list[str],
             seeds: str | None, set_: list[str], jobs: int | None, threads: int, in_process: bool,
             choice: ExecutorChoice, executor: str | None, executor_option: list[str]) -> tuple[list[dict], dict]:
    from clustkit import __version__
    from clustkit.bench.report import aggregate
    from clustkit.plugin_system.manager import get_plugins

    current = {n: i.version for n, i in get_plugins().info.items()}
    by_cell: dict[str, list[RunTask]] = {}
    for t in tasks:
        by_cell.setdefault(t.cell.id, []).append(t)
    rows = []
    for c in cells:
        rows.append({"id": c.id, "recipe": str(c.recipe.path), "recipe_label": c.recipe.label, "axes": c.axes,
                     "overrides": c.overrides, "plugins": dict(current),
                     "runs": [t.record(out) for t in by_cell[c.id]]})
    aggregate(rows)
    cmd = ["clustkit", "bench"] + ([str(source)] if source else [])
    for g in grid:
        cmd += ["--grid", g]
    if seeds:
        cmd += ["--seeds", seeds]
    for s in set_:
        cmd += ["--set", s]
    cmd += ["--out", str(out)]
    if jobs is not None and (jobs > 1 or choice.name != "local"):
        cmd += ["--jobs", str(jobs)]
    if threads != 1:
        cmd += ["--threads", str(threads)]
    if in_process:
        cmd.append("--in-process")
    if executor:
        cmd += ["--executor", executor]
    for o in executor_option:
        cmd += ["--executor-option", o]
    devices = sorted({str((t.summary or {}).get("device")) for t in tasks if t.summary})
    meta = {
        "name": plan.name, "description": plan.description, "source": plan.source, "seeds": plan.seeds,
        "command": shlex.join(cmd), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": {"platform": platform.platform(terse=True), "machine": platform.machine(),
                 "cpu_count": os.cpu_count(), "python": platform.python_version(), "clustkit": __version__},
        "devices": devices, "mode": "in-process" if in_process else "subprocess",
        "jobs": (jobs or 1) if choice.name == "local" else jobs, "threads": threads, "executor": choice.to_json(),
        "plan": plan.to_json(),
    }
    return rows, meta
