"""A test plugin that implements every hook and records the calls (tests/test_hooks.py)."""

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

    @hookimpl
    def make_views(self, images: torch.Tensor, train: bool, ctx: Any) -> dict[str, torch.Tensor]:
        CALLS.append(("make_views", train))
        if not train:
            return {"eval": images}
        noise = torch.rand(images.shape, generator=self.gen) * 0.1
        return {"weak1": images, "weak2": (images + noise).clamp(0, 1)}


class RecorderLoss:
    def __init__(self, cfg: Any, ctx: Any):
        self.cfg = cfg
        self.updates = 0
        self.restored: dict[str, Any] | None = None

    @hookimpl
    def build_heads(self, in_dim: int, ctx: Any) -> dict[str, torch.nn.Module]:
        CALLS.append(("build_heads", in_dim))
        return {"extra": torch.nn.Linear(in_dim, 3)}

    @hookimpl
    def compute_loss(self, out: Any, ctx: Any) -> torch.Tensor:
        CALLS.append(("compute_loss", tuple(out.view_names)))
        z = out.head("weak1", self.cfg.head)
        extra = out.head("weak2", "extra")
        return z.pow(2).mean() + 0 * extra.sum()

    @hookimpl
    def update_prototypes(self, out: Any, ctx: Any) -> None:
        CALLS.append(("update_prototypes", torch.is_grad_enabled()))
        self.updates += 1

    @hookimpl
    def on_run_start(self, ctx: Any) -> None:
        CALLS.append(("on_run_start", ctx.epoch))

    @hookimpl
    def on_epoch_start(self, ctx: Any) -> None:
        CALLS.append(("on_epoch_start", ctx.epoch))

    @hookimpl
    def on_epoch_end(self, ctx: Any, logs: dict[str, float]) -> None:
        CALLS.append(("on_epoch_end", dict(logs)))
        logs["recorder_updates"] = float(self.updates)

    @hookimpl
    def after_training(self, ctx: Any) -> None:
        CALLS.append(("after_training", ctx.phase))

    @hookimpl
    def on_run_end(self, ctx: Any, summary: dict[str, Any]) -> None:
        CALLS.append(("on_run_end", summary.get("acc")))
        summary["recorder"] = "seen"

    @hookimpl
    def checkpoint_state(self, ctx: Any) -> dict[str, Any]:
        CALLS.append(("checkpoint_state", ctx.epoch))
        return {"recorder.updates": self.updates}

    @hookimpl
    def load_checkpoint_state(self, state: dict[str, Any], ctx: Any) -> None:
        CALLS.append(("load_checkpoint_state", state.get("recorder.updates")))
        self.updates = state["recorder.updates"]


class RecorderGrouper:
    def __init__(self, cfg: Any, ctx: Any):
        pass

    @hookimpl(tryfirst=True)
    def assign_groups(self, features: Any, n_groups: int, spherical: bool, seed: int, ctx: Any) -> Any:
        from clustkit.cluster.kmeans import kmeans

        CALLS.append(("assign_groups", (tuple(features.shape), n_groups, spherical)))
        return kmeans(features, n_groups, spherical=spherical, seed=seed, backend="torch")


class RecorderEvaluator:
    def __init__(self, cfg: Any, ctx: Any):
        pass

    @hookimpl
    def evaluate(self, ctx: Any) -> Prediction:
        feats = ctx.extract()
        result = ctx.group(feats, ctx.n_clusters)
        CALLS.append(("evaluate", len(result.labels)))
        self.labels = np.asarray(result.labels)
        return Prediction(self.labels, source="recorder")

    @hookimpl
    def candidates(self, ctx: Any) -> dict[str, Prediction]:
        CALLS.append(("candidates", ctx.phase))
        shifted = (self.labels + 1) % ctx.n_clusters  # the same partition under other ids
        return {"recorder:shifted": Prediction(shifted, source="recorder:shifted")}


@hookimpl
def register_components(registry: Any) -> None:
    CALLS.append(("register_components", None))
    registry.add("views", "recorder_views", RecorderViews, ComponentConfig)
    registry.add("loss", "recorder_loss", RecorderLoss, RecorderLossConfig)
    registry.add("grouper", "recorder_grouper", RecorderGrouper, ComponentConfig)
    registry.add("evaluator", "recorder_eval", RecorderEvaluator, ComponentConfig)
