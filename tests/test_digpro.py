"""DigPro plugin: each equation against a naive loop on hand-made tensors, the EMA and
double-EMA steps, checkpointed state, and a tiny end-to-end run (docs/methods/digpro.md)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from clustkit.engine.network import ema_update
from clustkit.engine.run import Run
from clustkit.errors import RecipeError
from clustkit.recipe import load
from clustkit_digpro.losses import (
    byol_loss,
    cluster_prototypes,
    group_loss,
    group_momentum_update,
    prototype_contrast,
    ring_enqueue,
)

REPO = Path(__file__).resolve().parents[1]

TINY_DIGPRO = """
[run]
name = "tiny_digpro"
seed = 0
epochs = 2
batch_size = 128
eval_batch_size = 512
checkpoint_every = 1

[data]
name = "digits"

[backbone]
name = "small_cnn"
width = 8
out_dim = 32

[heads.projector]
name = "digpro_projector"
hidden = 32
out_dim = 16

[heads.predictor]
name = "digpro_predictor"
hidden = 32

[views]
name = "tensor_affine"

[losses.byol]
name = "digpro_byol"
latent_std = 0.01

[losses.group]
name = "digpro_group"
bank_size = 256
reset_every = 5
double_ema = true

[losses.proto]
name = "digpro_proto"

[momentum]
base = 0.99
heads = ["projector"]

[optimizer]
name = "sgd"
lr = 0.05
lr_scale_batch = 256
weight_decay = 5e-4
lr_mult = { "heads.predictor" = 10.0 }

[schedule]
name = "cosine"
warmup_epochs = 1

