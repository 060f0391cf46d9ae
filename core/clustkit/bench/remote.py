"""The function a Slurm job or a Ray task runs for one (cell, seed): the local executor's ``Executor.run``
(the same child command, ``execute.CHILD``, run folder, bench.log and resources.json), in the folder the bench
was started from, so that a bench gives the same run folders and numbers wherever its runs execute."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from clustkit.bench.tasks import RunTask


@dataclass(frozen=True)
class Remote:
    """What a run needs on another machine (pickled with each job or task)."""

    cwd: str  # relative paths (--out, recipes, data roots in overrides) are relative to it
    threads: int
    timeout: float | None
    env: dict[str, str] = field(default_factory=dict)  # the submitting shell's CLUSTKIT_* variables

    @classmethod
    def here(cls, threads: int, timeout: float | None) -> Remote:
        return cls(os.getcwd(), threads, timeout, {k: v for k, v in os.environ.items() if k.startswith("CLUSTKIT_")})


def run_remote(remote: Remote, t: RunTask) -> RunTask:
    """Run ``t`` as the local executor does and return it with its outcome (``RunTask.adopt`` takes it back).

    The job or worker process is this run's alone for its duration (a Slurm job; a Ray worker runs one task
    at a time), so changing its working directory is safe."""
    from clustkit.bench.execute import Executor

    try:
        os.chdir(remote.cwd)
    except OSError as exc:
        t.status = "failed"
        t.error = (f"{socket.gethostname()} cannot enter the bench's folder {remote.cwd} ({exc.strerror}): the bench "
                   f"must be on a filesystem shared with the compute nodes.")
        return t
    return Executor(remote.threads, remote.timeout, in_process=False, env=remote.env).run(t)
