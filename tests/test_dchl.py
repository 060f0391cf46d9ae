"""DCHL plugin: in-batch k-means and the group terms against naive loops written from the formulas
(docs/methods/dchl.md), K_f >= batch handling, zero-weight terms, the shared trunk, a tiny run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from clustkit import BuildContext, ClusterContrast, ClusterContrastConfig, InstanceContrast, InstanceContrastConfig
from clustkit.errors import RecipeError
from clustkit_dchl import GroupConfig
from clustkit_dchl import group_loss as C
from conftest import REPO, FakeOut, run_recipe

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


D = torch.float64  # exact comparisons


# ----------------------------------------------------------------------------- naive references


def naive_kmeans(points: list[list[float]], k: int, iters: int) -> tuple[list[int], list[list[float]]]:
    """Lloyd's algorithm on plain Python lists, straight from the description."""
    n, d = len(points), len(points[0])
    cents = [list(p) for p in points[: min(k, n)]]
    labels = [0] * n
    for _ in range(iters):
        for i, p in enumerate(points):
            best, best_d = 0, None
            for j, c in enumerate(cents):
                dist = sum((p[t] - c[t]) ** 2 for t in range(d))
                if best_d is None or dist < best_d:
                    best, best_d = j, dist
            labels[i] = best
        new = []
        for j in range(k):
            members = [points[i] for i in range(n) if labels[i] == j]
            count = max(1, len(members))
            new.append([sum(m[t] for m in members) / count for t in range(d)])
        cents = new
    return labels, cents


def naive_centroids(g: torch.Tensor, labels: list[int], k: int) -> torch.Tensor:
    """Differentiable centroids by explicit loops (mean of members, zero when empty)."""
    rows = []
    for j in range(k):
        members = [g[i] for i in range(g.shape[0]) if labels[i] == j]
        rows.append(sum(members) / len(members) if members else torch.zeros(g.shape[1], dtype=g.dtype))
    return torch.stack(rows)


def naive_group_term(q_a, q_b, l_a, l_b, c_a, c_b, tau: float) -> torch.Tensor:
    """1/2 [mean_i CE(q_b[i] . C_a / tau, l_b[i]) + mean_i CE(q_a[i] . C_b / tau, l_a[i])] by loops."""
    def one(q, cents, labels):
        total = 0
        for i in range(q.shape[0]):
            logits = [sum(q[i][t] * cents[j][t] for t in range(q.shape[1])) / tau for j in range(cents.shape[0])]
            log_den = torch.log(sum(torch.exp(v) for v in logits))
            total = total - (logits[labels[i]] - log_den)
        return total / q.shape[0]
    return 0.5 * (one(q_b, c_a, l_b) + one(q_a, c_b, l_a))


def fake_ctx(key: str = "losses.group", batch: int = 256, views=("weak1", "weak2", "strong")) -> BuildContext:
    recipe = SimpleNamespace(path="t.toml", heads={"instance": 0, "cluster": 0, "fine": 0},
                             run=SimpleNamespace(batch_size=batch), views=SimpleNamespace(name="fake"))
    return BuildContext(recipe, key, torch.device("cpu"), view_names=tuple(views))


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


# ----------------------------------------------------------------------------- k-means


def test_kmeans_hand_made_points_need_several_iterations():
    g = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]], dtype=D)
    labels, cents = C.batch_kmeans(g, 2, iters=5)
    assert labels.tolist() == [0, 0, 1, 1]
    assert torch.allclose(cents, torch.tensor([[0.5, 0.0], [10.5, 0.0]], dtype=D))
    labels1, _ = C.batch_kmeans(g, 2, iters=1)  # one Lloyd step: 1 still with its own init
    assert labels1.tolist() == [0, 1, 1, 1]


def test_kmeans_empty_group_gets_zero_centroid():
    g = torch.tensor([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0]], dtype=D)
    labels, cents = C.batch_kmeans(g, 3, iters=5)
    assert labels.tolist() == [0, 0, 2]  # tie -> lowest index; group 1 empty
    assert torch.equal(cents, torch.tensor([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0]], dtype=D))


