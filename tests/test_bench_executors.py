"""``clustkit bench --executor slurm|ray``: the same runs, folders and numbers as the local executor.

The bench is recipes/cc.toml made tiny (test_bench.TINY: one epoch of digits, an 8-channel CNN), one cell
× seeds 0 and 1, run through the ``clustkit`` entry point as a user runs it. Slurm is exercised through
submitit's local executor (``cluster = "local"``: the same pickled jobs, run on this machine); Ray through a
Ray instance the test starts on the loopback interface and stops.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import clustkit_exe
from test_bench import CC, TINY, bench, results, runs_by_key

CELL = "cc"
SEEDS = (0, 1)
METRICS = ("acc", "nmi", "ari")

needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="needs clustkit[slurm]")
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs clustkit[ray]")
subprocesses = pytest.mark.skipif(os.environ.get("CLUSTKIT_SKIP_SUBPROCESS_TESTS") == "1", reason="asked to skip")


def bench_file(folder: Path, extra: str = "") -> Path:
    f = folder / "tiny_bench.toml"
    f.write_text(f"[bench]\nname = \"tiny\"\nrecipes = [{json.dumps(str(CC))}]\nseeds = {list(SEEDS)}\n"
                 f"set = {json.dumps(TINY)}\n{extra}")
    return f


def cli(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``clustkit bench ARGS`` in a child process, as a user types it."""
    proc = subprocess.run([clustkit_exe(), "bench", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def table(out: Path) -> list[dict[str, str]]:
    """results.csv without the columns that measure the machine (time, memory)."""
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v for k, v in r.items() if not k.startswith(("wall_s", "peak_"))} for r in rows]


def assert_same_results(local: Path, other: Path) -> None:
    a, b = runs_by_key(local), runs_by_key(other)
    assert a.keys() == b.keys() == {(CELL, s) for s in SEEDS}
    for key in a:
        assert b[key]["status"] in ("done", "cached", "resumed"), b[key]
        for m in METRICS:
            assert b[key]["summary"][m] == pytest.approx(a[key]["summary"][m], abs=1e-6), (key, m)
    ta, tb = table(local), table(other)
    assert [r["cell"] for r in ta] == [r["cell"] for r in tb] == [CELL]
    for ra, rb in zip(ta, tb):
        assert ra["n_ok"] == rb["n_ok"] == str(len(SEEDS)) and rb["n_failed"] == "0"
        for col in ("acc_mean", "acc_std", "nmi_mean", "ari_mean"):
            assert float(rb[col]) == pytest.approx(float(ra[col]), abs=1e-6), col


def assert_run_folders(out: Path) -> None:
    """Each run wrote what the local executor's child writes: its log and its process's resources."""
    for seed in SEEDS:
        run = out / CELL / f"seed{seed}"
        assert (run / "summary.json").is_file() and "clustkit run" in (run / "bench.log").read_text()
        res = json.loads((run / "resources.json").read_text())
        assert res["mode"] == "subprocess" and res["exit_code"] == 0


