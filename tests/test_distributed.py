"""Two CPU processes (gloo) give the same losses and gradients as one process on the full batch.

Each rank holds half of the batch; the engine's gather (``clustkit.dist.gather_with_grad``)
assembles the global batch with gradients flowing back to every rank's own rows, every rank
computes the same global loss, and parameter gradients are averaged over ranks. For inputs,
that means: loss equal, and rank r's gradient / world_size equal to the full-batch gradient
of its rows (the average over ranks of an identical loss), which is what this test checks.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clustkit import dist as cdist
from clustkit.losses.contrast import cluster_contrast, nt_xent
from conftest import clustkit_exe, free_port, torchrun_exe

N, D, K = 12, 6, 4


def _data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(N, D, generator=g, dtype=torch.float64),
            torch.randn(N, K, generator=g, dtype=torch.float64), torch.randn(N, K, generator=g, dtype=torch.float64))


def _losses(za: torch.Tensor, zb: torch.Tensor, la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    return nt_xent(za, zb, 0.5) + cluster_contrast(la.softmax(1), lb.softmax(1), 1.0)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        full = _data()
        local = [t.chunk(world)[rank].clone().requires_grad_() for t in full]
        gathered = [cdist.gather_with_grad(t) for t in local]
        loss = _losses(*gathered)
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": [t.grad for t in local]}, f"{out}/rank{rank}.pt")
    finally:
        cdist.shutdown()


def test_two_process_losses_and_gradients_equal_one_process(tmp_path: Path) -> None:
    world = 2
    mp.start_processes(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True,
                       start_method="spawn")
    full = [t.clone().requires_grad_() for t in _data()]
    ref_loss = _losses(*full)
    ref_loss.backward()
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got["loss"], ref_loss.detach(), atol=1e-12)
        for g_rank, t_full in zip(got["grads"], full):
            expected = t_full.grad.chunk(world)[rank]
            assert torch.allclose(g_rank / world, expected, atol=1e-12)


def test_torchrun_two_processes_cli(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun_exe(), "--standalone", "--nproc-per-node", "2", clustkit_exe(), "run",
                             str(tiny_recipe), "--out", str(out), "--set", "run.epochs=1"], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and 0 <= summary["acc"] <= 1
    assert len((out / "assignments.csv").read_text().splitlines()) == 1798


def _torchrun(*args: str) -> list[str]:
    return [torchrun_exe(), *args]


def _two_nodes(out: Path, *run_args: str) -> None:
    """Two torchrun "nodes" on this machine, one process each, meeting through a c10d rendezvous on
    127.0.0.1 (what `torchrun --nnodes 2` does across machines, docs/scale-out.md)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(
        _torchrun("--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{port}", clustkit_exe(), "run", "cc",
                  "--out", str(out), *run_args),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for node in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in nodes]
    for node, (p, log) in enumerate(zip(nodes, logs)):
        assert p.returncode == 0, f"node {node}:\n{log[-3000:]}"


def test_two_torchrun_nodes_with_a_resume_equal_one_node(tmp_path: Path) -> None:
    """recipes/cc.toml on two one-process "nodes", interrupted after 2 epochs and resumed to 3 across
    the nodes, ends with the summary and assignments of an uninterrupted two-process run on one node."""
    common = ["--set", "run.eval_every=0", "--set", "run.checkpoint_every=1", "--set", "run.report=false"]
    single = tmp_path / "one-node"
    result = subprocess.run(_torchrun("--standalone", "--nproc-per-node", "2", clustkit_exe(), "run", "cc", "--out",
                                      str(single), "--set", "run.epochs=3", *common),
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    multi = tmp_path / "two-nodes"
    _two_nodes(multi, "--set", "run.epochs=2", *common)
    assert json.loads((multi / "summary.json").read_text())["epochs"] == 2
    _two_nodes(multi, "--set", "run.epochs=3", "--resume", *common)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (single, multi))
    assert a["world_size"] == b["world_size"] == 2 and b["epochs"] == 3
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differ <= {"wall_s"}, {k: (a.get(k), b.get(k)) for k in differ}
    assert (single / "assignments.csv").read_text() == (multi / "assignments.csv").read_text()
    curves = [[(m["epoch"], m["losses"]) for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
              for d in (single, multi)]
    assert [e for e, _ in curves[1]] == [1, 2, 3] and curves[0] == curves[1]  # the gathered losses, exactly


@pytest.mark.parametrize("method, overrides", [
    ("digpro", ["run.epochs=2"]),  # per-epoch E-step and the k-means evaluation through the sharded ctx.group
    ("iciclegcn", ["run.epochs=1", "refine.gcn.iterations=20"]),  # kNN graphs with the queries split over ranks
])
def test_whole_dataset_steps_run_sharded_under_torchrun(method: str, overrides: list[str], tmp_path: Path) -> None:
    """The methods whose steps read every feature (k-means, kNN graphs) finish a two-process run: every
    rank takes part in each collective of the sharded paths, in the same order."""
    out = tmp_path / method
    sets = [a for o in [*overrides, "run.report=false"] for a in ("--set", o)]
    result = subprocess.run(_torchrun("--standalone", "--nproc-per-node", "2", clustkit_exe(), "run", method,
                                      "--out", str(out), *sets),
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_clusters_used"] >= 2
    assert len((out / "assignments.csv").read_text().splitlines()) == 1798