@pytest.mark.parametrize("n,k,iters,seed", [(12, 3, 5, 0), (20, 4, 5, 1), (16, 16, 5, 2), (6, 10, 5, 3), (9, 2, 1, 4)])
def test_kmeans_matches_naive_reference(n, k, iters, seed):
    g = unit(n, 3, seed)
    labels, cents = C.batch_kmeans(g, k, iters)
    ref_labels, ref_cents = naive_kmeans(g.tolist(), k, iters)
    assert labels.tolist() == ref_labels
    assert cents.shape == (k, 3)
    assert torch.allclose(cents, torch.tensor(ref_cents, dtype=D), atol=1e-12)


def test_kmeans_with_more_groups_than_samples_makes_singletons():
    g = unit(5, 4, 7)
    labels, cents = C.batch_kmeans(g, 8, iters=5)
    assert labels.tolist() == [0, 1, 2, 3, 4]
    assert torch.allclose(cents[:5], g) and torch.equal(cents[5:], torch.zeros(3, 4, dtype=D))


def test_kmeans_with_duplicate_rows_and_more_groups_than_samples_matches_naive_reference():
    g = unit(6, 3, 8)
    g[4] = g[1]  # an exact duplicate: not every row is its own group, so the Lloyd steps must run
    labels, cents = C.batch_kmeans(g, 9, iters=5)
    ref_labels, ref_cents = naive_kmeans(g.tolist(), 9, 5)
    assert labels.tolist() == ref_labels == [0, 1, 2, 3, 1, 5]
    assert torch.allclose(cents, torch.tensor(ref_cents, dtype=D), atol=1e-12)


def test_kmeans_singleton_groups_pass_gradients_straight_through():
    g = unit(7, 3, 9).requires_grad_(True)
    w = torch.randn(10, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, cents = C.batch_kmeans(g, 10, 5)
    (cents * w).sum().backward()
    assert torch.equal(g.grad, w[:7])  # each centroid is its one member


def test_kmeans_centroids_carry_gradients():
    g = unit(14, 3, 5).requires_grad_(True)
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _labels, cents = C.batch_kmeans(g, 4, 5)
    (cents * w).sum().backward()
    g2 = g.detach().clone().requires_grad_(True)
    ref_labels, _ = naive_kmeans(g2.tolist(), 4, 5)
    (naive_centroids(g2, ref_labels, 4) * w).sum().backward()
    assert g.grad is not None and g.grad.abs().sum() > 0
    assert torch.allclose(g.grad, g2.grad, atol=1e-12)


# ----------------------------------------------------------------------------- losses


def heads3(n: int = 10, k: int = 3, d: int = 4, seed: int = 0) -> dict[tuple[str, str], torch.Tensor]:
    out = {}
    for i, v in enumerate(("weak1", "weak2", "strong")):
        out[(v, "instance")] = unit(n, d, seed * 10 + i).requires_grad_(True)
        out[(v, "fine")] = unit(n, d, seed * 10 + i + 5).requires_grad_(True)
        logits = torch.randn(n, k, generator=torch.Generator().manual_seed(seed * 10 + i + 7), dtype=torch.float64)
        out[(v, "cluster")] = torch.softmax(logits, 1).detach().requires_grad_(True)
    return out


def grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=True))


