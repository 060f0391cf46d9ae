"""The shared CC-family losses against naive loops written from the formulas (methods.md §1.3)."""

from __future__ import annotations

import math

import pytest
import torch

from clustkit.losses import assignment_entropy_gap, cluster_contrast, nt_xent
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
