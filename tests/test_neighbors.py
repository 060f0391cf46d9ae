"""Tests for clustkit.cluster.neighbors: kNN against brute force, kNN graph against a dense build."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clustkit.cluster import search
from clustkit.cluster.neighbors import knn, knn_graph

BACKENDS = [
    "faiss",  # a dependency: missing faiss fails rather than skips
    "torch",
]


def brute_knn(x: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    x64 = x.astype(np.float64)
    d = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


def dense_graph(x: np.ndarray, k: int, symmetric: bool, self_loops: bool, norm: str) -> np.ndarray:
    n = len(x)
    _, idx = brute_knn(x, k, exclude_self=True)
    a = np.zeros((n, n))
    a[np.repeat(np.arange(n), k), idx.ravel()] = 1.0
    if symmetric:
        a = np.maximum(a, a.T)
    if self_loops:
        a += np.eye(n)
    deg = a.sum(1)
    if norm == "sym":
        return a / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :]
    if norm == "row":
        return a / deg[:, None]
    return a


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("exclude_self", [True, False])
def test_knn_matches_brute_force(backend: str, exclude_self: bool) -> None:
    x = np.random.default_rng(0).normal(size=(300, 12)).astype(np.float32)
    dist, idx = knn(x, 7, exclude_self=exclude_self, backend=backend)
    ref_d, ref_i = brute_knn(x, 7, exclude_self)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    assert dist.shape == idx.shape == (300, 7)
    np.testing.assert_array_equal(idx, ref_i)  # continuous data: no ties
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-4)
    if exclude_self:
        assert not (idx == np.arange(300)[:, None]).any()
    else:
        np.testing.assert_array_equal(idx[:, 0], np.arange(300))


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_of_some_rows_equals_those_rows_of_the_full_search(backend: str) -> None:
    x = np.random.default_rng(2).normal(size=(250, 6)).astype(np.float32)
    rows = np.array([3, 0, 249, 17, 100])
    dist, idx = knn(x, 6, backend=backend, rows=rows)
    ref_d, ref_i = brute_knn(x, 6, exclude_self=True)
    np.testing.assert_array_equal(idx, ref_i[rows])
    np.testing.assert_allclose(dist, ref_d[rows], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_among_some_rows_returns_rows_of_x(backend: str) -> None:
    x = np.random.default_rng(3).normal(size=(120, 5)).astype(np.float32)
    among = np.arange(1, 120, 3)
    rows = np.array([0, 1, 50])
    dist, idx = knn(x, 4, backend=backend, rows=rows, among=among)
    for r, (d_row, i_row) in enumerate(zip(dist, idx)):
        d = ((x[among] - x[rows[r]]) ** 2).sum(1)
        d[among == rows[r]] = np.inf  # the query itself is excluded
        ref = among[np.argsort(d, kind="stable")[:4]]
        np.testing.assert_array_equal(i_row, ref)
        np.testing.assert_allclose(d_row, np.sort(d)[:4], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_torch_blocks_and_faiss_chunks(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "_BLOCK_BYTES", 4 * 200 * 17)  # 17-row torch blocks
    x = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    _, idx = knn(x, 5, backend=backend, chunk=33)
    np.testing.assert_array_equal(idx, brute_knn(x, 5, True)[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_exclude_self_with_duplicates(backend: str) -> None:
    # point 0 has two exact copies: whichever order the ties come in, the query
    # itself must be dropped and both copies kept at distance 0
    x = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [3, 0], [7, 0]], dtype=np.float32)
    dist, idx = knn(x, 2, backend=backend)
    for i in range(3):
        assert i not in idx[i]
        assert set(idx[i]) == {0, 1, 2} - {i}
        np.testing.assert_allclose(dist[i], 0.0, atol=1e-6)
    assert list(idx[5]) == [4, 3]


def test_drop_self_falls_back_to_last_column() -> None:
    dist = np.array([[0.0, 0.0, 0.0]], dtype=np.float32)
    idx = np.array([[4, 5, 6]])  # query 0 was crowded out by its copies
    d, i = search.drop_self(dist, idx)
    np.testing.assert_array_equal(i, [[4, 5]])
    assert d.shape == (1, 2)


@pytest.mark.parametrize("norm", ["sym", "row", "none"])
@pytest.mark.parametrize(("symmetric", "self_loops"), [(True, True), (True, False), (False, True), (False, False)])
def test_knn_graph_matches_dense(norm: str, symmetric: bool, self_loops: bool) -> None:
    x = np.random.default_rng(2).normal(size=(30, 3)).astype(np.float32)
    adj = knn_graph(x, 4, symmetric=symmetric, self_loops=self_loops, normalization=norm)
    assert adj.is_sparse and adj.is_coalesced()
    assert adj.dtype == torch.float32 and adj.shape == (30, 30)
    dense = adj.to_dense().numpy()
    np.testing.assert_allclose(dense, dense_graph(x, 4, symmetric, self_loops, norm), rtol=1e-6, atol=1e-7)
    if norm == "row":
        np.testing.assert_allclose(dense.sum(1), 1.0, rtol=1e-6)
    if symmetric and norm != "row":
        np.testing.assert_allclose(dense, dense.T)
    assert (np.diag(dense) > 0).all() == self_loops


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_graph_backends_and_tensor_input(backend: str) -> None:
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    adj = knn_graph(x, 3, normalization="none", backend=backend)
    dense = adj.to_dense()
    assert torch.equal(dense, dense.T)
    assert set(dense.unique().tolist()) == {0.0, 1.0}
    assert (dense.sum(1) >= 4).all()  # 3 neighbours + self loop, more with reverse edges


def test_invalid_arguments() -> None:
    x = np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(ValueError):
        knn(x, 5)  # needs k + 1 <= N when excluding self
    with pytest.raises(ValueError):
        knn_graph(x, 2, normalization="l1")
    with pytest.raises(ValueError):
        knn(x, 2, backend="annoy")
