"""The self-labelling stage (imported only when a recipe builds it; docs/plugins/selflabel.md)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clustkit import BuildContext, Prediction, RunContext, dist, ema_update
from clustkit.cluster.rows import unit_rows
from clustkit.nn.heads import MLPHead


def balanced_confident(clusters: np.ndarray, confidence: np.ndarray, n_clusters: int, per_cluster: int,
                       threshold: float | None = None) -> np.ndarray:
    """Indices of at most ``per_cluster`` members of each cluster, the most confident first, and
    (with ``threshold``) only those with ``confidence >= threshold``; sorted. Items with cluster
    -1 (unreadable) are never taken."""
    chosen: list[np.ndarray] = []
    for k in range(n_clusters):
        members = np.flatnonzero(clusters == k)
        if threshold is not None:
            members = members[confidence[members] >= threshold]
        order = np.argsort(-confidence[members], kind="stable")
        chosen.append(members[order[:per_cluster]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def top_per_cluster(probs: np.ndarray, per_cluster: int, threshold: float,
                    exclude: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SPICE's reliable pseudo-labels: for each cluster k the ``per_cluster`` items with the
    highest probability of k (at least ``threshold``); an item chosen by several clusters goes
    to the one it is most probable under. Every cluster keeps members, so the head cannot
    collapse onto a few clusters. Returns (sorted indices, their cluster)."""
    p = np.array(probs, dtype=np.float64)
    if exclude:
        p[exclude] = -np.inf
    rows, cols = [], []
    for k in range(p.shape[1]):
        top = np.argsort(-p[:, k], kind="stable")[:per_cluster]
        top = top[p[top, k] >= threshold]
        rows.append(top)
        cols.append(np.full(len(top), k))
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    r, c = np.concatenate(rows), np.concatenate(cols)
    order = np.argsort(-p[r, c], kind="stable")  # most probable claim first
    _, first = np.unique(r[order], return_index=True)
    keep = order[first]
    return r[keep].astype(np.int64), c[keep].astype(np.int64)


