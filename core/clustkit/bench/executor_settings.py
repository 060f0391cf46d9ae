"""Where a bench's runs execute, and how: ``local`` (child processes of the bench, or ``--in-process``),
``slurm`` (a job array through submitit) or ``ray`` (Ray tasks), with the settings of the last two.

The settings come from a bench file's ``[bench.slurm]`` / ``[bench.ray]`` tables and from
``--executor-option KEY=VALUE``; both are validated by the models below (unknown keys are errors that
list the allowed ones, like every other key of a bench file). Pydantic and the standard library only:
submitit and Ray are imported by ``slurm_jobs`` / ``ray_tasks``, and only when chosen.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clustkit.bench.errors import BenchFileError
from clustkit.errors import RecipeError, UserError

if TYPE_CHECKING:
    from clustkit.bench.plan import Plan

EXECUTORS = ["local", "slurm", "ray"]
ExecutorName = Literal["local", "slurm", "ray"]
OPTION = "--executor-option"


class _Settings(BaseModel):
    # coerce_numbers_to_str: `--executor-option account=1234` reads 1234 as TOML, an integer
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class SlurmSettings(_Settings):
    """``[bench.slurm]``: the job array's sbatch parameters (submitit's names; ``cluster = "local"`` runs the
    same jobs through submitit's local executor, on this machine, for tests and trials)."""

    cluster: Literal["slurm", "local"] = Field("slurm", description="slurm: sbatch; local: submitit's local executor")
    partition: str | None = None
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int = Field(60, ge=1, description="each job's time limit (sbatch --time), minutes")
    array_parallelism: int | None = Field(None, ge=1, description="jobs of the array running at once (default: "
                                          "--jobs, else submitit's 256)")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    additional_parameters: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description="any other sbatch option, e.g. {mail-type = \"END\"}")


class RaySettings(_Settings):
    """``[bench.ray]``: the cluster to use and each run's resource request."""

    address: str | None = Field(None, description="auto, HOST:PORT or ray://HOST:PORT; none: a Ray started "
                                "for the bench on this machine (loopback only)")
    num_cpus: float = Field(1, ge=0, description="CPUs each run reserves")
    num_gpus: float = Field(0, ge=0, description="GPUs each run reserves (fractions share a GPU)")


SETTINGS: dict[str, type[_Settings]] = {"slurm": SlurmSettings, "ray": RaySettings}
PACKAGES = {"slurm": ("submitit", "submitit"), "ray": ("ray", "Ray")}  # executor -> (module, name)


@dataclass
class ExecutorChoice:
    """The executor of this invocation and its validated settings (None for local); ``given`` is what the
    bench file and the command line set, as saved in plan.json so that ``bench --out DIR`` reuses it."""

    name: str
    settings: SlurmSettings | RaySettings | None
    given: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "settings": self.settings.model_dump() if self.settings else {}}


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_options(texts: list[str]) -> dict[str, Any]:
    """``--executor-option KEY=VALUE`` (repeatable): values are TOML, bare words strings, dotted keys nest
    (``additional_parameters.mail-type=END``)."""
    from clustkit.recipe.loading import apply_overrides

    for text in texts:
        key, sep, _ = text.partition("=")
        if not sep or not key.strip():
            raise BenchFileError(OPTION, key.strip() or None, f"expects KEY=VALUE (e.g. partition=gpu), got {text!r}.")
    try:
        return apply_overrides({}, texts, OPTION)
    except RecipeError as exc:
        raise BenchFileError(OPTION, exc.key, exc.message) from None


def choose_executor(plan: Plan, name: str | None, options: list[str]) -> ExecutorChoice:
    """``--executor`` (else the bench file's ``executor``, else local) with the file's settings for it and
    ``--executor-option`` on top, validated; raises BenchFileError naming the option and the allowed values."""
    from clustkit.recipe.errors import validation_error

    if name is not None and name not in EXECUTORS:
        raise BenchFileError("--executor", None, f"{name!r} is not a valid choice.", EXECUTORS)
    chosen = name or plan.executor or "local"
    given = parse_options(options)
    if chosen == "local":
        if given:
            raise BenchFileError(OPTION, next(iter(given)), "the local executor takes no options: "
                                 "--executor-option sets --executor slurm or ray.")
        return ExecutorChoice("local", None, {})
    model = SETTINGS[chosen]
    try:
        model.model_validate(given)  # first alone: an error names the option, not the bench file
    except ValidationError as exc:
        raise validation_error(OPTION, exc, model, error=BenchFileError) from None
    merged = _merge(plan.executor_options.get(chosen, {}), given)
    return ExecutorChoice(chosen, model.model_validate(merged), merged)  # type: ignore[arg-type]


def require(executor: str) -> None:
    """Fail before anything runs when the executor's package is not installed (found, not imported: Ray's
    import alone takes seconds)."""
    module, label = PACKAGES[executor]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"--executor {executor} needs {label}: pip install 'clustkit[{executor}]'")