def assert_same(a: torch.Tensor, b: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    assert torch.allclose(a, b, atol=1e-10), (float(a), float(b))
    for ga, gb in zip(grads(a, inputs), grads(b, inputs)):
        if ga is None or gb is None:
            assert (ga is None or ga.abs().max() < 1e-12) and (gb is None or gb.abs().max() < 1e-12)
        else:
            assert torch.allclose(ga, gb, atol=1e-10)


def test_dchl_registers_the_core_contrasts_under_its_names(plugin_set):
    """L_ins and L_clu are CC's two contrasts (tested against naive loops in test_losses.py)."""
    registry = plugin_set().registry
    for name, cls, config in (("dchl_instance", InstanceContrast, InstanceContrastConfig),
                              ("dchl_cluster", ClusterContrast, ClusterContrastConfig)):
        spec = registry.get("loss", name)
        assert spec.build(spec.config_model()(name=name), fake_ctx()).__class__ is cls
        assert spec.config_model() is config


@pytest.mark.parametrize("k", [3, 4, 12])  # 12 >= batch 10: the degenerate (reference) case
def test_self_and_cross_terms_match_naive_loops(k):
    h = heads3(n=10)
    pairs = [("weak1", "weak2"), ("weak2", "strong")]
    cfg = GroupConfig(name="dchl_group", pairs=pairs, groups=k, temperature=0.2, self_weight=0.5, cross_weight=2.0,
                      weight=1.5, allow_degenerate=True)
    terms = C.DCHLGroup(cfg, fake_ctx(batch=10)).compute_loss(FakeOut(h), None)
    assert set(terms) == {"self", "cross"}  # the engine names them group_self, group_cross and applies weight
    km = {}
    for v in ("weak1", "weak2", "strong"):
        labels, _ = naive_kmeans(h[(v, "fine")].tolist(), k, 5)
        km[v] = (labels, naive_centroids(h[(v, "fine")], labels, k))
    for term, w, head in (("self", 0.5, "fine"), ("cross", 2.0, "instance")):
        ref = w * sum(naive_group_term(h[(u, head)], h[(v, head)], km[u][0], km[v][0], km[u][1], km[v][1], 0.2)
                            for u, v in pairs)
        inputs = [h[(v, x)] for v in ("weak1", "weak2", "strong") for x in ("fine", "instance")]
        assert_same(terms[term], ref, inputs)


def test_group_discrimination_formula_direction():
    """Query of view b against view a's centroids with view b's own labels (and vice versa)."""
    q_a, q_b = unit(6, 3, 1), unit(6, 3, 2)
    l_a, l_b = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    c_a, c_b = unit(3, 3, 3) * 0.5, unit(3, 3, 4) * 0.5
    value = C.group_discrimination(q_a, q_b, l_a, l_b, c_a, c_b, 0.2)
    ref = naive_group_term(q_a, q_b, l_a.tolist(), l_b.tolist(), c_a, c_b, 0.2)
    assert torch.allclose(value, ref, atol=1e-12)
    swapped = naive_group_term(q_a, q_b, l_b.tolist(), l_a.tolist(), c_a, c_b, 0.2)
    assert not torch.allclose(value, swapped)


def test_zero_weight_terms_are_not_computed(monkeypatch):
    calls = []
    real = C.batch_kmeans
    monkeypatch.setattr(C, "batch_kmeans", lambda g, k, i: calls.append(1) or real(g, k, i))
    h = heads3()
    pairs = [("weak1", "weak2"), ("weak2", "strong")]
    only_cross = C.DCHLGroup(GroupConfig(name="dchl_group", pairs=pairs, groups=3, self_weight=0), fake_ctx())
    assert set(only_cross.compute_loss(FakeOut(h), None)) == {"cross"}
    assert len(calls) == 3  # one k-means per view, shared by both pairs
    calls.clear()
    none = C.DCHLGroup(GroupConfig(name="dchl_group", pairs=pairs, groups=3, self_weight=0, cross_weight=0), fake_ctx())
    assert none.compute_loss(FakeOut(h), None) == {} and calls == []


def test_groups_at_or_above_batch_size_are_rejected_with_the_key_named():
    with pytest.raises(RecipeError) as err:
        C.DCHLGroup(GroupConfig(name="dchl_group", groups=256), fake_ctx(batch=256))
    assert "losses.group.groups" in str(err.value) and "256" in str(err.value) and "allow_degenerate" in str(err.value)
    C.DCHLGroup(GroupConfig(name="dchl_group", groups=400, allow_degenerate=True), fake_ctx(batch=256))
    C.DCHLGroup(GroupConfig(name="dchl_group", groups=255), fake_ctx(batch=256))


def test_pairs_naming_missing_views_are_rejected():
    with pytest.raises(RecipeError, match=r"losses.group.pairs\[0\].*'strong'"):
        C.DCHLGroup(GroupConfig(name="dchl_group", pairs=[("weak1", "strong")]), fake_ctx(views=("weak1", "weak2")))


# ----------------------------------------------------------------------------- through the engine


def test_recipe_build_shares_the_trunk_and_rejects_big_kf(plugin_set):
    from clustkit.engine.run import Run
    from clustkit.recipe import load

    ps = plugin_set()
    recipe = load(REPO / "recipes" / "dchl.toml", ps.registry, ["backbone.width=8"])
    run = Run(recipe, ps, None).build()
    heads = run.ctx.model.heads
    assert heads["cluster"].trunk is heads["fine"].trunk
    n_opt = sum(p.numel() for g in run.optimizer.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in run.ctx.model.parameters())  # shared trunk counted once
    assert {"losses.instance", "losses.cluster", "losses.group"} <= set(run.components.by_key)
    zero = load(REPO / "recipes" / "dchl.toml", ps.registry, ["backbone.width=8", "losses.group.weight=0"])
    assert "losses.group" not in Run(zero, ps, None).build().components.by_key
    big = load(REPO / "recipes" / "dchl.toml", ps.registry, ["losses.group.allow_degenerate=false"])
    with pytest.raises(RecipeError, match="losses.group.groups.*run.batch_size is 128"):
        Run(big, ps, None).build()


def test_tiny_dchl_run_end_to_end(plugin_set, tmp_path: Path):
    summary = run_recipe(REPO / "recipes" / "dchl.toml", plugin_set(), tmp_path / "run", [
        "run.epochs=1", "run.batch_size=128", "run.eval_every=0", "backbone.width=8", "backbone.out_dim=32",
        "heads.instance.hidden=[32]", "heads.cluster.hidden=32", "heads.fine.hidden=32", "losses.group.groups=8",
        "losses.group.allow_degenerate=false"])
    assert summary["epochs"] == 1 and 0 <= summary["acc"] <= 1
    history = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "group_self" in history and "group_cross" in history


def test_dchl_without_its_group_branch_is_cc_bit_for_bit(plugin_set, tmp_path: Path):
    """DCHL's instance and coarse terms are CC's losses: with the group term and the fine head
    (which only that term reads) left out, three training steps of recipes/dchl.toml give exactly
    the loss values of recipes/cc.toml (same seed, same views, same parameters). At group weight
    0 the term is not built; the fine head would still be, and its initialisation draws from the
    RNG, so the runs would differ only by that draw."""
    import re

    from clustkit.engine.run import Run
    from clustkit.engine.step import train_step
    from clustkit.recipe import load

    text = (REPO / "recipes" / "dchl.toml").read_text()
    for table in ("heads.fine", "losses.group"):
        text = re.sub(rf"\[{re.escape(table)}\]\n(.*\n)*?\n", "", text, count=1)
    assert "[heads.fine]" not in text and "[losses.group]" not in text
    path = tmp_path / "dchl_no_fine.toml"
    path.write_text(text)
    ps = plugin_set()

    def three_steps(recipe: Path, extra: list[str]) -> list[dict[str, float]]:
        run = Run(load(recipe, ps.registry, ["backbone.width=8", *extra]), ps, None)
        state = run.build()
        losses, batches = run.passes(state)["data"], state.ctx.source.train_batches(0)
        return [{k: float(v) for k, v in train_step(state, next(batches), losses).items()} for _ in range(3)]

    dchl, cc = three_steps(path, []), three_steps(REPO / "recipes" / "cc.toml", [])
    assert dchl == cc and set(cc[0]) == {"instance", "cluster", "loss"}
