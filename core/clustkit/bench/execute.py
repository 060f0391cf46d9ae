"""Running the runs of a bench: each ``clustkit run`` in a child process (several at a time) or in
this process (one at a time), with its log, peak memory and exit status recorded per run."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from clustkit.bench.resources import RESOURCES, THREADS_ENV, peak_rss_mb, reset_peak_rss, vm_hwm_mb, write_resources
from clustkit.bench.tasks import RunTask, read_json
from clustkit.engine.run_folder import SUMMARY
from clustkit.errors import UserError

LOG = "bench.log"
# The child process of one run: ``python -c CHILD RESOURCES_JSON run RECIPE ...`` (``clustkit.cli.bench_child``
# runs the CLI and writes resources.json). Named as text: the bench library never imports the CLI.
CHILD = "from clustkit.cli.bench_child import child_main; child_main()"


def _error_from_log(log: Path, code: int) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    return error_from_output(text, f"exit code {code}")


def error_from_output(text: str, fallback: str) -> str:
    """The line of a run's (or a job's) output that says what went wrong: the CLI's ``error:`` line, else the
    last exception line of a traceback, else ``fallback`` with the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln[len("error:"):].strip()
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~", "#")) and ("Error" in ln or "Exception" in ln):
            return ln
    return fallback + (f"; last output: {lines[-1]}" if lines else "")


def _child_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        env[THREADS_ENV] = str(threads)
    return env


class Executor:
    """Runs tasks as child processes (any number at a time) or in this process (one at a time).

    ``env``: variables set in the children on top of this process's environment (a Slurm job or Ray
    worker gets the submitting shell's ``CLUSTKIT_*`` variables this way, see ``bench.remote``)."""

    def __init__(self, threads: int, timeout: float | None, in_process: bool, env: dict[str, str] | None = None):
        self.threads = threads
        self.timeout = timeout
        self.in_process = in_process
        self.env = dict(env or {})
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
        except Exception as exc:
            t.status, t.error = "failed", f"{type(exc).__name__}: {exc}"
            return t
        t.resources = read_json(t.dir / RESOURCES)
        t.summary = read_json(t.dir / SUMMARY) if t.status != "failed" else None
        if self.stopping and t.summary is None:  # stopped by Ctrl-C: not a failure, the next invocation resumes it
            t.status, t.error = "pending", None
        elif t.status != "failed":
            t.status = "resumed" if resume else "done"
        return t

    def _subprocess(self, t: RunTask, log: Path) -> None:
        if self.stopping:
            raise KeyboardInterrupt
        argv = [sys.executable, "-c", CHILD, str(t.dir / RESOURCES), *t.command[1:]]
        with log.open("ab") as fh:
            with self.lock:
                if self.stopping:
                    t.status = "pending"
                    return
                proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                        env=_child_env(self.threads, self.env))
                self.procs.add(proc)
            try:
                code = _wait(proc, self.timeout)
            except subprocess.TimeoutExpired:
                _terminate(proc)
                t.status, t.error = "failed", f"timed out after {self.timeout:g} s (--timeout)"
                return
            except BaseException:  # interrupted (ray.cancel), or the job is ending (a Slurm job's signal handler
                _terminate(proc)   # exits): the run must not outlive it and race a later one in its folder
                raise
            finally:
                with self.lock:
                    self.procs.discard(proc)
        if code != 0 or not (t.dir / SUMMARY).exists():
            t.status, t.error = "failed", _error_from_log(log, code)

    def _in_process(self, t: RunTask, log: Path, resume: bool) -> None:
        import contextlib

        import torch

        from clustkit.engine.run import Run
        from clustkit.recipe import load_recipe

        loaded, plugins = load_recipe(t.cell.recipe.path, t.cell.run_overrides(t.seed))
        threads_before = torch.get_num_threads()
        deterministic_before = torch.are_deterministic_algorithms_enabled()
        rss_reset = reset_peak_rss()
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
        scope = "run process, peak reset before the run" if rss_reset else \
            "bench process so far (peak RSS could not be reset)"
        write_resources(t.dir / RESOURCES, vm_hwm_mb() if rss_reset else peak_rss_mb(),
                        0 if t.status != "failed" else 1, time.perf_counter() - t0, self.threads, "in-process", scope)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for p in self.procs:
                if p.poll() is None:
                    p.terminate()


def _wait(proc: subprocess.Popen[bytes], timeout: float | None) -> int:
    """``proc.wait(timeout)`` in slices of a second: a blocking wait would not see a KeyboardInterrupt that
    another thread raises in this one (Ray cancels a running task with ``_thread.interrupt_main``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
        try:
            return proc.wait(timeout=max(left, 0.0))
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
