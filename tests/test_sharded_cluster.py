"""Whole-dataset steps across ranks (clustkit.cluster.sharded, RunContext.extract_shard / group).

Two gloo processes, each holding an unequal contiguous shard of the rows, must give what one
process gives on the concatenated rows: k-means labels equal and centroids equal to float
rounding (torch and FAISS assignment, spherical or not, an empty shard, empty-cluster repair),
exact kNN equal, the kNN graph equal. One run of a tiny recipe on both ranks checks the engine:
``extract`` (each rank runs its batches, then all-gather) equals one process's features,
``ctx.group`` clusters shards together and hands every rank all labels, a grouper that does not
take shards still works, and unreadable items and failures reach every rank. The FAISS index
over several devices is checked through its CPU twin. All 2-process checks share one spawn.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import adjusted_rand_score

from clustkit import dist as cdist
from clustkit.cluster.backend import faiss_flat_index
from clustkit.cluster.kmeans import torch_kmeans
from clustkit.cluster.neighbors import knn, knn_graph
from clustkit.cluster.sharded import knn_across_ranks, sharded_kmeans, sharded_knn, sharded_knn_graph
from clustkit.dist import RowShards, shard_range
from conftest import TINY_CC, free_port

WORLD = 2
N, D, K = 3000, 16, 10
SPLIT = (1100, 1900)  # unequal shards
# tol=0: Lloyd runs to its fixed point (labels stable, so the centre shift is exactly 0) on any split
KMEANS_CASES: dict[str, dict[str, Any]] = {
    "torch": dict(tol=0.0, max_iter=200, seed=3, n_init=2),
    "torch_spherical": dict(tol=0.0, max_iter=200, seed=4, spherical=True),
    "faiss": dict(tol=0.0, max_iter=200, seed=5, backend="faiss"),
}
DUPLICATES = np.repeat(np.array([[0, 0], [0.1, 0], [0, 0.1], [10, 10], [10.1, 10], [30, -30]], dtype=np.float32),
                       [50, 1, 1, 50, 1, 3], axis=0)
RECIPE = TINY_CC.replace('[evaluation]\nname = "head_argmax"\nhead = "cluster"',
                         '[evaluation]\nname = "kmeans"\nfeatures = "instance"\n\n'
                         '[grouping]\nname = "kmeans"\nbackend = "torch"\nn_init = 1')


def _data() -> np.ndarray:
    """10 separated Gaussian blobs (unit noise, centres ~22 apart) plus 5% uniform background points."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(K, D))
    x = centres[rng.integers(0, K, N)] + rng.normal(size=(N, D))
    background = rng.choice(N, N // 20, replace=False)
    x[background] = rng.uniform(-10, 10, size=(len(background), D))
    return x.astype(np.float32)


def _shards() -> list[slice]:
    bounds = np.cumsum((0, *SPLIT))
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def _kmeans_fields(r: Any) -> tuple[Any, ...]:
    return r.labels, r.centroids, r.inertia, r.n_iter, r.n_empty


def _engine_checks(rank: int, folder: str) -> dict[str, Any]:
    from clustkit.cluster.kmeans import kmeans
    from clustkit.engine.build import build_run
    from clustkit.engine.components import bind
    from clustkit.engine.features import _share_unreadable
    from clustkit.plugin_system.interfaces import ROLES
    from clustkit.plugin_system.manager import PluginSet
    from clustkit.recipe import load

    path = Path(folder) / f"recipe{rank}.toml"
    path.write_text(RECIPE)
    plugins = PluginSet()
    plugins.load_entry_points()
    run = build_run(load(path, plugins.registry, []), plugins, None)
    ctx = run.ctx
    out: dict[str, Any] = {"features": ctx.extract_spaces(["backbone", "instance"])}
    shard, rows = ctx.extract_shard("instance")
    out["rows"] = (rows.start, rows.stop)
    out["shard_equals_slice"] = torch.equal(shard, out["features"]["instance"][rows.start:rows.stop])
    subset = np.arange(0, 1797, 7)[::-1].copy()  # indices in a given order
    out["subset"] = ctx.extract(indices=subset)
    # the untrained network's features barely differ (std 4e-4 around 0.2): k-means on them is
    # decided by rounding, so the comparison with one process is made on the blobs
    blobs = _shards()[rank]
    out["group_blobs"] = _kmeans_fields(ctx.group(torch.from_numpy(_data()[blobs]), K,
                                                  rows=range(blobs.start, blobs.stop)))
    out["group_shard"] = ctx.group(shard, 10, rows=rows).labels
    out["group_whole"] = ctx.group(out["features"]["instance"], 10).labels
    out["evaluate"] = ctx.evaluate().labels

    class Plain:  # a grouper that knows nothing of shards: rank 0 clusters the gathered rows
        def assign_groups(self, features: Any, n_groups: int, spherical: bool, seed: int, ctx: Any) -> Any:
            return kmeans(features, n_groups, spherical=spherical, seed=seed, backend="torch")

    builtin = run.components.grouper
    run.components.grouper = bind("grouping", builtin.spec, Plain(), *ROLES["grouper"])
    out["group_plain"] = ctx.group(shard, 10, rows=rows).labels
    run.components.grouper = builtin

    ctx.source.unreadable.clear()
    ctx.source.unreadable[2 + 5 * rank] = "test"
    _share_unreadable(ctx.source, None)
    out["unreadable"] = sorted(ctx.source.unreadable)
    try:
        _share_unreadable(ctx.source, ValueError("boom") if rank == 1 else None)
    except Exception as err:  # every rank must stop, not only the one that failed
        out["failure"] = type(err).__name__
    return out


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x = _data()
        local = x[_shards()[rank]]
        res: dict[str, Any] = {}
        for name, kw in KMEANS_CASES.items():
            r = sharded_kmeans(torch.from_numpy(local), K, **kw)
            res[name] = (*_kmeans_fields(r), r.gathered().labels)
        # every row on rank 0, none on rank 1
        res["empty_shard"] = sharded_kmeans(x if rank == 0 else x[:0], K, tol=0.0, max_iter=200, seed=3).gathered()
        res["duplicates"] = [sharded_kmeans(DUPLICATES[:40] if rank == 0 else DUPLICATES[40:], 6, seed=s).gathered()
                             for s in range(3)]
        for backend in ("torch", "faiss"):
            res[f"knn_{backend}"] = sharded_knn(local, 7, backend=backend)
        res["knn_keep_self"] = sharded_knn(local, 5, exclude_self=False, backend="torch")
        graph = sharded_knn_graph(local, 5, normalization="row", backend="torch")
        res["graph"] = (graph.indices(), graph.values())
        res["across"] = knn_across_ranks(x, 7, backend="torch")
        res["engine"] = _engine_checks(rank, folder)
        torch.save(res, f"{folder}/rank{rank}.pt")
    finally:
        cdist.shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("sharded")
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.start_processes(_worker, args=(WORLD, free_port(), str(folder)), nprocs=WORLD, join=True,
                       start_method="spawn")
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# --------------------------------------------------------------------------- k-means


@pytest.mark.parametrize("case", list(KMEANS_CASES))
def test_sharded_kmeans_equals_one_process(two_ranks: list[dict[str, Any]], case: str) -> None:
    x = _data()
    kw = KMEANS_CASES[case]
    ref = torch_kmeans(torch.from_numpy(x), K, **{k: v for k, v in kw.items() if k != "backend"})
    # what one process gives with the same assignment backend (for faiss: sharded_kmeans on one process)
    same = sharded_kmeans(x, K, **kw) if kw.get("backend") == "faiss" else ref
    for rank, res in enumerate(two_ranks):
        labels, centroids, inertia, n_iter, n_empty, every = res[case]
        np.testing.assert_array_equal(labels, same.labels[_shards()[rank]])
        np.testing.assert_array_equal(every, same.labels)
        np.testing.assert_array_equal(every, ref.labels)
        np.testing.assert_allclose(centroids, same.centroids, rtol=1e-5, atol=1e-5)
        assert inertia == pytest.approx(same.inertia, rel=1e-5)
        assert (n_iter, n_empty) == (same.n_iter, same.n_empty)
    # the global results are the same bits on both ranks
    np.testing.assert_array_equal(two_ranks[0][case][1], two_ranks[1][case][1])
    assert two_ranks[0][case][2] == two_ranks[1][case][2]


def test_sharded_kmeans_with_an_empty_shard_and_empty_clusters(two_ranks: list[dict[str, Any]]) -> None:
    x = _data()
    ref = torch_kmeans(torch.from_numpy(x), K, tol=0.0, max_iter=200, seed=3)
    for res in two_ranks:
        np.testing.assert_array_equal(res["empty_shard"].labels, ref.labels)
        np.testing.assert_allclose(res["empty_shard"].centroids, ref.centroids, rtol=1e-5, atol=1e-5)
        # heavily duplicated points: k-means++ and Lloyd leave clusters empty; the repair across
        # ranks re-seeds them at distinct far points, as on one process
        for seed, got in enumerate(res["duplicates"]):
            one = torch_kmeans(torch.from_numpy(DUPLICATES), 6, seed=seed)
            assert got.n_empty == 0 and np.bincount(got.labels, minlength=6).min() > 0
            assert got.inertia == pytest.approx(0.0, abs=1e-6)
            assert adjusted_rand_score(one.labels, got.labels) == 1.0


@pytest.mark.parametrize("spherical", [False, True])
def test_one_process_is_torch_kmeans_exactly(spherical: bool) -> None:
    x = torch.from_numpy(_data()[:900])
    a = torch_kmeans(x, 7, spherical=spherical, n_init=2, seed=1)
    b = sharded_kmeans(x, 7, spherical=spherical, n_init=2, seed=1)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert (a.inertia, a.n_iter, a.n_empty, a.backend) == (b.inertia, b.n_iter, b.n_empty, b.backend)
    assert b.shards == RowShards.single(900)
    np.testing.assert_array_equal(b.gathered().labels, a.labels)


# --------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_sharded_knn_equals_knn(two_ranks: list[dict[str, Any]], backend: str) -> None:
    x = _data()
    ref_d, ref_i = knn(x, 7, backend=backend)
    for rank, res in enumerate(two_ranks):
        d, i = res[f"knn_{backend}"]
        rows = _shards()[rank]
        np.testing.assert_array_equal(i, ref_i[rows])
        np.testing.assert_allclose(d, ref_d[rows], rtol=1e-4, atol=1e-4)
        keep_d, keep_i = res["knn_keep_self"]
        np.testing.assert_array_equal(keep_i, knn(x, 5, exclude_self=False, backend="torch")[1][rows])
        assert keep_d.shape == (rows.stop - rows.start, 5)


def test_sharded_knn_graph_and_split_queries(two_ranks: list[dict[str, Any]]) -> None:
    x = _data()
    ref = knn_graph(x, 5, normalization="row", backend="torch")
    ref_d, ref_i = knn(x, 7, backend="torch")
    for res in two_ranks:
        indices, values = res["graph"]
        assert torch.equal(indices, ref.indices())
        assert torch.allclose(values, ref.values())
        d, i = res["across"]
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_allclose(d, ref_d, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- the engine


def test_extract_and_group_across_ranks(two_ranks: list[dict[str, Any]], tmp_path: Path) -> None:
    from clustkit.cluster.kmeans import kmeans
    from clustkit.engine.build import build_run
    from clustkit.plugin_system.manager import PluginSet
    from clustkit.recipe import load

    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    plugins = PluginSet()
    plugins.load_entry_points()
    ctx = build_run(load(path, plugins.registry, []), plugins, None).ctx
    feats = ctx.extract_spaces(["backbone", "instance"])
    subset = ctx.extract(indices=np.arange(0, 1797, 7)[::-1].copy())
    one = torch_kmeans(torch.from_numpy(_data()), K, n_init=1, max_iter=100, seed=0)  # the recipe's grouper
    eng = [res["engine"] for res in two_ranks]
    # eval batches of 512: rank 0 runs the first two, rank 1 the last two, as one process does
    assert [e["rows"] for e in eng] == [(0, 1024), (1024, 1797)]
    for e in eng:
        assert e["shard_equals_slice"]
        for space in ("backbone", "instance"):  # the same batches as one process: the same bits
            assert torch.equal(e["features"][space], feats[space])
        assert torch.equal(e["subset"], subset)
        labels, centroids = e["group_blobs"][:2]
        np.testing.assert_array_equal(labels, one.labels)  # every rank gets all the labels
        np.testing.assert_allclose(centroids, one.centroids, rtol=1e-5, atol=1e-5)
        assert e["group_shard"].shape == (1797,)
        np.testing.assert_array_equal(e["group_whole"], e["group_shard"])  # a whole matrix is sliced the same way
        np.testing.assert_array_equal(e["evaluate"], e["group_shard"])  # the kmeans evaluator takes the sharded path
        np.testing.assert_array_equal(e["group_plain"], kmeans(e["features"]["instance"], 10, backend="torch").labels)
        assert e["unreadable"] == [2, 7]
    np.testing.assert_array_equal(eng[0]["group_blobs"][1], eng[1]["group_blobs"][1])  # same centroids
    np.testing.assert_array_equal(eng[0]["group_shard"], eng[1]["group_shard"])
    assert [e["failure"] for e in eng] == ["RuntimeError", "ValueError"]


# --------------------------------------------------------------------------- layout and FAISS index


def test_shard_range_is_contiguous_and_aligned() -> None:
    for n, align, world in [(1797, 512, 2), (1797, 512, 3), (10, 1, 4), (3, 1, 4), (1000, 64, 5)]:
        parts = [shard_range(n, align=align, world=world, of_rank=r) for r in range(world)]
        assert parts[0].start == 0 and parts[-1].stop == n
        assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
        assert all(p.start % align == 0 for p in parts if len(p))
        blocks = [-(-len(p) // align) for p in parts]
        assert max(blocks) - min(blocks) <= 1
    layout = RowShards((4, 0, 3), rank=2)
    assert layout.offsets == (0, 4, 4) and layout.rows == range(4, 7)
    assert [layout.locate(i) for i in (0, 3, 4, 6)] == [(0, 0), (0, 3), (2, 0), (2, 2)]


@pytest.mark.parametrize("inner_product", [False, True])
@pytest.mark.parametrize("shard", [True, False])
def test_multi_device_faiss_index_equals_a_flat_index(shard: bool, inner_product: bool) -> None:
    import faiss

    x = _data()[:1200]
    q = x[::37].copy()
    flat = faiss_flat_index(D, inner_product=inner_product, devices=["cpu"])
    assert type(flat) is (faiss.IndexFlatIP if inner_product else faiss.IndexFlatL2)
    multi = faiss_flat_index(D, inner_product=inner_product, devices=["cpu"] * 3, shard=shard)
    assert isinstance(multi, faiss.IndexShards if shard else faiss.IndexReplicas) and multi.count() == 3
    assert multi.metric_type == flat.metric_type
    flat.add(x)
    multi.add(x)
    parts = [multi.at(i).ntotal for i in range(3)]
    assert parts == ([400, 400, 400] if shard else [1200] * 3)
    d0, i0 = flat.search(q, 6)
    d1, i1 = multi.search(q, 6)
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_array_equal(d1, d0)


def test_gpu_devices_clone_the_flat_index_with_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    """faiss-gpu is not installable here: the GPU cloner is replaced by one that records its
    arguments and builds the CPU twin, which the search paths must then use unchanged."""
    import faiss

    from clustkit.cluster import backend as km

    calls: list[tuple[str, bool, Any]] = []

    class Options:
        shard = False

    def to_all(index: Any, co: Any = None, ngpu: int = -1) -> Any:
        calls.append(("all", co.shard, ngpu))
        return faiss_flat_index(index.d, inner_product=index.metric_type == faiss.METRIC_INNER_PRODUCT,
                                devices=["cpu"] * ngpu, shard=co.shard)

    def to_list(index: Any, co: Any = None, gpus: Any = None, ngpu: int = -1) -> Any:
        calls.append(("list", co.shard, list(gpus)))
        return faiss_flat_index(index.d, devices=["cpu"] * len(gpus), shard=co.shard)

    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", Options, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpus_list", to_list, raising=False)
    assert isinstance(faiss_flat_index(D, devices=[1, 3], shard=False), faiss.IndexReplicas)
    assert calls == [("list", False, [1, 3])]
    # two GPUs seen by a single process: the kNN search shards its database over both
    monkeypatch.setattr(km, "faiss_gpu_count", lambda: 2)
    x = _data()[:800]
    np.testing.assert_array_equal(knn(x, 5, backend="faiss")[1], knn(x, 5, backend="torch")[1])
    assert calls[-1] == ("all", True, 2)
    # and k-means' FAISS assignment replicates the centroids
    got = sharded_kmeans(x, K, backend="faiss", tol=0.0, max_iter=200, seed=2)
    assert calls[-1] == ("all", False, 2) and got.backend == "faiss-gpu"
    ref = torch_kmeans(torch.from_numpy(x), K, tol=0.0, max_iter=200, seed=2)
    np.testing.assert_array_equal(got.labels, ref.labels)