[evaluation]
name = "kmeans"
features = "projector"
momentum = true
spherical = true
"""


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


# ----------------------------------------------------------------------------- BYOL


def test_byol_loss_value_and_gradient() -> None:
    g = _g(0)
    p = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    loss = byol_loss(p, z)
    (grad,) = torch.autograd.grad(loss, p)
    naive = sum(2 - 2 * torch.dot(_unit(p[i]), _unit(z[i])) for i in range(5)) / 5
    assert torch.allclose(loss, naive, atol=1e-12)
    # d/dp (2 - 2 cos(p, z)) = -2 (ẑ - cos·p̂) / |p|, averaged over the batch
    for i in range(5):
        ph, zh = _unit(p[i].detach()), _unit(z[i])
        expected = -2 * (zh - torch.dot(ph, zh) * ph) / p[i].detach().norm() / 5
        assert torch.allclose(grad[i], expected, atol=1e-12)
    # identical directions give 0, opposite ones 4, whatever the scale
    assert byol_loss(torch.ones(2, 3), 3 * torch.ones(2, 3)).abs().item() < 1e-6
    assert byol_loss(torch.ones(2, 3), -torch.ones(2, 3)).item() == pytest.approx(4.0)


# ----------------------------------------------------------------------------- EMA


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_engine_ema_update_matches_naive() -> None:
    online, target = _net(0), _net(1)
    online(torch.randn(8, 3))  # give the online BN running stats that differ from the target's
    before = copy.deepcopy(target)
    ema_update(target, online, 0.9)
    for (name, t), o, b in zip(target.named_parameters(), online.parameters(), before.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o), name
    for (name, t), o in zip(target.named_buffers(), online.buffers()):
        assert torch.equal(t, o), name  # buffers copied, not averaged


def test_ema_update_keeping_the_targets_own_batchnorm_statistics() -> None:
    """The reference averages parameters only (MoCo/BYOL wrappers): the target's BatchNorm
    running statistics are its own, moved by its own forward passes."""
    online, target = _net(0), _net(1)
    online(torch.randn(8, 3))
    own = {n: b.clone() for n, b in target.named_buffers()}
    before = copy.deepcopy(target)
    ema_update(target, online, 0.9, copy_buffers=False)
    for (name, t), o, b in zip(target.named_parameters(), online.parameters(), before.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o), name
    for name, t in target.named_buffers():
        assert torch.equal(t, own[name]), name


@pytest.mark.parametrize("buffers", ["copy", "own"])
def test_the_engine_step_follows_momentum_buffers(buffers: str, digpro_recipe: Path, plugin_set) -> None:
    """After a training step the target's BatchNorm statistics are the online network's ("copy"),
    or the result of the target's own forward pass on the step's views ("own")."""
    from clustkit.engine.step import train_step

    ps = plugin_set()
    run = Run(load(digpro_recipe, ps.registry, [f'momentum.buffers="{buffers}"']), ps, None).build()
    ctx = run.ctx
    losses = Run(ctx.recipe, ps, None).passes(run)["data"]
    train_step(run, next(ctx.source.train_batches(0)), losses)
    online = dict(ctx.model.named_buffers())
    means = [(n, b) for n, b in ctx.momentum_model.named_buffers() if n.endswith("running_mean")]
    assert means
    if buffers == "copy":
        assert all(torch.equal(b, online[n]) for n, b in means)
    else:  # the online and target networks saw different inputs' statistics, and so differ
        assert not any(torch.equal(b, online[n]) for n, b in means)
        assert all(b.abs().sum() > 0 for _, b in means)  # moved from the initial zeros by its own forward


def test_double_ema_equals_one_step_with_product_momentum() -> None:
    online, target = _net(0), _net(1)
    single = copy.deepcopy(target)
    ema_update(target, online, 0.996)  # engine step
    ema_update(target, online, 0.99)   # DigPro's extra lightly step
    ema_update(single, online, 0.996 * 0.99)
    for a, b in zip(target.parameters(), single.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- groups


def naive_group_update(groups: torch.Tensor, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, list[int]]:
    k = groups.shape[0]
    assign = []
    for i in range(x.shape[0]):
        sims = [torch.dot(_unit(x[i]), _unit(groups[j])).item() for j in range(k)]
        assign.append(max(range(k), key=lambda j: sims[j]))
    new = groups.clone()
    for j in range(k):
        members = [x[i] for i in range(x.shape[0]) if assign[i] == j]
        if members:
            new[j] = beta * groups[j] + (1 - beta) * torch.stack(members).mean(0)
    return new, assign


def test_group_momentum_update_matches_naive_loop() -> None:
    groups = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    # rows 0, 1 → group 0; rows 2, 3 → group 1; row 4 → group 2 (raw, un-normalised); group 3 empty
    x = torch.tensor([[2.0, 0.1, 0.0], [3.0, -0.2, 0.1], [0.1, 5.0, 0.0], [0.0, 1.0, 0.2], [0.0, 0.3, 4.0]])
    new, assign = group_momentum_update(groups, x, 0.9)
    ref, ref_assign = naive_group_update(groups, x, 0.9)
    assert assign.tolist() == ref_assign == [0, 0, 1, 1, 2]
    assert torch.allclose(new, ref)
    assert torch.equal(new[3], groups[3])  # a group without members keeps its value
    assert torch.allclose(new[0], 0.9 * groups[0] + 0.1 * torch.tensor([2.5, -0.05, 0.05]))
    g = _g(3)
    for _ in range(3):  # random inputs too
        groups, x = torch.randn(6, 5, generator=g), torch.randn(40, 5, generator=g)
        new, assign = group_momentum_update(groups, x, 0.99)
        ref, ref_assign = naive_group_update(groups, x, 0.99)
        assert assign.tolist() == ref_assign and torch.allclose(new, ref, atol=1e-6)


def naive_group_loss(pred, target, before, after, tau):
    k, n = before.shape[0], pred.shape[0]
    total = pred.new_zeros(())
    for i in range(n):
        label = max(range(k), key=lambda j: torch.dot(_unit(target[i]), _unit(before[j])).item())
        logits = [torch.dot(_unit(pred[i]), _unit(after[j])) / tau for j in range(k)]
        total = total - (logits[label] - torch.log(sum(torch.exp(v) for v in logits)))
    return total / n


def _groups_of(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1).matmul(torch.nn.functional.normalize(groups, dim=1).t()).argmax(1)


def test_group_loss_matches_naive_loop_value_and_gradient() -> None:
    g = _g(1)
    before = torch.randn(4, 6, generator=g, dtype=torch.float64)
    q = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    pred = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(10, 6, generator=g, dtype=torch.float64)
    after, _ = group_momentum_update(before, q, 0.3)  # keeps the (1-β)·mean(q) gradient path
    # a small β moves the groups enough that the target's group differs before/after the update
    assert not torch.equal(_groups_of(target, before), _groups_of(target, after.detach()))
    loss = group_loss(pred, target, before, after, 0.1)
    ref_after, _ = naive_group_update(before, q, 0.3)
    ref = naive_group_loss(pred, target, before, ref_after, 0.1)
    assert torch.allclose(loss, ref, atol=1e-10)
    grads = torch.autograd.grad(loss, (pred, q))
    ref_grads = torch.autograd.grad(ref, (pred, q))
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)
    assert grads[1].abs().sum() > 0  # the group path reaches q


def test_ring_enqueue_wraps_around() -> None:
    bank = torch.zeros(5, 2)
    ptr, filled = ring_enqueue(bank, 0, 0, torch.ones(3, 2))
    assert (ptr, filled) == (3, 3)
    ptr, filled = ring_enqueue(bank, ptr, filled, torch.arange(8.0).view(4, 2))
    assert (ptr, filled) == (2, 5)
    assert bank[:, 0].tolist() == [4.0, 6.0, 1.0, 0.0, 2.0]
    ptr, filled = ring_enqueue(bank, ptr, filled, torch.arange(14.0).view(7, 2))  # more than the bank
    assert (ptr, filled) == (0, 5) and bank[:, 0].tolist() == [4.0, 6.0, 8.0, 10.0, 12.0]


# ----------------------------------------------------------------------------- prototypes


def naive_prototype_contrast(xa, xb, labels, k, tau, absent_logit=None):
    present = sorted(set(labels.tolist()))
    va = {c: _unit(sum(xa[i] for i in range(len(labels)) if labels[i] == c)) for c in present}
    vb = {c: _unit(sum(xb[i] for i in range(len(labels)) if labels[i] == c)) for c in present}
    total = xa.new_zeros(())
    for c in present:
        pos = torch.dot(va[c], vb[c]) / tau
        terms = [torch.exp(pos)] + [torch.exp(torch.dot(va[c], va[j]) / tau) for j in present if j != c]
        if absent_logit is not None:
            terms += [torch.exp(torch.tensor(absent_logit, dtype=xa.dtype))] * (k - len(present))
        total = total - (pos - torch.log(sum(terms)))
    return total / len(present)


@pytest.mark.parametrize("absent_logit", [None, -10.0])
def test_prototype_contrast_with_absent_clusters_matches_naive(absent_logit) -> None:
    g = _g(2)
    k = 6
    labels = torch.tensor([0, 2, 2, 5, 0, 2, 5, 5, 3])  # clusters 1 and 4 absent
    xa = torch.nn.functional.normalize(torch.randn(9, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    xb = torch.nn.functional.normalize(torch.randn(9, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    va, present = cluster_prototypes(xa, labels, k)
    vb, _ = cluster_prototypes(xb, labels, k)
    assert present.tolist() == [True, False, True, True, False, True]
    assert torch.equal(va[1], torch.zeros(4, dtype=torch.float64))
    loss = prototype_contrast(va, vb, present, 0.5, absent_logit)
    ref = naive_prototype_contrast(xa, xb, labels, k, 0.5, absent_logit)
    assert torch.allclose(loss, ref, atol=1e-10)
    grads = torch.autograd.grad(loss, (xa, xb))
    ref_grads = torch.autograd.grad(ref, (xa, xb))
    for a, b in zip(grads, ref_grads):
        assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-10)


def test_prototype_contrast_single_present_cluster_is_zero() -> None:
    x = torch.nn.functional.normalize(torch.randn(4, 3, generator=_g(4)), dim=1)
    va, present = cluster_prototypes(x, torch.zeros(4, dtype=torch.long), 3)
    assert prototype_contrast(va, va, present, 0.5).item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- runs


@pytest.fixture
def digpro_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_digpro.toml"
    path.write_text(TINY_DIGPRO)
    return path


def test_recipe_without_momentum_projector_is_rejected(digpro_recipe: Path, plugin_set) -> None:
    ps = plugin_set()
    text = TINY_DIGPRO.replace('heads = ["projector"]', "heads = []")
    digpro_recipe.write_text(text)
    with pytest.raises(RecipeError, match="momentum"):
        Run(load(digpro_recipe, ps.registry), ps, None).build()


def test_double_ema_step_in_update_prototypes(digpro_recipe: Path, plugin_set) -> None:
    ps = plugin_set()
    run = Run(load(digpro_recipe, ps.registry), ps, None).build()
    ctx = run.ctx
    group = run.components.by_key["losses.group"]
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(0.1)
    from clustkit.engine.step import StepOutputs

    x, y, idx = next(ctx.source.train_batches(0))
    out = StepOutputs(ctx, x, y, idx, ctx.make_views(x, train=True))
    online = dict(ctx.model.named_parameters())

    def run_hook(step: int) -> dict[str, torch.Tensor]:
        before = {n: p.clone() for n, p in ctx.momentum_model.named_parameters()}
        ctx.step = step  # update_prototypes runs after the step counter moved on
        with torch.no_grad():
            group.update_prototypes(out=out, ctx=ctx)
        return before

    before = run_hook(step=3)  # next iteration n_iter = 4: not a reset iteration (period 5)
    for n, p in ctx.momentum_model.named_parameters():
        assert torch.allclose(p, 0.99 * before[n] + 0.01 * online[n]), n
    before = run_hook(step=4)  # next iteration n_iter = 5 is a reset iteration: no extra step
    for n, p in ctx.momentum_model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert group.filled == 256 and group.ptr == 0  # 2 views × 128 rows fill the 256-row bank exactly


@pytest.mark.parametrize("reset_n_init", [None, 1])
def test_group_reset_runs_the_groupers_kmeans_with_its_restarts(reset_n_init, digpro_recipe: Path, plugin_set) -> None:
    """The bank's k-means takes ``reset_n_init`` restarts when set, else the [grouping] section's
    (3 by default): its unit centroids are those of clustkit's k-means with that many restarts and
    the seed."""
    from clustkit.cluster.kmeans import kmeans

    ps = plugin_set()
    extra = [] if reset_n_init is None else [f"losses.group.reset_n_init={reset_n_init}"]
    run = Run(load(digpro_recipe, ps.registry, extra), ps, None).build()
    ctx = run.ctx
    group = run.components.by_key["losses.group"]
    group.bank.copy_(torch.randn(256, 16, generator=_g(2)))  # no clusters: restarts end in different optima
    group.filled = 256
    assert group.reset_groups(ctx, n_iter=20)
    grouping = ctx.recipe.grouping
    assert grouping.n_init == 3  # the grouper's default, so the two cases differ
    for n_init in (1, grouping.n_init):
        want = kmeans(group.bank, 10, n_init=n_init, max_iter=grouping.max_iter, seed=ctx.seed * 1_000_003 + 20)
        same = torch.allclose(group.groups, torch.nn.functional.normalize(torch.as_tensor(want.centroids), dim=1))
        assert same == (n_init == (reset_n_init or grouping.n_init)), n_init


def test_tiny_run_end_to_end_and_checkpoint_round_trip(digpro_recipe: Path, plugin_set, tmp_path: Path) -> None:
    ps = plugin_set()
    out = tmp_path / "run"
    summary = Run(load(digpro_recipe, ps.registry), ps, out).execute()
    assert summary["epochs"] == 2 and summary["n_clusters"] == 10
    assert summary["selection"]["recipe"] == "kmeans:momentum/projector"  # k-means on the target's projector
    assert {"kmeans:projector", "kmeans:momentum/backbone", "kmeans:predictor"} <= set(summary["candidates"])
    assert 0.0 <= summary["acc"] <= 1.0 and summary["nmi"] > 0.05  # learned something in 2 tiny epochs
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["components"]
    groups, bank = state["losses.group.groups"], state["losses.group.bank"]
    labels = state["losses.proto.pseudo_labels"]
    assert groups.shape == (10, 16) and bank.shape == (256, 16)
    assert state["losses.group.filled"] == 256 and state["losses.group.resets"] >= 5
    assert torch.allclose(groups.norm(dim=1), torch.ones(10), atol=0.5)  # reset to unit centroids, then nudged
    assert state["losses.proto.labelled_epoch"] == 1  # E-step at the start of the second epoch (warm-up 1)
    assert labels.shape == (1797,) and labels.min() >= 0 and len(labels.unique()) > 1

    # a fresh run restores every piece of state
    run2 = Run(load(digpro_recipe, ps.registry), ps, out).build()
    group, proto = run2.components.by_key["losses.group"], run2.components.by_key["losses.proto"]
    assert not torch.equal(group.groups.cpu(), groups)
    assert run2.checkpointer.restore(run2)
    assert torch.equal(group.groups.cpu(), groups) and torch.equal(group.bank.cpu(), bank)
    assert (group.ptr, group.filled, group.resets) == (state["losses.group.ptr"], 256, state["losses.group.resets"])
    assert torch.equal(proto.pseudo_labels.cpu(), labels) and proto.labelled_epoch == 1

    logs = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert '"proto"' in logs[-1] and '"group"' in logs[-1] and '"byol"' in logs[-1]


def test_zero_weight_term_is_not_built(digpro_recipe: Path, plugin_set) -> None:
    ps = plugin_set()
    run = Run(load(digpro_recipe, ps.registry, ["losses.proto.weight=0", "losses.group.weight=0"]), ps, None).build()
    assert "losses.proto" not in run.components.by_key and "losses.group" not in run.components.by_key
    assert "losses.byol" in run.components.by_key


@pytest.mark.parametrize("dataset", ["imagenet10", "imagenet_dogs", "tiny_imagenet"])
def test_paper_setting_recipes_follow_the_reference_target_network(dataset: str, plugin_set) -> None:
    """The authors' code takes a second EMA step (0.99) on non-reset iterations and averages only
    the parameters of the target network: the paper-setting recipes do both (docs/plugins/digpro.md)."""
    recipe = load(REPO / "recipes" / dataset / "digpro.toml", plugin_set().registry)
    assert recipe.losses["group"].double_ema and recipe.losses["group"].double_ema_momentum == 0.99
    assert recipe.momentum is not None and recipe.momentum.buffers == "own"
