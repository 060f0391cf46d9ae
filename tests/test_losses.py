"""The shared CC-family losses against naive loops written from the formulas (docs/methods/cc.md):
the equations, the one instance- and cluster-contrast component that CC, SACC, DCHL and IcicleGCN
register, and how the engine names and weights the terms a loss returns."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from clustkit import (
    BuildContext,
    ClusterContrast,
    ClusterContrastConfig,
    InstanceContrast,
    InstanceContrastConfig,
    RecipeError,
)
from clustkit.engine.step import loss_terms
from clustkit.losses.contrast import assignment_entropy_gap, cluster_contrast, nt_xent
from conftest import FakeOut
from naive import naive_cluster_contrast, naive_nt_xent


def _pair(n: int, d: int, seed: int, softmax: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, generator=g, dtype=torch.float64)
    if softmax:
        a, b = a.softmax(1), b.softmax(1)
    return a.requires_grad_(), b.requires_grad_()


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.5), (5, 4, 0.5), (7, 8, 0.1), (4, 2, 1.0)])
def test_nt_xent_matches_naive_value_and_gradient(n: int, d: int, tau: float) -> None:
    a, b = _pair(n, d, seed=n * 10 + d)
    fast = nt_xent(a, b, tau)
    ga, gb = torch.autograd.grad(fast, (a, b))
    ref = naive_nt_xent(a, b, tau)
    ra, rb = torch.autograd.grad(ref, (a, b))
    assert torch.allclose(fast, ref, atol=1e-10)
    assert torch.allclose(ga, ra, atol=1e-10) and torch.allclose(gb, rb, atol=1e-10)


def test_nt_xent_hand_made_perfect_alignment() -> None:
    # Orthonormal instances, identical views: s+ = 1/tau, every negative 0 -> closed form.
    z = torch.eye(3, dtype=torch.float64)
    tau = 0.5
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 4 * math.exp(0)))
    assert nt_xent(z, z.clone(), tau).item() == pytest.approx(expected, abs=1e-12)


def test_nt_xent_symmetric_and_gradcheck() -> None:
    a, b = _pair(4, 3, seed=1)
    assert torch.allclose(nt_xent(a, b), nt_xent(b, a))
    assert torch.autograd.gradcheck(lambda x, y: nt_xent(x, y, 0.3), (a, b))


def test_nt_xent_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        nt_xent(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))


@pytest.mark.parametrize("n,k,tau,ew", [(6, 3, 1.0, 1.0), (10, 4, 0.5, 1.0), (5, 5, 1.0, 0.0), (8, 2, 1.0, 2.5)])
def test_cluster_contrast_matches_naive_value_and_gradient(n: int, k: int, tau: float, ew: float) -> None:
    a, b = _pair(n, k, seed=n + k, softmax=False)
    fast = cluster_contrast(a.softmax(1), b.softmax(1), tau, ew)
    ga, gb = torch.autograd.grad(fast, (a, b))
    ref = naive_cluster_contrast(a.softmax(1), b.softmax(1), tau, ew)
    ra, rb = torch.autograd.grad(ref, (a, b))
    assert torch.allclose(fast, ref, atol=1e-10)
    assert torch.allclose(ga, ra, atol=1e-10) and torch.allclose(gb, rb, atol=1e-10)


def test_entropy_gap_extremes() -> None:
    uniform = torch.full((6, 3), 1 / 3)
    assert assignment_entropy_gap(uniform).item() == pytest.approx(0.0, abs=1e-7)
    collapsed = torch.zeros(6, 3)
    collapsed[:, 0] = 1
    assert assignment_entropy_gap(collapsed).item() == pytest.approx(math.log(3), abs=1e-6)


def test_cluster_contrast_gradcheck() -> None:
    a, b = _pair(5, 3, seed=3)
    assert torch.autograd.gradcheck(lambda x, y: cluster_contrast(x.softmax(1), y.softmax(1)), (a, b))


# ----------------------------------------------------------------------------- the components


VIEWS = ("weak1", "weak2", "strong")


def build_ctx(key: str, views: tuple[str, ...] = VIEWS) -> BuildContext:
    recipe = SimpleNamespace(path="t.toml", views=SimpleNamespace(name="fake"))
    return BuildContext(recipe, key, torch.device("cpu"), view_names=views)


def heads3(n: int = 10, k: int = 3, d: int = 4) -> dict[tuple[str, str], torch.Tensor]:
    out = {}
    for i, v in enumerate(VIEWS):
        g = torch.Generator().manual_seed(i)
        out[(v, "instance")] = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_(True)
        probs = torch.randn(n, k, generator=g, dtype=torch.float64).softmax(1)
        out[(v, "cluster")] = probs.detach().requires_grad_(True)
    return out


def assert_same(a: torch.Tensor, b: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    assert torch.allclose(a, b, atol=1e-10), (float(a), float(b))
    for ga, gb in zip(torch.autograd.grad(a, inputs, retain_graph=True),
                      torch.autograd.grad(b, inputs, retain_graph=True)):
        assert torch.allclose(ga, gb, atol=1e-10)


def test_contrast_components_sum_over_pairs_like_naive_loops() -> None:
    h = heads3()
    pairs = [("weak1", "weak2"), ("weak2", "strong")]
    inst = InstanceContrast(InstanceContrastConfig(name="instance_contrast", pairs=pairs), build_ctx("losses.instance"))
    ref = sum(naive_nt_xent(h[(u, "instance")], h[(v, "instance")], 0.5) for u, v in pairs)
    assert_same(inst.compute_loss(FakeOut(h), None), ref, [h[(v, "instance")] for v in VIEWS])
    clu = ClusterContrast(ClusterContrastConfig(name="cluster_contrast", pairs=pairs, temperature=0.7),
                          build_ctx("losses.cluster"))
    ref = sum(naive_cluster_contrast(h[(u, "cluster")], h[(v, "cluster")], 0.7, 1.0) for u, v in pairs)
    assert_same(clu.compute_loss(FakeOut(h), None), ref, [h[(v, "cluster")] for v in VIEWS])


def test_pairs_are_checked_against_the_view_generator_when_built() -> None:
    with pytest.raises(RecipeError, match=r"losses.instance.pairs\[1\].*'strong'.*Allowed values: weak1, weak2"):
        InstanceContrast(InstanceContrastConfig(name="x", pairs=[("weak1", "weak2"), ("weak1", "strong")]),
                         build_ctx("losses.instance", ("weak1", "weak2")))
    with pytest.raises(RecipeError, match=r"losses.instance.pairs\[0\].*itself"):
        InstanceContrast(InstanceContrastConfig(name="x", pairs=[("weak1", "weak1")]), build_ctx("losses.instance"))


def _loss(returns: Any) -> Any:
    """A bound loss component as the engine holds one (``call`` by keyword, ``describe`` for errors)."""
    return SimpleNamespace(call=lambda out, ctx: returns, describe=lambda: "loss 'x' of [losses.x] (plugin 'p')")


def test_engine_names_terms_after_recipe_keys_and_applies_weights() -> None:
    """A tensor becomes the term ``<id>``, a dict ``<id>_<part>``; each is multiplied by the weight;
    the losses are called in recipe order; a wrong return is an error naming the component."""
    from clustkit.errors import PluginError

    t1, t2, t3 = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    weights = {"instance": 0.5, "group": 2.0, "a": 1.0, "a_b": 1.0}
    run = SimpleNamespace(recipe=SimpleNamespace(losses={k: SimpleNamespace(weight=w) for k, w in weights.items()}),
                          ctx=None)
    terms = loss_terms(run, None, {"instance": _loss(t1), "group": _loss({"self": t2, "cross": t3})})
    assert list(terms) == ["instance", "group_self", "group_cross"]  # recipe order
    assert [float(v) for v in terms.values()] == [1.0, 6.0, 10.0]
    assert list(loss_terms(run, None, {"group": _loss({"self": t2}), "instance": _loss(t1)})) == ["group_self",
                                                                                                 "instance"]
    with pytest.raises(PluginError, match="term 'a_b', which another loss"):  # two components give one name
        loss_terms(run, None, {"a": _loss({"b": t1}), "a_b": _loss(t2)})
    with pytest.raises(PluginError, match="returned list from compute_loss"):
        loss_terms(run, None, {"instance": _loss([t1])})
    with pytest.raises(PluginError, match=r"shape \(2,\)"):
        loss_terms(run, None, {"instance": _loss(torch.ones(2))})
    with pytest.raises(RuntimeError, match="no loss term"):
        loss_terms(run, None, {"group": _loss({})})