def centroid_confidence(features: np.ndarray, clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """Cosine similarity of each item to the mean (L2-normalised) feature of its cluster: the
    confidence of a clustering that has no probabilities (k-means, a second stage)."""
    x = unit_rows(features)
    out = np.full(len(x), -np.inf)
    for k in range(n_clusters):
        members = clusters == k
        if members.any():
            c = x[members].mean(0)
            out[members] = x[members] @ (c / max(float(np.linalg.norm(c)), 1e-12))
    return out


def balanced_nll(probs: torch.Tensor, targets: torch.Tensor, n_clusters: int, balance: bool) -> torch.Tensor:
    """Cross-entropy of soft assignments ``probs`` against ``targets``; with ``balance`` each
    class is weighted by the inverse of its frequency in the batch (SCAN's self-labelling)."""
    weight = None
    if balance:
        counts = torch.bincount(targets, minlength=n_clusters).float()
        weight = torch.where(counts > 0, counts.sum() / (n_clusters * counts.clamp_min(1)), torch.zeros_like(counts))
    return F.nll_loss(probs.clamp_min(1e-8).log(), targets, weight=weight)


class SelfLabelRefiner:
    """A ``[refine.<id>]`` stage: trains the backbone and its own soft-assignment head on confident
    pseudo-labels of the previous stage's clustering (or of the run's label-free choice).

    The head is part of the network (the component's ``build_heads``), so it is saved with the
    model and ``clustkit predict`` can read it. Progress (step, selection, optimizer) is
    checkpointed at every re-selection; a resumed stage continues from the last one.
    """

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg
        self.key = ctx.key
        self.n_clusters = ctx.n_clusters
        names = ctx.view_names
        self.view = cfg.view or ("strong" if "strong" in names else (names[0] if names else None))
        if cfg.view is not None and names and cfg.view not in names:
            raise ValueError(f"view = {cfg.view!r} is not a view of the recipe's [views]; it makes {', '.join(names)}")
        if cfg.head in ctx.recipe.heads:
            raise ValueError(f"head = {cfg.head!r} is already a [heads.{cfg.head}] of the recipe; "
                             "give the stage's head a name of its own")
        with torch.random.fork_rng(devices=[]):  # adding the stage leaves training's random stream alone
            torch.manual_seed(ctx.seed * 7919 + 29)
            self.module = MLPHead(ctx.backbone_dim, list(cfg.hidden), ctx.n_clusters, output="softmax")
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        self.done = False
        self.selected: np.ndarray | None = None
        self.targets: np.ndarray | None = None
        self.history: list[dict[str, Any]] = []
        self.started_from = ""
        self._optimizer_state: dict[str, Any] | None = None

    # -- the network -------------------------------------------------------------------------
    def build_heads(self, in_dim: int, ctx: BuildContext) -> dict[str, torch.nn.Module]:
        return {self.cfg.head: self.module}

    def _make_optimizer(self, ctx: RunContext) -> torch.optim.Optimizer:
        c = self.cfg
        groups = [{"params": list(self.module.parameters()), "lr": c.lr}]
        if c.backbone_lr_mult > 0:
            groups.append({"params": [p for p in ctx.model.backbone.parameters() if p.requires_grad],
                           "lr": c.lr * c.backbone_lr_mult})
        else:
            for p in ctx.model.backbone.parameters():
                p.requires_grad_(False)
        opt = torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)
        if self._optimizer_state is not None:
            opt.load_state_dict(self._optimizer_state)
        return opt

    # -- selecting pseudo-labels -------------------------------------------------------------
    def _start(self, previous: Prediction, ctx: RunContext) -> None:
        """The first selection: the most confident members of each cluster of the starting
        clustering (its probabilities, or the cosine to its cluster's mean backbone feature)."""
        selected = self.cfg.start == "selected"  # else the previous stage's labels, or the recipe's evaluation
        pred = ctx.select(previous, exclude=(self.cfg.head,)) if selected else previous
        self.started_from = f"{pred.name} (run.select)" if selected else pred.name
        clusters = np.asarray(pred.labels, dtype=np.int64)
        if pred.scores is not None and len(pred.scores) == len(clusters):
            confidence = np.asarray(pred.scores, dtype=np.float64)
        else:
            confidence = centroid_confidence(ctx.extract().numpy(), clusters, ctx.n_clusters)
        self._select(ctx, clusters, confidence, threshold=None)

    def _per_cluster(self, ctx: RunContext) -> int:
        return max(1, int(self.cfg.ratio * len(ctx.dataset) / ctx.n_clusters))

    def _select(self, ctx: RunContext, clusters: np.ndarray, confidence: np.ndarray, threshold: float | None) -> None:
        chosen = balanced_confident(clusters, confidence, ctx.n_clusters, self._per_cluster(ctx), threshold)
        self._keep(chosen, clusters)

    def _keep(self, chosen: np.ndarray, clusters: np.ndarray) -> None:
        if len(chosen) < max(2, dist.world_size()):  # nothing confident enough: keep the previous selection
            self.history.append({"step": self.step, "selected": 0, "kept_previous": True})
            return
        self.selected, self.targets = chosen, clusters
        self.history.append({"step": self.step, "selected": len(chosen),
                             "clusters": len(np.unique(clusters[chosen]))})

    def _reselect(self, ctx: RunContext) -> None:
        """Re-select from the head's own probabilities: the top of each cluster (SPICE)."""
        probs = ctx.extract(self.cfg.head).numpy()
        chosen, targets = top_per_cluster(probs, self._per_cluster(ctx), self.cfg.threshold,
                                          sorted(ctx.source.unreadable))
        clusters = np.full(len(probs), -1, dtype=np.int64)
        clusters[chosen] = targets
        self._keep(chosen, clusters)

    # -- the stage ---------------------------------------------------------------------------
    def refine(self, previous: Prediction, ctx: RunContext) -> Prediction:
        """Train the stage (or finish it, after a resume) and return its clustering (``output``)."""
        if not self.done:
            self._train(previous, ctx)
        return self._output(ctx)

    def _train(self, previous: Prediction, ctx: RunContext) -> None:
        t0 = time.perf_counter()
        if self.selected is None:
            self._start(previous, ctx)
        else:
            ctx.print(f"selflabel: resuming at step {self.step}/{self.cfg.steps}")
        self.optimizer = self._make_optimizer(ctx)
        c = self.cfg
        ctx.model.train()
        while self.step < c.steps:
            assert self.selected is not None and self.targets is not None
            targets = torch.as_tensor(self.targets, device=ctx.device)
            round_index = self.step // c.reselect_every
            round_end = min(c.steps, (round_index + 1) * c.reselect_every)
            losses = []
            while self.step < round_end:
                before = self.step
                for images, _, index in ctx.source.train_batches(round_index * 1000 + self.step, self.selected):
                    losses.append(self._train_step(ctx, images, targets[index], index))
                    self.step += 1
                    if self.step >= round_end:
                        break
                if self.step == before:
                    raise RuntimeError(f"selflabel: the {len(self.selected)} selected samples gave no training batch")
            mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
            self._reselect(ctx)
            ctx.model.train()
            self.history[-1]["loss"] = round(mean_loss, 6)
            if c.log_every and (self.step % c.log_every == 0 or self.step == c.steps):
                last = self.history[-1]
                ctx.print(f"selflabel step {self.step}/{c.steps}: loss={mean_loss:.4f}, "
                          f"{last['selected']} confident samples in {last.get('clusters', 0)} clusters")
            if self.step < c.steps:
                self._optimizer_state = self.optimizer.state_dict()
                ctx.save_checkpoint()
        if c.output == "evaluation" and ctx.has_momentum:
            # The stage trained the online network; an evaluation that reads the target network
            # (DigPro's) would otherwise cluster a network the stage never touched: momentum 0 copies it.
            ema_update(ctx.momentum_model, ctx.model, 0.0, copy_buffers=True)
        self.done = True
        self.history.append({"step": self.step, "seconds": round(time.perf_counter() - t0, 3)})
        self._optimizer_state = None

    def _train_step(self, ctx: RunContext, images: torch.Tensor, targets: torch.Tensor,
                    index: torch.Tensor) -> torch.Tensor:
        views = ctx.make_views(images, train=True, index=index)
        x = views[self.view] if self.view is not None else next(iter(views.values()))
        with ctx.autocast():
            probs = self.module(ctx.model.features(x)).float()
        loss = balanced_nll(probs, targets, ctx.n_clusters, self.cfg.balance)
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients([p for g in self.optimizer.param_groups for p in g["params"]])
        self.optimizer.step()
        return loss.detach()

    # -- outputs -----------------------------------------------------------------------------
    def _output(self, ctx: RunContext) -> Prediction:
        rounds = [h for h in self.history if "selected" in h]
        extra = {"selflabel_steps": self.step, "selflabel_start": self.started_from,
                 "selflabel_selected": rounds[-1]["selected"] if rounds else 0}
        if self.cfg.output == "evaluation":  # the recipe's clustering of the retrained network
            pred = ctx.evaluate()
            pred.extra = {**(pred.extra or {}), **extra}
            return pred
        conf, labels = ctx.extract(self.cfg.head).max(1)
        return Prediction(labels.numpy().astype(np.int64), kind="argmax", space=self.cfg.head, rule="argmax",
                          scores=conf.numpy(), extra=extra)

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_state(self, ctx: RunContext) -> dict[str, Any]:
        return {self.key: {"step": self.step, "done": self.done, "selected": self.selected, "targets": self.targets,
                           "history": self.history, "started_from": self.started_from,
                           "optimizer": self._optimizer_state}}

    def load_checkpoint_state(self, state: dict[str, Any], ctx: RunContext) -> None:
        s = state.get(self.key)
        if not s:
            return
        self.step, self.done = int(s["step"]), bool(s["done"])
        self.selected, self.targets = s["selected"], s["targets"]
        self.history, self.started_from = list(s["history"]), s["started_from"]
        self._optimizer_state = s["optimizer"]
