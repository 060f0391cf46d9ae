"""A test plugin whose components have every role method and every lifecycle hook, and record the
calls (tests/test_hooks.py). The components are plain objects: no ``@hookimpl`` on their methods."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clustkit import ComponentConfig, LossConfig, Prediction, hookimpl

CALLS: list[tuple[str, Any]] = []


class RecorderLossConfig(LossConfig):
    head: str = "instance"


class RecorderViews:
    def __init__(self, cfg: Any, ctx: Any):
        self.gen = torch.Generator().manual_seed(0)
        self.view_names = ["weak1", "weak2"]

    def make_views(self, images: torch.Tensor, train: bool, ctx: Any) -> dict[str, torch.Tensor]:
        CALLS.append(("make_views", train))
        if not train:
            return {"eval": images}
        noise = torch.rand(images.shape, generator=self.gen) * 0.1
        return {"weak1": images, "weak2": (images + noise).clamp(0, 1)}


class RecorderLoss:
    def __init__(self, cfg: Any, ctx: Any):
        self.cfg = cfg
        self.key = ctx.key
        self.updates = 0

    def build_heads(self, in_dim: int, ctx: Any) -> dict[str, torch.nn.Module]:
        CALLS.append(("build_heads", (self.key, in_dim)))
        return {f"extra_{self.key.split('.')[1]}": torch.nn.Linear(in_dim, 3)}

    def compute_loss(self, out: Any, ctx: Any) -> torch.Tensor:
        CALLS.append(("compute_loss", (self.key, tuple(out.view_names))))
        z = out.head("weak1", self.cfg.head)
        extra = out.head("weak2", f"extra_{self.key.split('.')[1]}")
        return z.pow(2).mean() + 0 * extra.sum()

    def update_prototypes(self, out: Any, ctx: Any) -> None:
        CALLS.append(("update_prototypes", (self.key, torch.is_grad_enabled())))
        self.updates += 1

    def on_run_start(self, ctx: Any) -> None:
        CALLS.append(("on_run_start", (self.key, ctx.epoch)))

    def on_epoch_start(self, ctx: Any) -> None:
        CALLS.append(("on_epoch_start", (self.key, ctx.epoch)))

    def on_epoch_end(self, ctx: Any, logs: dict[str, float]) -> None:
        CALLS.append(("on_epoch_end", (self.key, ctx.epoch, dict(logs))))
        logs[f"{self.key.split('.')[1]}_updates"] = float(self.updates)

    def after_training(self, ctx: Any) -> None:
        CALLS.append(("after_training", (self.key, ctx.step)))

    def on_run_end(self, ctx: Any, summary: dict[str, Any]) -> None:
        CALLS.append(("on_run_end", (self.key, summary.get("acc"))))
        summary["recorder"] = "seen"

    def checkpoint_state(self, ctx: Any) -> dict[str, Any]:
        CALLS.append(("checkpoint_state", (self.key, ctx.epoch)))
        return {f"{self.key}.updates": self.updates}

    def load_checkpoint_state(self, state: dict[str, Any], ctx: Any) -> None:
        CALLS.append(("load_checkpoint_state", (self.key, state.get(f"{self.key}.updates"))))
        self.updates = state[f"{self.key}.updates"]


class RecorderGrouper:
    """Takes a subset of the arguments the engine passes (as pluggy let 0.1's hooks do)."""

    def __init__(self, cfg: Any, ctx: Any):
        pass

    def assign_groups(self, features: Any, n_groups: int, spherical: bool, seed: int, ctx: Any) -> Any:
        from clustkit.cluster.kmeans import kmeans

        CALLS.append(("assign_groups", (tuple(features.shape), n_groups, spherical)))
        return kmeans(features, n_groups, spherical=spherical, seed=seed, backend="torch")


class RecorderEvaluator:
    def __init__(self, cfg: Any, ctx: Any):
        self.labels = np.zeros(0, dtype=np.int64)

    def evaluate(self, ctx: Any) -> Prediction:
        feats = ctx.extract()
        result = ctx.group(feats, ctx.n_clusters)
        CALLS.append(("evaluate", len(result.labels)))
        self.labels = np.asarray(result.labels)
        return Prediction(self.labels, kind="recorder")

    def candidates(self, ctx: Any) -> dict[str, Prediction]:
        CALLS.append(("candidates", ctx.step))
        shifted = Prediction((self.labels + 1) % ctx.n_clusters, kind="recorder", variant="shifted")  # same partition
        return {shifted.name: shifted}


class RecorderRefiner:
    def __init__(self, cfg: Any, ctx: Any):
        self.key = ctx.key

    def refine(self, previous: Prediction, ctx: Any) -> Prediction:
        CALLS.append(("refine", (self.key, previous.name)))
        return Prediction(previous.labels, kind="refined", variant=self.key.split(".")[1], scores=previous.scores)


@hookimpl
def register_components(registry: Any) -> None:
    CALLS.append(("register_components", None))
    registry.add("views", "recorder_views", RecorderViews, ComponentConfig)
    registry.add("loss", "recorder_loss", RecorderLoss, RecorderLossConfig)
    registry.add("grouper", "recorder_grouper", RecorderGrouper, ComponentConfig)
    registry.add("evaluator", "recorder_eval", RecorderEvaluator, ComponentConfig)
    registry.add("refiner", "recorder_refine", RecorderRefiner, ComponentConfig)


@hookimpl
def on_run_end(ctx: Any, summary: dict[str, Any]) -> None:
    """A plugin module observing every run (after the components, which are notified first)."""
    CALLS.append(("on_run_end", ("plugin", summary.get("recorder"))))
