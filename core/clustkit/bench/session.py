"""One bench invocation as a library: its plan and the state of each run (``prepare``), the runs executed
(``Bench.run``: child processes, in-process, Slurm or Ray) and the results written (``Bench.results``).

It prints nothing: whoever drives it (``clustkit bench``, in ``clustkit.cli.bench``) is told of each run's end
and of the executors' notes through callbacks, and shows the plan and the tables itself."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clustkit.errors import UserError

if TYPE_CHECKING:  # pydantic and the engine's helpers are imported only when a bench is prepared
    from clustkit.bench.execute import Executor
    from clustkit.bench.executor_settings import ExecutorChoice
    from clustkit.bench.plan import Cell, Plan
    from clustkit.bench.tasks import RunTask

PLAN_FILE = "plan.json"
Report = Callable[["RunTask"], None]  # told of each run as it ends
Note = Callable[[str], None]  # told what an executor is doing (plain text)


@dataclass
class BenchOptions:
    """What one bench invocation is asked for (``clustkit bench``'s arguments, docs/bench.md)."""

    source: str | Path | None = None  # bench file, recipe file or shipped recipe; None: continue ``out``
    grid: list[str] = field(default_factory=list)
    seeds: str | None = None
    out: Path | None = None
    jobs: int | None = None
    overrides: list[str] = field(default_factory=list)  # --set
    only: list[str] = field(default_factory=list)
    threads: int = 1  # torch CPU threads per run; 0: PyTorch's default
    timeout: float | None = None
    in_process: bool = False
    executor: str | None = None
    executor_options: list[str] = field(default_factory=list)


@dataclass
class Bench:
    """A prepared bench: its plan, where its runs execute, and every run (cell × seed) with its state."""

    options: BenchOptions
    plan: Plan
    choice: ExecutorChoice
    out: Path
    cells: list[Cell]  # every cell of the plan
    chosen: list[Cell]  # those --only selects
    tasks: list[RunTask]
    executor: Executor

    @property
    def todo(self) -> list[RunTask]:
        return [t for t in self.tasks if t.status in ("todo", "resume")]

    def save_plan(self) -> None:
        """Write OUT/plan.json, with the executor and its settings: ``bench --out DIR`` continues the same way."""
        from clustkit.atomic import atomic_write

        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write(self.out / PLAN_FILE, json.dumps(self.plan.to_json(), indent=2) + "\n")

    def sbatch(self) -> tuple[Path, str] | None:
        """``--executor slurm``: write the job array's sbatch script of the runs to do, submitting nothing;
        its path and text (None when every selected run is done or invalid)."""
        from clustkit.atomic import atomic_write
        from clustkit.bench.executor_settings import SlurmSettings
        from clustkit.bench.slurm_jobs import SBATCH, sbatch_script

        assert isinstance(self.choice.settings, SlurmSettings)
        n_runs = len(self.todo)
        if not n_runs:
            return None
        folder = self.out / "slurm"
        text = sbatch_script(self.choice.settings, folder, n_runs, f"bench-{self.plan.name}", self.options.jobs)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / SBATCH, text)
        return folder / SBATCH, text

    def run(self, report: Report, note: Note) -> bool:
        """Run the runs to do, calling ``report`` as each ends; True when interrupted (Ctrl-C: the finished runs
        are kept, the others are left pending for the next invocation)."""
        todo = self.todo
        o = self.options
        interrupted = False
        try:
            if o.in_process:  # in the main thread: the run's output is redirected to its bench.log meanwhile
                _warm_up()
                for t in todo:
                    report(self.executor.run(t))
            elif self.choice.name == "local":
                _run_pool(self.executor, todo, o.jobs or 1, report)
            else:
                self._run_elsewhere(todo, report, note)
        except KeyboardInterrupt:
            interrupted = True
        for t in todo:
            if t.status in ("todo", "resume"):
                t.status = "pending"
        return interrupted

    def _run_elsewhere(self, todo: list[RunTask], report: Report, note: Note) -> None:
        """Each run as the local executor runs it (``remote.run_remote``), in a Slurm job or a Ray task."""
        from clustkit.bench.remote import Remote

        o = self.options
        remote = Remote.here(o.threads, o.timeout)
        if self.choice.name == "slurm":
            from clustkit.bench.executor_settings import SlurmSettings
            from clustkit.bench.slurm_jobs import run_jobs

            assert isinstance(self.choice.settings, SlurmSettings)
            run_jobs(todo, self.choice.settings, self.out / "slurm", remote, f"bench-{self.plan.name}", o.jobs,
                     report, note)
        else:
            from clustkit.bench.executor_settings import RaySettings
            from clustkit.bench.ray_tasks import run_tasks

            assert isinstance(self.choice.settings, RaySettings)
            run_tasks(todo, self.choice.settings, remote, o.jobs, report, note)

    def results(self, command: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Aggregate every cell's runs and write results.{csv,json,md,png} and runs.csv; the cells and the bench's
        metadata (``command``: the command line that repeats this invocation)."""
        from clustkit import __version__
        from clustkit.bench.report import aggregate, write_all
        from clustkit.plugin_system.manager import get_plugins

        o = self.options
        current = {n: i.version for n, i in get_plugins().info.items()}
        by_cell: dict[str, list[RunTask]] = {}
        for t in self.tasks:
            by_cell.setdefault(t.cell.id, []).append(t)
        rows = []
        for c in self.cells:
            rows.append({"id": c.id, "recipe": str(c.recipe.path), "recipe_label": c.recipe.label, "axes": c.axes,
                         "overrides": c.overrides, "plugins": dict(current), "published": c.recipe.published,
                         "runs": [t.record(self.out) for t in by_cell[c.id]]})
        aggregate(rows)
        devices = sorted({str((t.summary or {}).get("device")) for t in self.tasks if t.summary})
        local = self.choice.name == "local"
        meta = {
            "name": self.plan.name, "description": self.plan.description, "source": self.plan.source,
            "seeds": self.plan.seeds, "command": command, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "host": {"platform": platform.platform(terse=True), "machine": platform.machine(),
                     "cpu_count": os.cpu_count(), "python": platform.python_version(), "clustkit": __version__},
            "devices": devices, "mode": "in-process" if o.in_process else "subprocess",
            "jobs": (o.jobs or 1) if local else o.jobs, "threads": o.threads, "executor": self.choice.to_json(),
            "plan": self.plan.to_json(),
        }
        write_all(self.out, meta, rows, [a.name for a in self.plan.axes])
        return rows, meta


def prepare(o: BenchOptions) -> Bench:
    """The plan of ``o`` (a new one, or the one saved in ``o.out``), its executor, and the state of every run;
    raises UserError (a BenchFileError names the file and key) before anything runs."""
    from clustkit.bench.errors import BenchFileError
    from clustkit.bench.execute import Executor
    from clustkit.bench.executor_settings import choose_executor, require
    from clustkit.bench.plan import build_plan, read_plan, select
    from clustkit.bench.tasks import plan_tasks

    if o.in_process and (o.jobs or 1) > 1:
        raise UserError("--in-process runs one run at a time; drop --jobs or --in-process.")
    if o.source is None:
        if o.out is None or not (o.out / PLAN_FILE).exists():
            raise UserError("give a bench file or a recipe, or --out of an existing bench folder (with plan.json) "
                            "to continue it.")
        if o.grid or o.overrides or o.seeds:
            raise UserError("--grid, --set and --seeds need a bench file or recipe; to continue the bench in "
                            f"{o.out} give only --out.")
        plan = read_plan(o.out / PLAN_FILE)
    else:
        from clustkit.recipe import resolve_recipe

        plan = build_plan(resolve_recipe(o.source), o.grid, o.seeds, o.overrides)
    choice = choose_executor(plan, o.executor, o.executor_options)
    if choice.name != "local":
        if o.in_process:
            raise UserError(f"--in-process runs in the bench's own process, not on {choice.name}: drop it, or "
                            f"pass --executor local.")
        require(choice.name)
    plan.executor = choice.name  # saved in plan.json, with the settings: `bench --out DIR` continues the same way
    if choice.given:
        plan.executor_options[choice.name] = choice.given
    out = o.out or Path("runs") / f"bench-{plan.name}"
    for i, r in enumerate(plan.recipes):
        if not r.path.is_file():
            raise BenchFileError(plan.source, f"bench.recipes[{i}]", f"recipe {str(r.path)!r} not found.")
    cells = plan.cells()
    chosen = select(cells, o.only)
    tasks = plan_tasks(plan, cells, {c.id for c in chosen}, out)
    executor = Executor(o.threads, o.timeout, o.in_process)
    for t in tasks:
        t.command = executor.command(t)
    return Bench(o, plan, choice, out, cells, chosen, tasks, executor)


def _run_pool(ex: Executor, todo: list[RunTask], jobs: int, report: Report) -> None:
    pool = cf.ThreadPoolExecutor(max_workers=jobs)
    futures = [pool.submit(ex.run, t) for t in todo]
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


def _warm_up() -> None:
    """Pay one-time lazy imports (torch, the optimizers' torch._dynamo) before the first in-process run,
    so that its wall_s is comparable with the next ones'."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
