"""IcicleGCN's stage 2 (imported only when a recipe builds it; docs/methods/iciclegcn.md)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clustkit import BuildContext, Prediction, RunContext
from clustkit.cluster.metrics import evaluate_clustering

from .autoencoder import JCSlimAE
from .gcn import Trident, build_graphs, kl_to, student_t, target_distribution


class GCNRefiner:
    """Stage 2 (M-GCN), a ``[refine.<id>]`` stage: ``refine`` trains it and returns its labels.

    State (features, trident weights incl. the AE and Student-t centres, Adam state, iteration,
    final assignments) goes into every checkpoint; the kNN graphs are rebuilt from the stored
    features on resume (exact search, a pure function of the features and k).
    """

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg
        self.key = ctx.key
        head_cfg = ctx.recipe.heads[cfg.ae_head]  # the recipe loader checked the name
        if head_cfg.name != "iciclegcn_ae":
            raise ValueError(f"ae_head = {cfg.ae_head!r} must name a [heads.*] section with name = \"iciclegcn_ae\"")
        ae_weight = cfg.ae_weight if cfg.ae_weight is not None else 1.0 - cfg.sigma - cfg.gamma
        self.ae_weight = ae_weight
        # built with its own generator so that adding the refiner leaves stage 1's random stream alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed * 7919 + 17)
            gen = torch.Generator().manual_seed(ctx.seed * 7919 + 18)
            ae = JCSlimAE(ctx.backbone_dim, list(head_cfg.hidden), ctx.n_clusters)
            self.net = Trident(ae, ctx.n_clusters, sigma=cfg.sigma, gamma=cfg.gamma, ae_weight=ae_weight,
                               share_weights=cfg.share_weights, generator=gen)
        self.net.to(ctx.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.started = False
        self.done = False
        self.iteration = 0
        self.features: torch.Tensor | None = None
        self.stage1_labels: np.ndarray | None = None
        self.final: dict[str, torch.Tensor] | None = None
        self.last_losses: dict[str, float] = {}
        self.resumed_at: int | None = None
        self.graphs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.timings: dict[str, float] = {}

    # -- the stage ---------------------------------------------------------------------------
    def _start(self, ctx: RunContext) -> None:
        t0 = time.perf_counter()
        self.features = ctx.extract().float().contiguous()
        self.net.ae.load_state_dict(ctx.model.heads[self.cfg.ae_head].state_dict())
        with torch.no_grad():
            codes = self.net.ae(self.features.to(ctx.device)).cpu()
        self.stage1_labels = codes.argmax(1).numpy().astype(np.int64)
        km = ctx.group(codes, ctx.n_clusters, n_init=self.cfg.kmeans_n_init)
        with torch.no_grad():
            self.net.centers.copy_(torch.as_tensor(km.centroids, device=ctx.device))
        self.timings["extract_kmeans_s"] = time.perf_counter() - t0
        self.started = True

    def _graphs(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graphs is None:
            assert self.features is not None
            t0 = time.perf_counter()
            a, b = build_graphs(self.features, self.cfg.k_a, self.cfg.k_b, self.cfg.normalization,
                                self.cfg.knn_backend)
            self.graphs = (a.to(ctx.device), b.to(ctx.device))
            self.timings["knn_graph_s"] = time.perf_counter() - t0
        return self.graphs

    def step_losses(self, out: dict[str, Any], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage-2 loss terms (weighted): mgcn_re + α KL(P‖Q) + β KL(P‖G_a) + η KL(P‖G_b), with
        P the target distribution of the current Q (no gradient through P)."""
        c = self.cfg
        q = student_t(out["code"], self.net.centers, c.student_t_v)
        p = target_distribution(q.detach())
        terms: dict[str, torch.Tensor] = {}
        if c.re_weight:
            terms["gcn_re"] = c.re_weight * F.mse_loss(out["x_hat"], x)
        if c.alpha:
            terms["gcn_kl_q"] = c.alpha * kl_to(p, q.clamp_min(1e-12).log())
        if c.beta:
            terms["gcn_kl_a"] = c.beta * kl_to(p, F.log_softmax(out["logits_a"], dim=1))
        if c.eta:
            terms["gcn_kl_b"] = c.eta * kl_to(p, F.log_softmax(out["logits_b"], dim=1))
        return terms

    def refine(self, previous: Prediction, ctx: RunContext) -> Prediction:
        """Train stage 2 (or finish it, after a resume) and return the ``predict`` stream's labels;
        ``previous`` is not read: the stage starts from stage 1's auto-encoder head."""
        if not self.done:
            self._train(ctx)
        return self._prediction(self.cfg.predict, self._diagnostics(ctx))

    def _train(self, ctx: RunContext) -> None:
        t0 = time.perf_counter()
        if not self.started:
            self._start(ctx)
            ctx.save_checkpoint()  # the hand-over: features, AE and centres are now on disk
        else:
            self.resumed_at = self.iteration
            ctx.print(f"iciclegcn: resuming stage 2 at iteration {self.iteration}/{self.cfg.iterations}")
        assert self.features is not None
        adj_a, adj_b = self._graphs(ctx)
        x = self.features.to(ctx.device)
        self.net.train()
        c = self.cfg
        while self.iteration < c.iterations:
            out = self.net(x, adj_a, adj_b)
            terms = self.step_losses(out, x)
            self.optimizer.zero_grad(set_to_none=True)
            if terms:
                torch.stack(list(terms.values())).sum().backward()
                self.optimizer.step()
            self.iteration += 1
            if c.log_every and (self.iteration % c.log_every == 0 or self.iteration == c.iterations):
                self.last_losses = {k: float(v.detach()) for k, v in terms.items()}
                ctx.print(f"iciclegcn stage 2 iteration {self.iteration}/{c.iterations}: "
                          + ", ".join(f"{k}={v:.4f}" for k, v in self.last_losses.items()))
            if self.iteration % c.checkpoint_every == 0 and self.iteration < c.iterations:
                ctx.save_checkpoint()
        self._finish(ctx, x, adj_a, adj_b)
        self.timings["stage2_s"] = time.perf_counter() - t0
        ctx.save_checkpoint()

    @torch.no_grad()
    def _finish(self, ctx: RunContext, x: torch.Tensor, adj_a: torch.Tensor, adj_b: torch.Tensor) -> None:
        self.net.eval()
        out = self.net(x, adj_a, adj_b)
        self.last_losses = {k: float(v) for k, v in self.step_losses(out, x).items()}
        g_a, g_b = torch.softmax(out["logits_a"], 1), torch.softmax(out["logits_b"], 1)
        self.final = {"a": g_a.cpu(), "b": g_b.cpu(), "mean": ((g_a + g_b) / 2).cpu(),
                      "q": student_t(out["code"], self.net.centers, self.cfg.student_t_v).cpu()}
        self.done = True

    # -- final labels ------------------------------------------------------------------------
    def _diagnostics(self, ctx: RunContext) -> dict[str, Any]:
        extra: dict[str, Any] = {"gcn_iterations": self.iteration,
                                 **{k: round(v, 6) for k, v in self.last_losses.items()}}
        extra.update({f"gcn_{k}": round(v, 3) for k, v in self.timings.items()})
        if self.resumed_at is not None:
            extra["gcn_resumed_at"] = self.resumed_at
        labels = np.asarray(ctx.dataset.labels)
        if (labels >= 0).any() and self.final is not None:  # reporting only; labels never train
            preds = {"stage1": self.stage1_labels, **{k: v.argmax(1).numpy() for k, v in self.final.items()}}
            for name, pred in preds.items():
                if pred is not None:
                    for metric, value in evaluate_clustering(labels, pred).items():
                        extra[f"{name}_{metric}"] = round(float(value), 6)
        return extra

    def _prediction(self, stream: str, extra: dict[str, Any] | None = None) -> Prediction:
        assert self.final is not None
        conf, labels = self.final[stream].max(1)
        return Prediction(labels.numpy().astype(np.int64), kind="iciclegcn_gcn", variant=stream,
                          scores=conf.numpy(), extra=extra or {})

    def candidates(self, ctx: RunContext) -> dict[str, Prediction] | None:
        """Every stream's labels (a, b, their mean, the AE's Student-t q): ``run.select`` can take
        a converged stream where the recipe's ``predict`` stream has not converged."""
        if not self.done or self.final is None:
            return None
        return {f"iciclegcn_gcn:{k}": self._prediction(k) for k in self.final}

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_state(self, ctx: RunContext) -> dict[str, Any]:
        if not self.started:
            return {self.key: {"started": False}}
        return {self.key: {
            "started": True, "done": self.done, "iteration": self.iteration,
            "features": self.features, "stage1_labels": self.stage1_labels,
            "net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "final": self.final, "last_losses": self.last_losses, "timings": self.timings,
        }}

    def load_checkpoint_state(self, state: dict[str, Any], ctx: RunContext) -> None:
        s = state.get(self.key)
        if not s or not s.get("started"):
            return
        self.started = True
        self.done = bool(s["done"])
        self.iteration = int(s["iteration"])
        self.features = s["features"]
        self.stage1_labels = s["stage1_labels"]
        self.net.load_state_dict(s["net"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.final = s["final"]
        self.last_losses = dict(s.get("last_losses", {}))
        self.timings = dict(s.get("timings", {}))
        self.graphs = None
