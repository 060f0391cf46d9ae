"""``clustkit bench``: run recipes × override axes × seeds, each as a normal run folder, and tabulate.

    clustkit bench recipes/cc.toml --grid losses.cluster.weight=1,0 --seeds 0,1 --out runs/abl
    clustkit bench benchmarks/ablations/cc.toml --jobs 2

Every (cell, seed) is the run ``clustkit run RECIPE --out DIR/<cell>/seed<k> --set ... --set run.seed=k``.
By default each run is a child process (``--jobs N`` runs N at a time); the child reports its own
peak RSS in ``resources.json``. A run whose ``summary.json`` exists is reused, one with only a
checkpoint is resumed, a failed one is recorded and retried by the next invocation. See docs/bench.md.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from clustkit.errors import RecipeError, UserError

if TYPE_CHECKING:  # the command imports pydantic (via benchfile) only when it runs, to keep --help fast
    from clustkit.benchfile import Cell, Plan

PLAN_FILE = "plan.json"
SUMMARY = "summary.json"
RESOURCES = "resources.json"
LOG = "bench.log"
CHECKPOINT = Path("checkpoints") / "last.pt"
_CHILD = "from clustkit.bench import _child_main; _child_main()"


@dataclass
class RunTask:
    cell: Cell
    seed: int
    dir: Path
    status: str = "pending"  # pending -> todo/resume -> done/resumed/failed; or cached
    error: str | None = None
    selected: bool = True
    command: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None

    @property
    def resume(self) -> bool:
        return self.status == "resume"

    def record(self, out: Path) -> dict[str, Any]:
        return {"seed": self.seed, "status": self.status, "dir": str(self.dir.relative_to(out)), "error": self.error,
                "command": shlex.join(self.command) if self.command else None,
                "summary": self.summary, "resources": self.resources}


# --- the child process ---------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    import resource

    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # data-loader workers
    return max(own, kids) / scale


def _gpu_peak_mb() -> float | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20


def _child_main() -> None:
    """``python -c _CHILD RESOURCES_JSON run RECIPE ...``: run the CLI, then report this process's peak memory."""
    resources_path = Path(sys.argv[1])
    args = sys.argv[2:]
    t0 = time.perf_counter()
    threads = int(os.environ.get("CLUSTKIT_BENCH_THREADS", "0") or 0)
    code: int = 1
    try:
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        from clustkit.cli import main

        sys.argv = ["clustkit", *args]
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        info = {"peak_rss_mb": round(_peak_rss_mb(), 1), "peak_gpu_mb": _gpu_peak_mb(), "exit_code": code,
                "process_wall_s": round(time.perf_counter() - t0, 3), "threads": threads or None,
                "mode": "subprocess", "peak_rss_scope": "run process"}
        if info["peak_gpu_mb"] is not None:
            info["peak_gpu_mb"] = round(info["peak_gpu_mb"], 1)
        resources_path.parent.mkdir(parents=True, exist_ok=True)
        resources_path.write_text(json.dumps(info, indent=2) + "\n")
    sys.exit(code)


# --- running one task ---------------------------------------------------------------------------------


def _error_from_log(log: Path, code: int) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln[len("error:"):].strip()
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~", "#")) and ("Error" in ln or "Exception" in ln):
            return ln
    return f"exit code {code}" + (f"; last output: {lines[-1]}" if lines else "")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        env["CLUSTKIT_BENCH_THREADS"] = str(threads)
    return env


