"""``--executor ray``: the bench's runs as Ray tasks, each reserving ``num_cpus``/``num_gpus`` and running
``remote.run_remote`` (the local executor's child command, in the same run folder).

With ``address`` the tasks go to that cluster (its nodes must share the bench folder); without it a Ray is
started on this machine for the bench, bound to the loopback interface, and stopped afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from clustkit.bench.executor_settings import RaySettings
from clustkit.bench.remote import Remote, run_remote
from clustkit.bench.tasks import RunTask
from clustkit.errors import UserError

CANCEL_WAIT_S = 60  # after Ctrl-C: how long cancelled runs get to stop their child processes


def _start(s: RaySettings) -> Any:
    if s.address is None and "ray" not in sys.modules:
        # Ray advertises and binds its services on this node's IP unless it is told that it is not a
        # cluster (the switch Ray uses on macOS and Windows); read when ray is imported, inherited by its daemons.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():  # a caller's Ray (a notebook, a test): use it, leave it running
        return ray, False
    try:
        if s.address:
            ray.init(address=s.address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {s.address}" if s.address else "a local Ray"
        raise UserError(f"--executor ray: could not start or reach {where}: {exc}") from None
    return ray, True


def _check_fits(ray: Any, s: RaySettings) -> None:
    total = ray.cluster_resources()
    for key, want in (("CPU", s.num_cpus), ("GPU", s.num_gpus)):
        if want > total.get(key, 0):  # Ray would wait for such a node forever
            raise UserError(f"--executor ray: each run asks for {want:g} {key}(s) (num_{key.lower()}s) but the local "
                            f"Ray has {total.get(key, 0):g}; lower num_{key.lower()}s or give address = a cluster.")


def _settle(ray: Any, ref: Any, t: RunTask) -> None:
    from clustkit.bench.execute import error_from_output

    try:
        t.adopt(ray.get(ref))
    except ray.exceptions.TaskCancelledError:
        t.status = "pending"
    except ray.exceptions.RayError as exc:  # the worker died, or the task raised
        t.status, t.error = "failed", f"Ray task: {error_from_output(str(exc), type(exc).__name__)}"


def run_tasks(todo: list[RunTask], s: RaySettings, remote: Remote, jobs: int | None,
              report: Callable[[RunTask], None], note: Callable[[str], None]) -> None:
    """Run ``todo`` with at most ``jobs`` in flight (else as many as the cluster's resources allow), recording
    each outcome as it ends; Ctrl-C cancels the outstanding tasks and keeps the finished runs."""
    ray, own = _start(s)
    try:
        if own and s.address is None:
            _check_fits(ray, s)
        # max_retries=0: a retry would rerun a half-done run from scratch over its checkpoint; the next
        # invocation resumes it instead.
        fn = ray.remote(run_remote)
        note(f"running {len(todo)} run(s) as Ray tasks on {s.address or 'a Ray started for this bench'} "
             f"({s.num_cpus:g} CPU, {s.num_gpus:g} GPU each" + (f", {jobs} at a time)" if jobs else ")"))
        queue = list(todo)
        pending: dict[Any, RunTask] = {}
        try:
            while queue or pending:
                while queue and len(pending) < (jobs or len(todo)):
                    t = queue.pop(0)
                    ref = fn.options(num_cpus=s.num_cpus, num_gpus=s.num_gpus, max_retries=0,
                                     name=f"clustkit-bench {t.cell.id} seed{t.seed}").remote(remote, t)
                    pending[ref] = t
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    t = pending.pop(ref)
                    _settle(ray, ref, t)
                    report(t)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)  # a running task gets a KeyboardInterrupt and stops its run's process
            ended, _ = ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
            for ref in ended:  # finished meanwhile (kept), or cancelled (pending: the next invocation reruns it)
                _settle(ray, ref, pending[ref])
            raise
    finally:
        if own:
            ray.shutdown()
