"""``--executor slurm``: the bench's runs as one Slurm job array, submitted and watched through submitit.

Each job runs ``remote.run_remote`` (the local executor's child command, in the same run folder), so the
bench folder must be on a filesystem the compute nodes share. submitit keeps its pickles and the jobs'
logs in ``<bench>/slurm``. ``cluster = "local"`` sends the same jobs to submitit's local executor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clustkit.bench.executor_settings import SlurmSettings
from clustkit.bench.remote import Remote, run_remote
from clustkit.bench.tasks import RunTask
from clustkit.errors import UserError

SBATCH = "sbatch.sh"  # what --dry-run writes in <bench>/slurm


def parameters(s: SlurmSettings, name: str, jobs: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """submitit's shared parameters (AutoExecutor's names) and the Slurm-only ones (SlurmExecutor's names)."""
    shared = {"name": name, "timeout_min": s.timeout_min, "mem_gb": s.mem_gb, "gpus_per_node": s.gpus_per_node,
              "cpus_per_task": s.cpus_per_task}
    slurm = {"partition": s.partition, "account": s.account, "qos": s.qos, "constraint": s.constraint,
             "array_parallelism": s.array_parallelism or jobs, "additional_parameters": s.additional_parameters or None}
    return ({k: v for k, v in shared.items() if v is not None}, {k: v for k, v in slurm.items() if v is not None})


def sbatch_script(s: SlurmSettings, folder: Path, n_runs: int, name: str, jobs: int | None = None) -> str:
    """The sbatch file submitit would submit for ``n_runs`` runs (an array when there are several), rendered
    by submitit's own SlurmExecutor without submitting anything, so that it can be checked anywhere."""
    from submitit.slurm.slurm import SlurmExecutor

    class _Render(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:  # SlurmExecutor refuses to exist where srun is missing; rendering needs no srun
            return 2

    ex = _Render(folder)
    shared, slurm = parameters(s, name, jobs)
    ex.update_parameters(**ex._convert_parameters(shared), **slurm)  # as AutoExecutor translates them
    if n_runs > 1:
        ex.parameters["map_count"] = n_runs  # as SlurmExecutor does for an array
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")


def run_jobs(todo: list[RunTask], s: SlurmSettings, folder: Path, remote: Remote, name: str, jobs: int | None,
             report: Callable[[RunTask], None], note: Callable[[str], None]) -> None:
    """Submit ``todo`` as one array, record each run's outcome as its job ends; Ctrl-C cancels the rest."""
    import submitit
    from submitit.core.utils import UncompletedJobError
    from submitit.helpers import as_completed

    from clustkit.bench.execute import error_from_output

    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=s.cluster)
    except RuntimeError as exc:  # SlurmExecutor: 'Could not detect "srun"'
        raise UserError(f"--executor slurm: no Slurm on this machine ({exc}); run the bench on a login node, or set "
                        f"cluster = \"local\" in [bench.slurm] (--executor-option cluster=local) to try the jobs "
                        f"here.") from None
    shared, slurm = parameters(s, name, jobs)
    ex.update_parameters(**shared, **{f"slurm_{k}": v for k, v in slurm.items()})
    try:
        submitted = ex.map_array(run_remote, [remote] * len(todo), todo)
    except Exception as exc:  # sbatch refused the array (unknown partition or account, over a limit): its stderr
        raise UserError(f"--executor slurm: submitting {len(todo)} job(s) failed: "
                        f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
    ids = sorted({j.job_id.split("_")[0] for j in submitted})
    note(f"submitted {len(submitted)} job(s) to {s.cluster} through submitit (job {', '.join(ids)}); "
         f"logs in {folder}")
    task_of = {id(j): t for j, t in zip(submitted, todo)}
    try:
        for job in as_completed(submitted, poll_frequency=1 if s.cluster == "local" else 15):
            t = task_of[id(job)]
            try:
                t.adopt(job.result())
            except UncompletedJobError:  # killed: time limit, memory, node failure, scancel
                t.status = "failed"
                t.error = f"job {job.job_id} ended without a result (state {job.state}); see {job.paths.stderr}"
            except Exception as exc:  # the job's own exception, with its traceback
                t.status, t.error = "failed", f"job {job.job_id}: {error_from_output(str(exc), type(exc).__name__)}"
            report(t)
    except KeyboardInterrupt:
        for job in submitted:
            if not job.done():
                job.cancel(check=False)
        raise
