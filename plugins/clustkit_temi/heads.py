"""TEMI's heads and loss (docs/plugins/temi.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from clustkit import BuildContext, RunContext, StepOutputs


class TemiHeads(nn.Module):
    """``n_heads`` heads over the same features. :meth:`logits` gives all of them (H x B x K, what
    the loss reads); the forward pass gives the softmax of the head in ``best`` (what an evaluation
    that takes the argmax of this head reads), which the loss sets without labels."""

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int, hidden: int, layers: int, bottleneck: int):
        super().__init__()

        def head() -> nn.Module:
            dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
            mlp: list[nn.Module] = []
            for i in range(len(dims) - 1):
                mlp.append(nn.Linear(dims[i], dims[i + 1]))
                if i < len(dims) - 2:
                    mlp.append(nn.GELU())
            return nn.ModuleDict({"mlp": nn.Sequential(*mlp), "last": nn.Linear(bottleneck, n_clusters, bias=False)})

        self.heads = nn.ModuleList(head() for _ in range(n_heads))
        self.register_buffer("best", torch.zeros((), dtype=torch.long))
        self.out_dim = n_clusters

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([h["last"](F.normalize(h["mlp"](x), dim=1)) for h in self.heads])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.heads[int(self.best)]
        return torch.softmax(h["last"](F.normalize(h["mlp"](x), dim=1)), dim=1)


def build_temi_heads(cfg: Any, ctx: BuildContext) -> TemiHeads:
    return TemiHeads(ctx.backbone_dim, ctx.n_clusters, cfg.n_heads, cfg.hidden, cfg.layers, cfg.bottleneck)


def temi_terms(student: torch.Tensor, teacher: torch.Tensor, pk: torch.Tensor, beta: float) -> torch.Tensor:
    """TEMI's loss of each head, for V views: ``student`` and ``teacher`` are V x H x B x K
    probabilities, ``pk`` the H x K marginal estimate. Per head, the mean over ordered pairs
    (v ≠ w) and items of ``-w_i · log Σ_k (q_s(k|x_v) q_t(k|x_w))^β / p̃_k``, where the weight
    ``w_i = Σ_k q_t(k|x_a) q_t(k|x_b)`` is averaged over the teacher's view pairs a < b (detached)."""
    n_views = student.shape[0]
    with torch.no_grad():
        pairs = [(a, b) for a in range(n_views) for b in range(a + 1, n_views)]
        weight = torch.stack([(teacher[a] * teacher[b]).sum(-1) for a, b in pairs]).mean(0)  # H x B
    terms = []
    for w in range(n_views):
        for v in range(n_views):
            if v != w:
                pmi = ((student[v] * teacher[w]) ** beta / pk[:, None, :]).sum(-1).log()  # H x B
                terms.append((weight * -pmi).mean(-1))
    return torch.stack(terms).mean(0)  # H


class TemiLoss:
    """TEMI's loss on every head, the heads' mean as the training loss; tracks each head's loss
    over the epoch and, at its end, points the heads' forward pass at the lowest (label-free)."""

    def __init__(self, cfg: Any, ctx: BuildContext):
        if ctx.recipe.momentum is None or cfg.head not in ctx.recipe.momentum.heads:
            raise ctx.error("head", f"TEMI's teacher is the momentum copy of head {cfg.head!r}: add a [momentum] "
                            f"section with heads = [\"{cfg.head}\"] (TEMI: base = 0.996, final = 1.0).")
        if len(ctx.view_names) < 2:
            raise ctx.error("", f"needs two training views or more (the item and its neighbour); the view generator "
                            f"makes {list(ctx.view_names)}")
        self.cfg = cfg
        self.key = ctx.key
        self.pk: torch.Tensor | None = None  # H x K, made on the first step
        self.sums: torch.Tensor | None = None
        self.batches = 0

    def _probs(self, out: StepOutputs, ctx: RunContext, momentum: bool) -> torch.Tensor:
        c = self.cfg
        net = ctx.momentum_model if momentum else ctx.model
        temperature = c.teacher_temperature if momentum else c.student_temperature
        views = []
        for view in out.view_names:
            feats = out.target(view) if momentum else out.features(view)
            views.append(torch.softmax(net.heads[c.head].logits(feats).float() / temperature, dim=-1))
        return torch.stack(views)  # V x H x B x K

    def compute_loss(self, out: StepOutputs, ctx: RunContext) -> torch.Tensor:
        student = self._probs(out, ctx, momentum=False)
        with torch.no_grad():
            teacher = self._probs(out, ctx, momentum=True)
            batch = teacher.mean(dim=(0, 2))  # H x K: the teacher's distribution over clusters in this batch
            m = self.cfg.probs_momentum
            self.pk = torch.full_like(batch, 1.0 / batch.shape[1]) if self.pk is None else self.pk
            self.pk = m * self.pk + (1 - m) * batch
        per_head = temi_terms(student, teacher, self.pk, self.cfg.beta)
        detached = per_head.detach()
        self.sums = detached if self.sums is None else self.sums + detached
        self.batches += 1
        return per_head.mean()

    def on_epoch_start(self, ctx: RunContext) -> None:
        self.sums, self.batches = None, 0

    def on_epoch_end(self, ctx: RunContext, logs: dict[str, float]) -> None:
        if self.sums is None:
            return
        best = int(torch.argmin(self.sums))
        ctx.model.heads[self.cfg.head].best.fill_(best)
        if ctx.has_momentum and self.cfg.head in ctx.momentum_model.heads:
            ctx.momentum_model.heads[self.cfg.head].best.fill_(best)
        logs["temi_best_head"] = float(best)
        logs["temi_best_loss"] = float(self.sums[best]) / max(1, self.batches)

    def checkpoint_state(self, ctx: RunContext) -> dict[str, Any]:
        return {f"{self.key}.pk": None if self.pk is None else self.pk.cpu()}

    def load_checkpoint_state(self, state: dict[str, Any], ctx: RunContext) -> None:
        if state.get(f"{self.key}.pk") is not None:
            self.pk = state[f"{self.key}.pk"].to(ctx.device)
