"""RunContext: everything a component may need during a run, in one object."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from torch import nn

from clustkit import dist

if TYPE_CHECKING:
    import pluggy

    from clustkit.recipe import Recipe


@dataclass
class Prediction:
    """One cluster id per dataset item, in index order (what evaluators return)."""

    labels: np.ndarray
    source: str = ""
    scores: np.ndarray | None = None  # e.g. max soft-assignment, distance to centroid
    extra: dict[str, Any] = field(default_factory=dict)


class Network(nn.Module):
    """Backbone plus named heads; the momentum network is a copy of the same shape."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - convenience
        return self.backbone(x)


class BatchSource:
    """Yields batches of (float images in [0, 1] on device, labels, indices), sharded by rank.

    In-memory datasets are sliced directly (no DataLoader overhead for tiny images); other
    datasets go through a DataLoader over the same index order. The order of epoch e is a
    pure function of (seed, e), so resuming at an epoch boundary replays exactly.
    """

    def __init__(self, dataset: Any, batch_size: int, eval_batch_size: int, drop_last: bool,
                 seed: int, device: torch.device, num_workers: int = 0):
        self.dataset = dataset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.device = device
        self.num_workers = num_workers
        self.n = len(dataset)
        self.images: torch.Tensor | None = getattr(dataset, "images", None)
        self.labels = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.long)

    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if (self.drop_last or rest == 0) else full + 1

    def _fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.images is not None:
            imgs = self.images[idx]
        else:
            imgs = torch.stack([self.dataset[int(i)][0] for i in idx])
        x = imgs.to(self.device, non_blocking=True).float().div_(255.0)
        return x, self.labels[idx].to(self.device), idx.to(self.device)

    def _iterate(self, order: torch.Tensor, batch: int, shard: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        world, rank = dist.world_size(), dist.rank()
        chunks = list(order.split(batch))
        if shard and self.drop_last and chunks and len(chunks[-1]) < batch:
            chunks.pop()
        if self.images is None and self.num_workers > 0:
            yield from self._loader_iterate(chunks, world if shard else 1, rank if shard else 0)
            return
        for chunk in chunks:
            if shard and world > 1:
                chunk = chunk.tensor_split(world)[rank]
            yield self._fetch(chunk)

    def _loader_iterate(self, chunks: list[torch.Tensor], world: int, rank: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        from torch.utils.data import DataLoader

        batches = [c.tensor_split(world)[rank].tolist() for c in chunks]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for imgs, labels, idx in loader:
            yield (imgs.to(self.device, non_blocking=True).float().div_(255.0), labels.to(self.device),
                   idx.to(self.device))

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return self._iterate(torch.randperm(self.n, generator=g), self.batch_size, shard=True)

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self._iterate(torch.arange(self.n), self.eval_batch_size, shard=False)


class RunContext:
    """Shared state of one run. Components receive it in every hook."""

    def __init__(self, recipe: Recipe, out_dir: Path | None, device: torch.device):
        self.recipe = recipe
        self.out_dir = out_dir
        self.device = device
        self.rank = dist.rank()
        self.world_size = dist.world_size()
        self.is_main = dist.is_main()
        self.dataset: Any = None
        self.n_clusters: int = 0
        self.in_channels: int = 0
        self.image_size: tuple[int, int] = (0, 0)
        self.backbone_dim: int = 0
        self.model: Network | None = None
        self.momentum_model: Network | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.source: BatchSource | None = None
        self.unlabeled_source: BatchSource | None = None  # the [unlabeled] pass's items, if any
        self.current_pass = "data"  # "unlabeled" during the [unlabeled] pass of an epoch
        self.pm: pluggy.PluginManager | None = None
        self.components: dict[str, Any] = {}
        self.epoch = 0          # epochs completed so far (the current epoch's index while training)
        self.step = 0           # optimizer steps so far
        self.total_steps = 0
        self.phase = "train"    # "train" -> "post" (after_training) -> "done"
        self.log_lines: list[str] = []
        self._save_checkpoint: Any = None
        self.console: Any = None
        self.current_key = ""   # recipe key of the component being built (e.g. "losses.instance")

    # -- convenience ----------------------------------------------------------------------
    @property
    def hook(self) -> Any:
        assert self.pm is not None
        return self.pm.hook

    @property
    def epochs(self) -> int:
        return self.recipe.run.epochs

    @property
    def seed(self) -> int:
        return self.recipe.run.seed

    def print(self, *args: Any) -> None:
        """Print on rank 0 only (through rich when available)."""
        if not self.is_main:
            return
        if self.console is not None:
            self.console.print(*args)
        else:
            print(*args)

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch: the [unlabeled] pass (if any) plus the pass over [data]."""
        assert self.source is not None
        extra = self.unlabeled_source.steps_per_epoch() if self.unlabeled_source is not None else 0
        return self.source.steps_per_epoch() + extra

    def momentum_value(self) -> float:
        cfg = self.recipe.momentum
        if cfg is None:
            return 0.0
        if cfg.final is None or self.total_steps == 0:
            return cfg.base
        progress = min(1.0, self.step / self.total_steps)
        return cfg.final - (cfg.final - cfg.base) * (math.cos(math.pi * progress) + 1) / 2

    # -- whole-dataset helpers ------------------------------------------------------------
    @torch.no_grad()
    def extract(self, head: str | None = None, *, momentum: bool = False) -> torch.Tensor:
        """Features (backbone, or head ``head``) of every item on the evaluation view, in index
        order, on the CPU. Used by evaluators, per-epoch clustering and second stages."""
        net = self.momentum_model if momentum else self.model
        if net is None:
            raise RuntimeError("no momentum network in this recipe" if momentum else "model not built yet")
        assert self.source is not None
        was_training = net.training
        net.eval()
        parts = []
        try:
            for x, _, _ in self.source.eval_batches():
                view = self.hook.make_views(images=x, train=False, ctx=self)["eval"]
                with self.autocast():
                    f = net.features(view)
                    if head is not None:
                        f = net.heads[head](f)
                parts.append(f.float().cpu())
        finally:
            net.train(was_training)
        return torch.cat(parts)

    def group(self, features: Any, n_groups: int | None = None, *, spherical: bool = False,
              seed: int | None = None) -> Any:
        """Cluster features through the ``assign_groups`` hook (the recipe's grouper), on rank 0,
        and share the result with every rank."""
        result = None
        if self.is_main:
            result = self.hook.assign_groups(features=features, n_groups=n_groups or self.n_clusters,
                                             spherical=spherical, seed=self.seed if seed is None else seed, ctx=self)
            if result is None:
                raise RuntimeError("no grouping component answered assign_groups; add a [grouping] section")
        return dist.broadcast_object(result)

    def save_checkpoint(self) -> None:
        """Write a checkpoint now (second stages call this to make their progress resumable)."""
        if self._save_checkpoint is not None:
            self._save_checkpoint()

    def autocast(self) -> Any:
        enabled = self.recipe.run.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)
