"""DigPro's three losses (imported only when a recipe builds them).

The equations are pure functions at the top (tested against naive loops in tests/test_digpro.py);
the components below wire them to the hooks and hold the state (group features, memory bank,
pseudo-labels) that checkpoints carry.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clustkit import BuildContext, RunContext, StepOutputs, ema_update

from .heads import head_out_dim

# ----------------------------------------------------------------------------- equations


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean of 2 - 2·cos(p_i, z_i) (BYOL; DigPro writes -2·cos, the same up to a constant)."""
    return (2.0 - 2.0 * F.cosine_similarity(p, z, dim=1, eps=1e-12)).mean()


def cosine_logits(x: torch.Tensor, groups: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """cos(x_i, G_j) / temperature for N×D x and K×D groups."""
    return F.normalize(x, dim=1) @ F.normalize(groups, dim=1).t() / temperature


def group_momentum_update(groups: torch.Tensor, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SMoG's synchronous momentum update (lightly ``SMoGPrototypes.get_updated_group_features``).

    Each row of ``x`` (raw online projections) joins the group of highest cosine; every group
    that received members becomes β·G_j + (1-β)·mean(members), the others are unchanged.
    Differentiable in ``x`` (lightly's update is not under no_grad). Returns (new groups,
    assignments).
    """
    with torch.no_grad():
        assign = cosine_logits(x, groups).argmax(dim=1)
    k = groups.shape[0]
    counts = torch.bincount(assign, minlength=k).to(x.dtype)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, assign, x)
    means = sums / counts.clamp(min=1.0)[:, None]
    updated = beta * groups + (1.0 - beta) * means
    return torch.where((counts > 0)[:, None], updated, groups), assign


def group_loss(pred: torch.Tensor, target: torch.Tensor, groups_before: torch.Tensor, groups_after: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """CE(cos(pred, G') / τ, argmax_j cos(target, G_j)): the target network picks each sample's
    group among the groups *before* this batch's update; the logits use the updated groups."""
    with torch.no_grad():
        labels = cosine_logits(target, groups_before).argmax(dim=1)
    return F.cross_entropy(cosine_logits(pred, groups_after, temperature), labels)


def cluster_prototypes(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised mean of the rows of ``x`` per label (zero rows for absent labels) and the
    presence mask (ProPos ``compute_centers``)."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, labels, x)
    present = torch.bincount(labels, minlength=k) > 0
    return F.normalize(sums, dim=1), present


def prototype_contrast(v_a: torch.Tensor, v_b: torch.Tensor, present: torch.Tensor, temperature: float,
                       absent_logit: float | None = None) -> torch.Tensor:
    """ProPos' prototype scattering loss on K×D online (v_a) and target (v_b) prototypes.

    For each present cluster c: positive v_a[c]·v_b[c] / τ, negatives v_a[c]·v_a[j] / τ for the
    other present clusters j; mean over present clusters. Absent clusters contribute no loss
    and, as negatives, are excluded (``absent_logit=None``) or get that constant logit (the
    reference uses -10).
    """
    k = v_a.shape[0]
    eye = torch.eye(k, dtype=torch.bool, device=v_a.device)
    pos = (v_a * v_b).sum(dim=1) / temperature
    sim = torch.where(eye, pos[:, None].expand(k, k), v_a @ v_a.t() / temperature)
    fill = float("-inf") if absent_logit is None else float(absent_logit)
    sim = sim.masked_fill(~present[None, :] & ~eye, fill)
    per_cluster = torch.logsumexp(sim, dim=1) - pos
    return per_cluster[present].mean()


@torch.no_grad()
def ring_enqueue(bank: torch.Tensor, ptr: int, filled: int, x: torch.Tensor) -> tuple[int, int]:
    """Write the rows of ``x`` into the (size × dim) ring buffer ``bank`` at ``ptr``, wrapping
    around; returns the new (ptr, filled)."""
    size = bank.shape[0]
    n = x.shape[0]
    if n >= size:
        bank.copy_(x[-size:])
        return 0, size
    idx = (ptr + torch.arange(n, device=bank.device)) % size
    bank[idx] = x.to(bank.dtype)
    return (ptr + n) % size, min(size, filled + n)


# ----------------------------------------------------------------------------- losses


class _DigProLoss:
    """The checks every DigPro loss needs: a momentum copy of the projector, and (BYOL, groups) a
    ``digpro_predictor`` head that reads the projector."""

    needs_predictor = False

    def __init__(self, cfg: Any, ctx: BuildContext):
        self.cfg = cfg
        self.key = ctx.key  # prefixes this component's checkpoint state
        self.term = ctx.key.rsplit(".", 1)[-1]  # names its entries in the epoch logs
        r = ctx.recipe
        head_out_dim(ctx, cfg.projector)
        if r.momentum is None or cfg.projector not in r.momentum.heads:
            raise ValueError(f"needs a momentum copy of head {cfg.projector!r}: add [momentum] with "
                             f"heads = [\"{cfg.projector}\"]")
        if self.needs_predictor:
            if r.heads[cfg.predictor].name != "digpro_predictor":
                raise ValueError(f"names predictor {cfg.predictor!r}, which is not a digpro_predictor head "
                                 f"of this recipe")
            if r.heads[cfg.predictor].input != cfg.projector:
                raise ValueError(f"predictor {cfg.predictor!r} reads head {r.heads[cfg.predictor].input!r}, "
                                 f"not the projector {cfg.projector!r}")

    def directions(self) -> list[tuple[str, str]]:
        a, b = self.cfg.views
        return [(a, b), (b, a)] if self.cfg.symmetric else [(a, b)]

    def target(self, out: StepOutputs, view: str) -> torch.Tensor:
        return F.normalize(out.target(view, self.cfg.projector), dim=1)


class BYOLLoss(_DigProLoss):
    """Instance alignment 2 - 2·cos(pred(q + ε), k), ε ~ N(0, σ²) after the warm-up (ProPos PSA)."""

    needs_predictor = True

    def __init__(self, cfg: Any, ctx: BuildContext):
        super().__init__(cfg, ctx)
        after = cfg.noise_after_epochs
        self.noise_after = ctx.recipe.schedule.warmup_epochs if after is None else after

    def noise_std(self, ctx: RunContext) -> float:
        return self.cfg.latent_std if ctx.epoch >= self.noise_after else 0.0

    def compute_loss(self, out: StepOutputs, ctx: RunContext) -> torch.Tensor | dict[str, torch.Tensor]:
        std = self.noise_std(ctx)
        predictor = ctx.model.heads[self.cfg.predictor]
        losses = []
        for u, v in self.directions():
            if std > 0:
                q = out.head(u, self.cfg.projector)
                p = predictor(q + std * torch.randn_like(q))
            else:  # no noise: share pred(q) with the group loss
                p = out.head(u, self.cfg.predictor)  # reads the projector (Predictor.input_head)
            losses.append(byol_loss(p, self.target(out, v)))
        return torch.stack(losses).mean()


class GroupLoss(_DigProLoss):
    """SMoG dynamic grouping (lightly ``SMoGPrototypes`` as DigPro uses it).

    Per direction (q = online view u, k = target view v): g* = argmax cos(k, G); G' = momentum
    update of G with the members of each group by cos(q, G); loss CE(cos(pred(q), G')/τ, g*).
    The symmetric pass starts from G' (detached). The final G' is committed in
    ``update_prototypes`` together with the memory-bank update; every ``reset_every``
    iterations G is re-initialised by k-means over the bank (``ctx.group``: FAISS or torch).
    """

    needs_predictor = True

    def __init__(self, cfg: Any, ctx: BuildContext):
        super().__init__(cfg, ctx)
        dim = head_out_dim(ctx, cfg.projector)
        self.k = cfg.n_groups or ctx.n_clusters
        self.reset_every = cfg.reset_every or self.k
        if cfg.bank_size < self.k:
            raise ValueError(f"bank_size {cfg.bank_size} is smaller than the {self.k} groups")
        dev = ctx.device
        # DigPro initialises the groups with torch.rand (uniform in [0, 1)); the first reset replaces them.
        self.groups = torch.rand(self.k, dim, device=dev)
        # lightly's old MemoryBankModule stored the bank as (dim × size) and DigPro transposes it before
        # k-means; here the bank is (size × dim): one row per stored projection, clustered as is.
        self.bank = torch.zeros(cfg.bank_size, dim, device=dev)
        self.ptr = 0
        self.filled = 0
        self.resets = 0
        self._pending: tuple[int, torch.Tensor] | None = None  # (step, G') until update_prototypes

    # iteration numbers are 1-based as in the reference (n_iter): reset when n > 1 and n % period == 0
    def is_reset_iteration(self, n_iter: int) -> bool:
        return n_iter > 1 and n_iter % self.reset_every == 0

    def reset_groups(self, ctx: RunContext, n_iter: int) -> bool:
        if self.filled < self.k:
            return False
        bank = self.bank[: self.filled] if self.filled < self.bank.shape[0] else self.bank
        result = ctx.group(bank.detach().cpu(), self.k, spherical=self.cfg.reset_spherical,
                           seed=ctx.seed * 1_000_003 + n_iter, n_init=self.cfg.reset_n_init)
        centroids = torch.as_tensor(result.centroids, dtype=self.groups.dtype, device=self.groups.device)
        self.groups = F.normalize(centroids, dim=1)
        self.resets += 1
        return True

    def compute_loss(self, out: StepOutputs, ctx: RunContext) -> torch.Tensor | dict[str, torch.Tensor]:
        n_iter = ctx.step + 1
        if self.is_reset_iteration(n_iter):
            self.reset_groups(ctx, n_iter)
        groups = self.groups
        losses = []
        for u, v in self.directions():
            q = out.head(u, self.cfg.projector)
            if not self.cfg.grad_through_groups:
                q = q.detach()
            updated, _ = group_momentum_update(groups, q, self.cfg.beta)
            pred = out.head(u, self.cfg.predictor)  # reads the projector (Predictor.input_head)
            losses.append(group_loss(pred, self.target(out, v), groups, updated, self.cfg.temperature))
            groups = updated.detach()
        self._pending = (ctx.step, groups)
        return torch.stack(losses).mean()

    def update_prototypes(self, out: StepOutputs, ctx: RunContext) -> None:
        if self._pending is not None and self._pending[0] == ctx.step - 1:
            self.groups = self._pending[1]
        self._pending = None
        a, b = self.cfg.views
        q = torch.cat([out.head(a, self.cfg.projector), out.head(b, self.cfg.projector)]).detach()
        self.ptr, self.filled = ring_enqueue(self.bank, self.ptr, self.filled, F.normalize(q.float(), dim=1))
        if self.cfg.double_ema and not self.is_reset_iteration(ctx.step + 1):
            ema_update(ctx.momentum_model, ctx.model, self.cfg.double_ema_momentum,
                       ctx.recipe.momentum.buffers == "copy")

    def on_epoch_end(self, ctx: RunContext, logs: dict[str, float]) -> None:
        logs[f"{self.term}_resets"] = float(self.resets)

    def checkpoint_state(self, ctx: RunContext) -> dict[str, Any]:
        return {f"{self.key}.groups": self.groups.cpu(), f"{self.key}.bank": self.bank.cpu(),
                f"{self.key}.ptr": self.ptr, f"{self.key}.filled": self.filled, f"{self.key}.resets": self.resets}

    def load_checkpoint_state(self, state: dict[str, Any], ctx: RunContext) -> None:
        if f"{self.key}.groups" not in state:
            return
        self.groups = state[f"{self.key}.groups"].to(self.groups.device)
        self.bank.copy_(state[f"{self.key}.bank"])
        self.ptr = int(state[f"{self.key}.ptr"])
        self.filled = int(state[f"{self.key}.filled"])
        self.resets = int(state[f"{self.key}.resets"])


class ProtoLoss(_DigProLoss):
    """Prototype aggregation (ProPos' prototype scattering loss with DigPro's E-step).

    E-step (``on_epoch_start``, from ``start_epoch`` on, every ``reassign_every`` epochs):
    spherical k-means over the whole dataset's L2-normalised momentum projector features gives
    a pseudo-label per index. Per batch and direction: online (v^a) and target (v^b)
    prototypes of the pseudo-clusters present, contrasted with ``prototype_contrast``.
    """

    def __init__(self, cfg: Any, ctx: BuildContext):
        super().__init__(cfg, ctx)
        self.k = cfg.n_clusters or ctx.n_clusters
        start = cfg.start_epoch
        self.start = ctx.recipe.schedule.warmup_epochs if start is None else start
        self.pseudo_labels = torch.full((ctx.n_items,), -1, dtype=torch.long, device=ctx.device)
        self.labelled_epoch = -1  # epoch of the last E-step

    def active(self, ctx: RunContext) -> bool:
        return ctx.epoch >= self.start

    def on_epoch_start(self, ctx: RunContext) -> None:
        if not self.active(ctx):
            return
        due = self.labelled_epoch < 0 or ctx.epoch - self.labelled_epoch >= self.cfg.reassign_every
        if not due:
            return
        # each rank extracts and clusters its shard of the items; the labels come back for all of them
        feats, rows = ctx.extract_shard(self.cfg.projector, momentum=True)
        result = ctx.group(F.normalize(feats, dim=1), self.k, spherical=True, rows=rows)
        self.pseudo_labels.copy_(torch.as_tensor(result.labels, dtype=torch.long))
        self.labelled_epoch = ctx.epoch

    def compute_loss(self, out: StepOutputs, ctx: RunContext) -> torch.Tensor | dict[str, torch.Tensor]:
        if not self.active(ctx):
            return {}
        if self.labelled_epoch < 0:  # e.g. start_epoch changed on resume: label now
            self.on_epoch_start(ctx)
        labels = self.pseudo_labels[out.index.to(self.pseudo_labels.device)].to(ctx.device)
        losses = []
        for u, v in self.directions():
            v_a, present = cluster_prototypes(F.normalize(out.head(u, self.cfg.projector), dim=1), labels, self.k)
            v_b, _ = cluster_prototypes(self.target(out, v), labels, self.k)
            losses.append(prototype_contrast(v_a, v_b, present, self.cfg.temperature, self.cfg.absent_logit))
        return torch.stack(losses).mean()

    def checkpoint_state(self, ctx: RunContext) -> dict[str, Any]:
        return {f"{self.key}.pseudo_labels": self.pseudo_labels.cpu(),
                f"{self.key}.labelled_epoch": self.labelled_epoch}

    def load_checkpoint_state(self, state: dict[str, Any], ctx: RunContext) -> None:
        if f"{self.key}.pseudo_labels" not in state:
            return
        self.pseudo_labels.copy_(state[f"{self.key}.pseudo_labels"])
        self.labelled_epoch = int(state[f"{self.key}.labelled_epoch"])