@pytest.fixture(scope="module")
def local_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the bench run by the local executor (in-process, which test_bench shows to give the same
    numbers as its child processes)."""
    folder = tmp_path_factory.mktemp("local")
    code, output = cli(bench_file(folder), "--out", folder / "out", "--executor", "local", "--in-process")
    assert code == 0, output
    return folder / "out"


# --- choosing and configuring an executor (nothing runs) ---------------------------------------------------------


@pytest.mark.parametrize("args, needles", [
    (["--executor", "foo"], ["--executor", "'foo' is not a valid choice", "Allowed values: local, slurm, ray."]),
    (["--executor", "slurm", "--executor-option", "partitio=gpu"],
     ["--executor-option", "key 'partitio'", "unknown key", "Allowed values:", "partition", "gpus_per_node"]),
    (["--executor", "ray", "--executor-option", "num_gpus=-1"], ["key 'num_gpus'", "greater than or equal to 0"]),
    (["--executor", "slurm", "--executor-option", "gpus_per_node"], ["--executor-option", "KEY=VALUE"]),
    (["--executor-option", "partition=gpu"], ["key 'partition'", "local executor takes no options"]),
    (["--executor", "ray", "--in-process"], ["--in-process", "--executor local"]),
])
def test_bad_executor_or_option_exits_2_naming_it(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    code, output = bench(CC, *args, "--out", tmp_path / "out", "--dry-run")
    assert code == 2, output
    flat = " ".join(output.split())
    assert flat.startswith("error:") and "Traceback" not in output, output
    for needle in needles:
        assert needle in flat, (needle, flat)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, key, needle", [
    ('executor = "sge"', "bench.executor", "Allowed values: local, slurm, ray."),
    ('[bench.slurm]\npartitio = "gpu"', "bench.slurm.partitio", "Allowed values: account, additional_parameters"),
    ("[bench.slurm]\ntimeout_min = 0", "bench.slurm.timeout_min", "greater than or equal to 1"),
    ('[bench.ray]\nadress = "auto"', "bench.ray.adress", "Allowed values: address, num_cpus, num_gpus."),
])
def test_bench_file_executor_errors_name_the_key(tmp_path: Path, extra: str, key: str, needle: str) -> None:
    f = bench_file(tmp_path, extra + "\n")
    code, output = bench(f, "--out", tmp_path / "out", "--dry-run")
    assert code == 2, output
    flat = " ".join(output.split())
    assert f"invalid bench {f}: key '{key}'" in flat and needle in flat, flat


@pytest.mark.parametrize("executor, module, message", [
    ("ray", "ray", "--executor ray needs Ray: pip install 'clustkit[ray]'"),
    ("slurm", "submitit", "--executor slurm needs submitit: pip install 'clustkit[slurm]'"),
])
def test_missing_package_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executor: str, module: str,
                                         message: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    code, output = bench(CC, "--executor", executor, "--out", tmp_path / "out", "--dry-run")
    assert code == 2 and message in " ".join(output.split()), output


@needs_submitit
def test_sbatch_script_of_the_job_array(tmp_path: Path) -> None:
    from clustkit.bench.executor_settings import SlurmSettings
    from clustkit.bench.slurm_jobs import sbatch_script

    s = SlurmSettings(partition="gpu", gpus_per_node=1, cpus_per_task=4, mem_gb=16, timeout_min=90,
                      array_parallelism=2, account="proj", additional_parameters={"mail-type": "END"})
    text = sbatch_script(s, tmp_path / "slurm", 4, "bench-x")
    lines = set(text.splitlines())
    for flag in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=4", "--mem=16GB", "--time=90",
                 "--array=0-3%2", "--account=proj", "--mail-type=END", "--job-name=bench-x"):
        assert f"#SBATCH {flag}" in lines, (flag, text)
    assert f"-m submitit.core._submit {tmp_path / 'slurm'}" in text
    single = sbatch_script(SlurmSettings(), tmp_path / "slurm", 1, "bench-x", jobs=3)
    assert "--array" not in single and "#SBATCH --time=60" in single and "--partition" not in single


@needs_submitit
def test_dry_run_writes_the_sbatch_script(tmp_path: Path) -> None:
    f = bench_file(tmp_path, 'executor = "slurm"\n[bench.slurm]\npartition = "cpu"\ntimeout_min = 30\n')
    out = tmp_path / "out"
    code, output = bench(f, "--out", out, "--dry-run", "--jobs", "1", "--executor-option", "gpus_per_node=1")
    assert code == 0, output
    script = (out / "slurm" / "sbatch.sh").read_text()
    for flag in ("--partition=cpu", "--time=30", "--gpus-per-node=1", "--array=0-1%1", "--job-name=bench-tiny"):
        assert f"#SBATCH {flag}" in script
    assert "#SBATCH --array=0-1%1" in output
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["sbatch.sh"]  # a dry run runs nothing


# --- running ---------------------------------------------------------------------------------------------------


@subprocesses
@needs_submitit
def test_slurm_through_submitits_local_executor_gives_the_local_results(local_results: Path, tmp_path: Path) -> None:
    f = bench_file(tmp_path, 'executor = "slurm"\n[bench.slurm]\ncluster = "local"\ntimeout_min = 10\n')
    out = tmp_path / "out"
    code, output = cli(f, "--out", out)
    assert code == 0, output
    assert_same_results(local_results, out)
    assert_run_folders(out)
    assert {r["status"] for r in runs_by_key(out).values()} == {"done"}
    meta = results(out)
    assert meta["executor"]["name"] == "slurm" and meta["executor"]["settings"]["cluster"] == "local"
    assert meta["executor"]["settings"]["timeout_min"] == 10
    assert list((out / "slurm").glob("*_result.pkl"))  # submitit's own bookkeeping stays in OUT/slurm


@subprocesses
@needs_submitit
def test_slurm_resubmits_only_the_missing_run(local_results: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(local_results, out)  # a bench whose seed-1 run was lost
    shutil.rmtree(out / CELL / "seed1")
    kept = out / CELL / "seed0" / "summary.json"
    before = kept.stat().st_mtime_ns
    code, output = cli(bench_file(tmp_path), "--out", out, "--executor", "slurm", "--executor-option", "cluster=local")
    assert code == 0, output
    assert {k: r["status"] for k, r in runs_by_key(out).items()} == {(CELL, 0): "cached", (CELL, 1): "done"}
    assert kept.stat().st_mtime_ns == before
    assert "submitted 1 job(s)" in output
    assert_same_results(local_results, out)

    # `bench --out DIR` continues with the executor saved in plan.json (nothing is left to submit)
    code, output = bench("--out", out)
    assert code == 0, output
    assert results(out)["executor"]["name"] == "slurm" and "submitted" not in output


_RAY_HOLDER = """
import sys
import ray
ray.init(num_cpus=2, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""


# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray's switch to a loopback-only node. RAY_AUTH_MODE=token: Ray
# authenticates a driver that names an address only when told to (the token is Ray's, in ~/.ray).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}


@pytest.fixture
def ray_address() -> Iterator[str]:
    """A Ray instance on the loopback interface, held by a child process that the test stops."""
    holder = subprocess.Popen([sys.executable, "-c", _RAY_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, **RAY_ENV})
    assert holder.stdout is not None and holder.stdin is not None
    address = holder.stdout.readline().strip()
    try:
        assert address.startswith("127.0.0.1:"), f"Ray did not start on the loopback interface: {address!r}"
        yield address
    finally:
        holder.stdin.close()
        holder.wait(timeout=120)


@subprocesses
@needs_ray
def test_ray_gives_the_local_results(local_results: Path, ray_address: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = cli(bench_file(tmp_path), "--out", out, "--executor", "ray", "--executor-option",
                       f"address={ray_address}", env=RAY_ENV)
    assert code == 0, output
    assert_same_results(local_results, out)
    assert_run_folders(out)
    meta = results(out)
    assert meta["executor"] == {"name": "ray", "settings": {"address": ray_address, "num_cpus": 1, "num_gpus": 0}}
    assert f"--executor-option address={ray_address}" in meta["command"]