class Executor:
    """Runs tasks as child processes (any number at a time) or in this process (one at a time)."""

    def __init__(self, threads: int, timeout: float | None, in_process: bool):
        self.threads = threads
        self.timeout = timeout
        self.in_process = in_process
        self.procs: set[subprocess.Popen[bytes]] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def command(self, t: RunTask) -> list[str]:
        cmd = ["clustkit", "run", str(t.cell.recipe.path), "--out", str(t.dir)]
        for o in t.cell.run_overrides(t.seed):
            cmd += ["--set", o]
        if t.resume:
            cmd.append("--resume")
        return cmd

    def run(self, t: RunTask) -> RunTask:
        resume = t.resume
        t.dir.mkdir(parents=True, exist_ok=True)
        log = t.dir / LOG
        (t.dir / RESOURCES).unlink(missing_ok=True)
        with log.open("a") as fh:
            fh.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(t.command)}\n")
        try:
            if self.in_process:
                self._in_process(t, log, resume)
            else:
                self._subprocess(t, log)
        except KeyboardInterrupt:
            t.status = "pending"
            if self.in_process:
                raise
            return t
        except Exception as exc:  # never lose the other runs to one run's problem
            t.status, t.error = "failed", f"{type(exc).__name__}: {exc}"
            return t
        t.resources = _read_json(t.dir / RESOURCES)
        t.summary = _read_json(t.dir / SUMMARY) if t.status != "failed" else None
        if self.stopping and t.summary is None:  # stopped by Ctrl-C: not a failure, the next invocation resumes it
            t.status, t.error = "pending", None
        elif t.status != "failed":
            t.status = "resumed" if resume else "done"
        return t

    def _subprocess(self, t: RunTask, log: Path) -> None:
        if self.stopping:
            raise KeyboardInterrupt
        argv = [sys.executable, "-c", _CHILD, str(t.dir / RESOURCES), *t.command[1:]]
        with log.open("ab") as fh:
            with self.lock:
                if self.stopping:
                    t.status = "pending"
                    return
                proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=_child_env(self.threads))
                self.procs.add(proc)
            try:
                code = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                t.status, t.error = "failed", f"timed out after {self.timeout:g} s (--timeout)"
                return
            finally:
                with self.lock:
                    self.procs.discard(proc)
        if code != 0 or not (t.dir / SUMMARY).exists():
            t.status, t.error = "failed", _error_from_log(log, code)

    def _in_process(self, t: RunTask, log: Path, resume: bool) -> None:
        import contextlib

        import torch

        from clustkit import recipe as recipe_mod
        from clustkit.engine.runner import Run
        from clustkit.plugins import get_plugins

        plugins = get_plugins()
        loaded = recipe_mod.load(t.cell.recipe.path, plugins.registry, t.cell.run_overrides(t.seed),
                                 installed_plugins=list(plugins.info))
        threads_before = torch.get_num_threads()
        deterministic_before = torch.are_deterministic_algorithms_enabled()
        rss_reset = _reset_peak_rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            if self.threads > 0:
                torch.set_num_threads(self.threads)
            with log.open("a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                try:
                    Run(loaded, plugins, t.dir).execute(resume=resume)
                except UserError as exc:
                    print(f"error: {exc}")
                    t.status, t.error = "failed", str(exc)
                except Exception as exc:
                    traceback.print_exc()
                    t.status, t.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            torch.set_num_threads(threads_before)
            torch.use_deterministic_algorithms(deterministic_before)
        info = {"peak_rss_mb": round(_vm_hwm_mb() if rss_reset else _peak_rss_mb(), 1), "peak_gpu_mb": _gpu_peak_mb(),
                "exit_code": 0 if t.status != "failed" else 1, "process_wall_s": round(time.perf_counter() - t0, 3),
                "threads": self.threads or None, "mode": "in-process",
                "peak_rss_scope": "run process, peak reset before the run" if rss_reset else
                "bench process so far (peak RSS could not be reset)"}
        if info["peak_gpu_mb"] is not None:
            info["peak_gpu_mb"] = round(info["peak_gpu_mb"], 1)
        (t.dir / RESOURCES).write_text(json.dumps(info, indent=2) + "\n")

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for p in self.procs:
                if p.poll() is None:
                    p.terminate()


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _vm_hwm_mb() > 0
    except OSError:
        return False


def _vm_hwm_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- planning ------------------------------------------------------------------------------------------


def _unexpanded(data: Any, prefix: str = "") -> tuple[str, str] | None:
    """The first string value still holding ``$VAR`` after expansion (an unset environment variable)."""
    import re

    if isinstance(data, dict):
        for k, v in data.items():
            hit = _unexpanded(v, f"{prefix}{k}.")
            if hit:
                return hit
    elif isinstance(data, list):
        for i, v in enumerate(data):
            hit = _unexpanded(v, f"{prefix[:-1]}[{i}].")
            if hit:
                return hit
    elif isinstance(data, str):
        m = re.search(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", data)
        if m:
            return prefix[:-1], m.group(1)
    return None


def _resolved(cell: Cell, seed: int, plugins: Any) -> dict[str, Any]:
    """The fully resolved recipe of one run, as written to its recipe.toml (raises UserError)."""
    from clustkit import recipe as recipe_mod

    loaded = recipe_mod.load(cell.recipe.path, plugins.registry, cell.run_overrides(seed),
                             installed_plugins=list(plugins.info))
    data = tomllib.loads(recipe_mod.dumps(loaded))
    hit = _unexpanded(data)
    if hit:
        raise RecipeError(str(cell.recipe.path), hit[0], f"uses ${hit[1]}, which is not set in the environment "
                          f"(export {hit[1]}=... before the bench).")
    return data


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return prefix[:-1] or "(root)"


def plan_tasks(plan: Plan, cells: list[Cell], selected: set[str], out: Path) -> list[RunTask]:
    """One task per (cell, seed) with its state: cached, resume, todo, failed (invalid) or pending (not selected)."""
    from clustkit.plugins import get_plugins

    plugins = get_plugins()
    tasks: list[RunTask] = []
    for cell in cells:
        for seed in plan.seeds:
            t = RunTask(cell, seed, out / cell.id / f"seed{seed}", selected=cell.id in selected)
            tasks.append(t)
            done = (t.dir / SUMMARY).exists()
            if not t.selected:
                t.status = "cached" if done else "pending"
                continue
            try:
                want = _resolved(cell, seed, plugins)
            except UserError as exc:
                t.status, t.error = "failed", str(exc)
                continue
            if done:
                try:
                    have = tomllib.loads((t.dir / "recipe.toml").read_text())
                except (OSError, tomllib.TOMLDecodeError):
                    have = None
                if have is not None and have != want:
                    t.status = "failed"
                    t.error = (f"{t.dir} holds a finished run of a different recipe (first difference at "
                               f"'{_first_difference(have, want)}'); delete that folder or use another --out.")
                else:
                    t.status = "cached"
            else:
                t.status = "resume" if (t.dir / CHECKPOINT).exists() else "todo"
    for t in tasks:
        if t.status in ("cached",):
            t.summary = _read_json(t.dir / SUMMARY)
            t.resources = _read_json(t.dir / RESOURCES)
    return tasks


# --- the command ---------------------------------------------------------------------------------------


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

    from clustkit.benchreport import METRICS, fmt, runs_text

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
    source: Optional[Path] = typer.Argument(
        None, metavar="BENCH_OR_RECIPE", show_default=False, help="Bench file (a TOML with a \\[bench] table) or a recipe. Omit it to continue the bench in --out."),
    grid: list[str] = typer.Option(
        [], "--grid", "-g", help="An axis: --grid losses.cluster.weight=1,0 (repeatable, one axis each; values are TOML)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds (default: the bench file's, else 0,1,2)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bench folder (default: runs/bench-<name>)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Runs at a time, each in its own process."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a key in every cell: --set run.epochs=20 (repeatable)."),
    only: list[str] = typer.Option([], "--only", help="Run only cells whose id matches this glob (repeatable)."),
    threads: int = typer.Option(1, "--threads", min=0,
                                help="Torch CPU threads per run (0: PyTorch's default). Fixed, so results do not depend on --jobs."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=1, help="Seconds a run may take before it is stopped and failed."),
    in_process: bool = typer.Option(False, "--in-process", help="Run in this process, one at a time (no start-up cost per run; for tiny runs)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cells, runs and their state; run nothing."),
) -> None:
    """Run recipes × override axes × seeds; tabulate mean ± std per cell (results.csv/json/md, results.png)."""
    try:
        code = _bench(source, grid, seeds, out, jobs, set_, only, threads, timeout, in_process, dry_run)
    except UserError as exc:
        from clustkit.cli import fail

        fail(exc)
        return
    if code:
        raise typer.Exit(code)


def _bench(source: Path | None, grid: list[str], seeds: str | None, out: Path | None, jobs: int, set_: list[str],
           only: list[str], threads: int, timeout: float | None, in_process: bool, dry_run: bool) -> int:
    from clustkit.benchfile import BenchFileError, build_plan, read_plan, select

    if in_process and jobs > 1:
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
        plan = build_plan(source, grid, seeds, set_)
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
        return _show_plan(console, plan, tasks, out)
    out.mkdir(parents=True, exist_ok=True)
    from clustkit.benchreport import atomic_write_text

    atomic_write_text(out / PLAN_FILE, json.dumps(plan.to_json(), indent=2) + "\n")
    n_cached = sum(t.status == "cached" and t.selected for t in tasks)
    n_invalid = sum(t.status == "failed" for t in tasks)
    err.print(f"bench [bold]{plan.name}[/bold]: {len(chosen)} cell(s) × {len(plan.seeds)} seed(s) -> {out}; "
              f"{len(todo)} to run, {n_cached} already done, {n_invalid} invalid"
              + (f", jobs {jobs}" if not in_process else ", in-process"))
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
            else:
                _run_pool(ex, todo, jobs, err)
        except KeyboardInterrupt:
            interrupted = True
            err.print("[yellow]interrupted: finished runs are kept; run the same command again to resume.[/yellow]")
        for t in todo:
            if t.status in ("todo", "resume"):
                t.status = "pending"
    cells, meta = _collect(plan, all_cells, tasks, out, source, grid, seeds, set_, jobs, threads, in_process)
    from clustkit.benchreport import write_all

    write_all(out, meta, cells, [a.name for a in plan.axes])
    console.print(_table(meta, cells))
    n_failed = sum(c["n_failed"] for c in cells)
    console.print(f"results in {out}/results.{{csv,json,md,png}} ({time.perf_counter() - started:.0f} s)"
                  + (f"; [red]{n_failed} run(s) failed[/red] (see results.md; the next invocation retries them)"
                     if n_failed else ""))
    if interrupted:
        return 130
    return 1 if n_failed else 0


def _run_pool(ex: Executor, todo: list[RunTask], jobs: int, err: Any) -> None:
    pool = cf.ThreadPoolExecutor(max_workers=jobs)
    futures = [pool.submit(ex.run, t) for t in todo]
    try:
        for i, fut in enumerate(cf.as_completed(futures), 1):
            err.print(_run_line(fut.result(), i, len(todo)))
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
             seeds: str | None, set_: list[str], jobs: int, threads: int, in_process: bool) -> tuple[list[dict], dict]:
    from clustkit import __version__
    from clustkit.benchreport import aggregate
    from clustkit.plugins import get_plugins

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
    if jobs > 1:
        cmd += ["--jobs", str(jobs)]
    if threads != 1:
        cmd += ["--threads", str(threads)]
    if in_process:
        cmd.append("--in-process")
    devices = sorted({str((t.summary or {}).get("device")) for t in tasks if t.summary})
    meta = {
        "name": plan.name, "description": plan.description, "source": plan.source, "seeds": plan.seeds,
        "command": shlex.join(cmd), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": {"platform": platform.platform(terse=True), "machine": platform.machine(),
                 "cpu_count": os.cpu_count(), "python": platform.python_version(), "clustkit": __version__},
        "devices": devices, "mode": "in-process" if in_process else "subprocess", "jobs": jobs,
        "threads": threads, "plan": plan.to_json(),
    }
    return rows, meta
