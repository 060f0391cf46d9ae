"""Tests for clustkit.cluster.kmeans (FAISS and torch backends)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from clustkit.cluster.backend import faiss_available
from clustkit.cluster.kmeans import KMeansResult, kmeans, torch_kmeans

# faiss is a dependency of clustkit (faiss-cpu, or faiss-gpu on GPU machines): a missing faiss
# fails these tests rather than skipping them.
BACKENDS = ["faiss", "torch"]


def blobs(seed: int = 0, n_per: int = 40, dim: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Four tight, far-apart blobs at hand-picked centres."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((4, dim), dtype=np.float32)
    centres[0, 0], centres[1, 1], centres[2, 0], centres[3, 2] = 20, 20, -20, 20
    labels = np.repeat(np.arange(4), n_per)
    x = centres[labels] + rng.normal(scale=0.5, size=(len(labels), dim))
    return x.astype(np.float32), labels


def gaussian_mixture(seed: int, n: int = 3000, k: int = 10, dim: int = 16) -> np.ndarray:
    """Overlapping mixture (centre spread = noise scale), so the optimum is not trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    return (centres[rng.integers(0, k, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def recomputed_inertia(x: np.ndarray, res: KMeansResult, spherical: bool = False) -> float:
    x = x.astype(np.float64)
    c = res.centroids.astype(np.float64)[res.labels]
    if spherical:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return float((1.0 - (x * c).sum(1)).sum())
    return float(((x - c) ** 2).sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_blobs_recovered_exactly(backend: str) -> None:
    x, labels = blobs()
    res = kmeans(x, 4, backend=backend, seed=1)
    assert res.backend.startswith(backend)
    assert res.labels.dtype == np.int64 and res.labels.shape == (len(x),)
    assert res.centroids.dtype == np.float32 and res.centroids.shape == (4, x.shape[1])
    assert adjusted_rand_score(labels, res.labels) == 1.0
    assert res.n_empty == 0 and res.n_iter >= 1
    assert res.inertia == pytest.approx(recomputed_inertia(x, res), rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accepts_torch_tensor(backend: str) -> None:
    x, labels = blobs(seed=2)
    res = kmeans(torch.from_numpy(x), 4, backend=backend)
    assert adjusted_rand_score(labels, res.labels) == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_spherical_on_circle(backend: str) -> None:
    # three angular groups at very different radii: only the angle should matter
    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(3), 30)
    angle = np.array([0.0, 2.1, 4.2])[group] + rng.normal(scale=0.05, size=group.size)
    radius = rng.uniform(0.1, 50.0, size=group.size)
    x = np.stack([np.cos(angle), np.sin(angle)], axis=1) * radius[:, None]
    res = kmeans(x.astype(np.float32), 3, spherical=True, backend=backend)
    assert adjusted_rand_score(group, res.labels) == 1.0
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, rtol=1e-5)
    assert res.inertia == pytest.approx(recomputed_inertia(x, res, spherical=True), rel=1e-4, abs=1e-6)
    assert 0.0 <= res.inertia < 0.01 * group.size


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_under_seed(backend: str) -> None:
    x = gaussian_mixture(0, n=1500)
    a = kmeans(x, 10, backend=backend, seed=5)
    b = kmeans(x, 10, backend=backend, seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia
    c = kmeans(x, 10, backend=backend, seed=6)
    assert not np.array_equal(a.centroids, c.centroids)


def test_torch_reseeds_empty_clusters_with_duplicates() -> None:
    # 6 distinct points, heavily duplicated: k-means++ or Lloyd can leave clusters
    # empty, and a naive re-seed would pick the same far point twice.
    distinct = np.array([[0, 0], [0.1, 0], [0, 0.1], [10, 10], [10.1, 10], [30, -30]], dtype=np.float32)
    x = np.repeat(distinct, [50, 1, 1, 50, 1, 3], axis=0)
    for seed in range(5):
        res = torch_kmeans(torch.from_numpy(x), 6, seed=seed)
        assert res.n_empty == 0
        assert np.bincount(res.labels, minlength=6).min() > 0
        assert res.inertia == pytest.approx(0.0, abs=1e-6)


def test_torch_empty_cluster_from_bad_init_is_repaired() -> None:
    # Lloyd started from a centre far from every point leaves that cluster empty.
    from clustkit.cluster import lloyd as km

    x = torch.tensor([[0.0], [0.2], [5.0], [5.2], [9.0], [9.2]])
    x_sq = (x * x).sum(1)
    init = torch.tensor([[0.1], [5.1], [1000.0]])
    centres, labels, _ = km._lloyd(x, x_sq, init, spherical=False, max_iter=10, tol_abs=0.0, chunk=4)
    assert torch.bincount(labels, minlength=3).min() > 0
    assert sorted(centres[:, 0].tolist()) == pytest.approx([0.1, 5.1, 9.1])


def test_more_clusters_than_distinct_points_reports_empty() -> None:
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)
    res = kmeans(x, 5, backend="torch")
    assert res.n_empty == 2
    assert res.inertia == pytest.approx(0.0, abs=1e-6)


def test_chunked_assignment_matches_unchunked() -> None:
    x = torch.from_numpy(gaussian_mixture(4, n=999))
    a = torch_kmeans(x, 7, seed=3)
    b = torch_kmeans(x, 7, seed=3, chunk=100)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.inertia == pytest.approx(b.inertia, rel=1e-5)


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backends_agree_on_objective(seed: int, spherical: bool) -> None:
    x = gaussian_mixture(seed)
    f = kmeans(x, 10, backend="faiss", n_init=3, seed=seed, spherical=spherical)
    t = kmeans(x, 10, backend="torch", n_init=3, seed=seed, spherical=spherical)
    assert f.inertia == pytest.approx(recomputed_inertia(x, f, spherical), rel=1e-5)
    assert t.inertia == pytest.approx(recomputed_inertia(x, t, spherical), rel=1e-5)
    assert abs(f.inertia - t.inertia) / min(f.inertia, t.inertia) < 0.05


def test_faiss_is_installed() -> None:
    assert faiss_available()


def test_faiss_gpu_path_is_the_cpu_call_with_gpu_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """When FAISS reports a GPU, clustkit makes the same ``faiss.Kmeans`` call with ``gpu=True``;
    faiss-gpu's GPU index is not installable on the test machines, so the call is checked here
    and then run on its CPU twin, whose result must be the CPU path's."""
    import faiss

    import clustkit.cluster.kmeans as km

    real, seen = faiss.Kmeans, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("gpu"))
        return real(*args, **{**kwargs, "gpu": False})

    x, labels = blobs(seed=5)
    cpu = kmeans(x, 4, backend="faiss", seed=1)
    monkeypatch.setattr(km, "faiss_gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "Kmeans", spy)
    gpu = kmeans(x, 4, backend="faiss", seed=1)
    assert seen and all(g is True for g in seen)
    assert gpu.backend == "faiss-gpu" and cpu.backend == "faiss-cpu"
    np.testing.assert_array_equal(gpu.labels, cpu.labels)
    assert adjusted_rand_score(labels, gpu.labels) == 1.0


def test_faiss_matches_sklearn_on_blobs() -> None:
    x, _ = blobs(seed=3, n_per=60, dim=8)
    ours = kmeans(x, 4, backend="faiss")
    ref = KMeans(4, n_init=1, max_iter=50, random_state=0).fit(x)
    assert ours.inertia == pytest.approx(float(ref.inertia_), rel=1e-4)
    assert adjusted_rand_score(ref.labels_, ours.labels) == 1.0


def test_invalid_arguments() -> None:
    x = np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(ValueError):
        kmeans(x, 6, backend="torch")
    with pytest.raises(ValueError):
        kmeans(x, 2, backend="sklearn")
    with pytest.raises(ValueError):
        kmeans(x[0], 1, backend="torch")


def test_faiss_backend_missing_raises_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match="faiss"):
        kmeans(np.zeros((4, 2), dtype=np.float32), 2, backend="faiss")
    assert kmeans(np.eye(4, dtype=np.float32), 2).backend == "torch"  # auto falls back


def test_module_imports_do_not_import_torch() -> None:
    code = (
        "import sys, clustkit.cluster.kmeans, clustkit.cluster.metrics, clustkit.cluster.neighbors\n"
        "assert 'torch' not in sys.modules, 'torch imported at module level'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu  # deselected by default (pyproject addopts); run on a GPU machine with `pytest -m gpu`
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (selected with -m gpu on a machine without one)")
def test_torch_backend_on_cuda_matches_cpu() -> None:
    x, labels = blobs(seed=4)
    res = kmeans(x, 4, backend="torch", device="cuda")
    assert adjusted_rand_score(labels, res.labels) == 1.0
    assert res.inertia == pytest.approx(kmeans(x, 4, backend="torch").inertia, rel=1e-4)
