"""The step's speed options (docs/speed.md): bf16 autocast with channels-last tensors trains on a
CPU, torch.compile leaves checkpoints loadable by an uncompiled run, and the GPU check's smoke
mode runs every part of benchmarks/gpu_check.sh end to end on a CPU."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, clustkit_exe, run_recipe


def built(recipe: str, overrides: list[str]):
    from clustkit.engine.build import build_run
    from clustkit.plugin_system.manager import get_plugins
    from clustkit.recipe import load

    plugins = get_plugins()
    with contextlib.redirect_stderr(io.StringIO()):
        return build_run(load(REPO / "recipes" / recipe, plugins.registry, overrides), plugins, None).ctx


def test_compile_leaves_the_checkpoint_keys_and_compiles_each_network_apart() -> None:
    plain = built("digpro.toml", ["run.compile=false"])
    compiled = built("digpro.toml", ["run.compile=true"])
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())
    assert list(compiled.momentum_model.state_dict()) == list(plain.momentum_model.state_dict())
    on = [getattr(net.backbone, "_compiled_call_impl", None) for net in (compiled.model, compiled.momentum_model)]
    assert all(f is not None for f in on) and on[0] is not on[1]
    assert getattr(plain.model.backbone, "_compiled_call_impl", None) is None


@pytest.mark.slow
def test_bf16_channels_last_trains_on_a_cpu(plugin_set, tmp_path: Path) -> None:
    summary = run_recipe(REPO / "recipes" / "sacc.toml", plugin_set(), tmp_path / "run",
                         ["run.epochs=2", 'run.precision="bf16"', "run.channels_last=true", "run.report=false"])
    assert 0.0 < summary["acc"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["losses"]["loss"])) for r in rows)


@pytest.mark.slow
def test_the_gpu_check_runs_every_part_in_smoke_mode_on_a_cpu(tmp_path: Path) -> None:
    shared = os.environ.get("CLUSTKIT_SHARED_DATA")
    if not shared or not (Path(shared) / "cifar-10-jpg").is_dir():
        pytest.fail("CLUSTKIT_SHARED_DATA must hold cifar-10-jpg/ (.ci/run sets it)")
    env = {**os.environ, "PYTHON": sys.executable, "CLUSTKIT": clustkit_exe(), "OMP_NUM_THREADS": "1"}
    env.pop("CC_REPO", None)
    env.pop("SACC_REPO", None)
    out = tmp_path / "check"
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    report = (out / "report.md").read_text()
    assert result.stderr == "", result.stderr           # no part failed or ran out of time
    for method in ("cc", "sacc", "dchl", "digpro", "iciclegcn"):
        assert f"| {method} | cifar10_small | small_cnn-w32 | 16 |" in report
    assert "**fp32**" in report and "**bf16-cl**" in report
    assert "| **cc** | **ResNet-18** | median | – |" in report and "| **sacc** | **ResNet-18** | median | – |" in report
    assert "clustkit torch" in report
    assert "| 2 |" in report and "no epoch finished" not in report     # the budget run's second epoch
    for name in ("throughput-fp32", "throughput-bf16-cl", "vs_reference", "kmeans"):
        assert (out / f"{name}.json").is_file(), name


def test_throughput_prints_each_rows_share_of_its_model_only_ceiling(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--methods", "cc,sacc",
                             "--inputs", "digits", "--batch-sizes", "16", "--warmup", "0", "--steps", "1",
                             "--threads", "1", "--ceiling", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "| ceiling images/s | share of ceiling |" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["views"]) for r in rows] == [("cc", 2), ("sacc", 3)]
    for row in rows:
        assert row["ceiling_images_per_s"] > 0
        share = f"{row['images_per_s'] / row['ceiling_images_per_s']:.2f} |"
        assert any(line.startswith(f"| {row['method']} | digits |") and line.endswith(share)
                   for line in result.stdout.splitlines())
