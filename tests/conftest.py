"""Shared fixtures: tiny recipes and an isolated plugin set per test."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CLUSTKIT_SHARED_DATA", REPO.parent / "shared" / "data"))

# Two test workers share two cores: one thread each (subprocesses inherit the variable).
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

# The run report (t-SNE, image grids) costs seconds per run: the tests that check it turn it on
# with CLUSTKIT_REPORT=1; the other runs of the suite skip it.
os.environ.setdefault("CLUSTKIT_REPORT", "0")

# Tests never pick up plugins installed in the developer's environment beyond this repo's.
os.environ.setdefault("CLUSTKIT_LOAD_PLUGINS", "builtin,cc,sacc,dchl,digpro,iciclegcn,selflabel,manifold,temi")

TINY_CC = """
[run]
name = "tiny"
seed = 0
epochs = 2
batch_size = 64
eval_batch_size = 512
checkpoint_every = 1

[data]
name = "digits"

[backbone]
name = "small_cnn"
width = 8
out_dim = 32

[heads.instance]
name = "cc_instance"
hidden = 32
out_dim = 16

[heads.cluster]
name = "cc_cluster"
hidden = 32

[views]
name = "tensor_affine"

[losses.instance]
name = "instance_contrast"

[losses.cluster]
name = "cluster_contrast"

[optimizer]
name = "adam"
lr = 1e-3

[evaluation]
name = "head_argmax"
head = "cluster"
"""


class FakeOut:
    """A ``StepOutputs`` stand-in for loss tests: head outputs by (view, head), and ``extras``."""

    def __init__(self, heads: dict[tuple[str, str], Any]):
        self.heads = heads
        self.extras: dict[Any, Any] = {}

    def head(self, view: str, name: str) -> Any:
        return self.heads[(view, name)]


def clustkit_exe() -> str:
    exe = shutil.which("clustkit") or str(Path(sys.executable).parent / "clustkit")
    return exe


def torchrun_exe() -> str:
    return shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")


def free_port() -> int:
    """A TCP port free on the loopback interface now (a process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_CC)
    return path


@pytest.fixture
def plugin_set() -> Callable[..., Any]:
    """A fresh PluginSet with this repo's plugins plus any extra test plugin objects."""
    from clustkit.plugin_system.manager import PluginSet

    def make(*extra: tuple[str, Any]) -> PluginSet:
        ps = PluginSet()
        ps.load_entry_points()
        for name, obj in extra:
            ps.register(obj, name=name)
        return ps

    return make


def run_recipe(path: Path, plugins: Any, out: Path | None, overrides: list[str] | None = None,
               resume: bool = False) -> dict[str, Any]:
    from clustkit.engine.run import Run
    from clustkit.recipe import load

    recipe = load(path, plugins.registry, overrides or [])
    return Run(recipe, plugins, out).execute(resume=resume)


def rgb(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random RGB images (upsampled noise) in [0, 1], for the augmentation tests."""
    import torch

    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
