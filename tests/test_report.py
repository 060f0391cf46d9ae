"""The run report (report.html + PNGs) and the label-free cluster diagnostics it shows."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clustkit.cluster.diagnostics import cluster_diagnostics
from clustkit.report import write_report

CURVES = {"losses.png", "metrics.png"}


# --- diagnostics -----------------------------------------------------------------------------------

def test_balanced_clusters_have_entropy_one_and_no_empty() -> None:
    d = cluster_diagnostics(np.repeat(np.arange(4), 25), 4)
    assert d["size_entropy"] == 1.0
    assert d["n_empty"] == 0
    assert d["min_size_ratio"] == d["max_size_ratio"] == 1.0
    assert "silhouette" not in d  # no features
    json.dumps(d)
    assert all(type(v) in (int, float) for v in d.values())


def test_empty_cluster_ids_are_counted_and_lower_the_ratios() -> None:
    d = cluster_diagnostics(np.array([0, 0, 1, 1, 3, 3]), 6)
    assert d["n_empty"] == 3  # ids 2, 4 and 5
    assert d["min_size_ratio"] == 0.0
    assert d["max_size_ratio"] == 2.0  # 2 members against a balanced 6 / 6 = 1
    assert d["size_entropy"] == round(np.log(3) / np.log(6), 6)


def test_everything_in_one_cluster_has_zero_entropy() -> None:
    assert cluster_diagnostics(np.zeros(50, dtype=int), 5)["size_entropy"] == 0.0
    assert cluster_diagnostics(np.zeros(50, dtype=int), 5)["n_empty"] == 4
    assert cluster_diagnostics(np.zeros(50, dtype=int), 1)["size_entropy"] == 0.0


def test_silhouette_only_with_features_and_two_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16) * 10
    c = np.repeat(np.arange(3), 40)
    x = centres[c] + rng.normal(size=(120, 16))
    d = cluster_diagnostics(c, 3, x)
    assert 0.5 < d["silhouette"] <= 1.0
    assert isinstance(d["silhouette"], float)
    assert cluster_diagnostics(c, 3, x, sample=30, seed=1)["silhouette"] > 0.5  # sampled
    assert "silhouette" not in cluster_diagnostics(np.zeros(120, dtype=int), 3, x)
    shuffled = cluster_diagnostics(rng.permutation(c), 3, x)["silhouette"]
    assert shuffled < d["silhouette"]


def test_diagnostics_reject_ids_outside_the_range() -> None:
    with pytest.raises(ValueError, match="cluster ids"):
        cluster_diagnostics(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="cluster ids"):
        cluster_diagnostics(np.array([0, -2]), 3)


def test_items_without_a_cluster_and_sampled_feature_rows() -> None:
    """-1 (an unreadable image) counts for no diagnostic; features may cover a sample of the items
    (``feature_index``), as a run's summary computes them."""
    rng = np.random.default_rng(0)
    c = np.repeat(np.arange(3), 40)
    x = np.eye(3, 16)[c] * 10 + rng.normal(size=(120, 16))
    with_none = np.concatenate([c, [-1, -1]])
    x_none = np.concatenate([x, rng.normal(size=(2, 16)) * 100])
    assert cluster_diagnostics(with_none, 3, x_none) == cluster_diagnostics(c, 3, x)
    idx = np.arange(0, 122, 2)  # every other item, the two without a cluster among them
    sampled = cluster_diagnostics(with_none, 3, x_none[idx], feature_index=idx)
    assert sampled == {**cluster_diagnostics(c, 3), "silhouette": cluster_diagnostics(c[::2], 3, x[::2])["silhouette"]}


# --- write_report ----------------------------------------------------------------------------------

def history(n: int = 3, metrics: bool = True) -> list[dict]:
    out = []
    for e in range(1, n + 1):
        entry = {"epoch": e, "step": 10 * e, "losses": {"instance": 2.0 / e, "cluster": 1.0 / e}, "lr": 0.01}
        if metrics:
            entry.update(acc=0.3 * e, nmi=0.25 * e, ari=0.2 * e)
        out.append(entry)
    if out:
        out[-1]["final"] = True
    return out


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    clusters = (labels + (rng.random(120) < 0.1)) % 3  # mostly the classes, 10% shifted
    features = (np.eye(3, 32) * 6)[clusters] + rng.normal(size=(120, 32))
    return {"labels": labels, "clusters": clusters, "features": features.astype(np.float32),
            "scores": rng.random(120), "grey": rng.integers(0, 256, (120, 1, 8, 8), dtype=np.uint8),
            "rgb": rng.integers(0, 256, (120, 3, 8, 8), dtype=np.uint8)}


def pngs(folder: Path) -> set[str]:
    return {p.name for p in (folder / "report").glob("*.png")}


def referenced(html: Path) -> set[str]:
    return set(re.findall(r'<img src="report/([^"]+\.png)"', html.read_text()))


def check_images(folder: Path) -> None:
    for name in pngs(folder):
        path = folder / "report" / name
        assert path.stat().st_size > 0
        with Image.open(path) as im:
            im.verify()
    assert referenced(folder / "report.html") == pngs(folder)  # every PNG shown, every <img> there
    assert not list(folder.rglob("*.tmp"))  # atomic writes left no temporary behind


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> tuple[Path, list[np.ndarray]]:
    """One full report (the embedding is the slow part), shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("full")
    calls: list[np.ndarray] = []

    def images(idx: np.ndarray) -> np.ndarray:
        calls.append(idx)
        return data["grey"][idx]

    out = write_report(folder, history=history(), clusters=data["clusters"], scores=data["scores"],
                       labels=data["labels"], images=images, features=data["features"], n_clusters=4,
                       title="tiny <run> & co", summary={"acc": 0.9, "wall_s": 1.5, "nested": {"x": 1}})
    assert out == folder / "report.html"
    return folder, calls


def test_full_report_writes_every_figure_and_the_page(full: tuple[Path, list[np.ndarray]]) -> None:
    folder, calls = full
    assert pngs(folder) == CURVES | {"cluster_sizes.png", "confusion.png", "clusters.png", "embedding.png"}
    check_images(folder)
    page = (folder / "report.html").read_text()
    assert "<title>tiny &lt;run&gt; &amp; co</title>" in page
    assert "tiny <run>" not in page  # escaped everywhere
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for key in ("size_entropy", "n_empty", "min_size_ratio", "max_size_ratio", "silhouette", "wall_s"):
        assert f"<td>{key}</td>" in page
    assert "nested" not in page  # only the summary's scalars
    assert "t-SNE" in page and "UMAP" not in page  # the default map, named in its caption
    assert calls and all(i.min() >= 0 and i.max() < 120 for i in calls)
    assert len(np.concatenate(calls)) == 3 * 16  # 8 most + 8 least confident of each of 3 clusters


@pytest.mark.parametrize("method, name", [("tsne", "t-SNE"), ("umap", "UMAP")])
def test_embedding_keeps_separated_groups_apart(method: str, name: str) -> None:
    """Either method maps three well separated groups of rows to three groups of points: each
    point's nearest other point in the map belongs to its own group."""
    from clustkit.report.embedding import embed_2d

    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(3), 40)
    x = np.eye(3, 16)[group] * 8 + rng.normal(size=(120, 16))
    xy, used = embed_2d(x, seed=0, method=method)
    assert used == name and xy.shape == (120, 2) and np.isfinite(xy).all()
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (group[d.argmin(1)] == group).mean() > 0.95
    with pytest.raises(ValueError, match="method"):
        embed_2d(x, method="pca")  # type: ignore[arg-type]


def test_curves_only_writes_just_the_curves_and_the_page(tmp_path: Path) -> None:
    write_report(tmp_path, history=history(), curves_only=True, title="t")
    assert pngs(tmp_path) == CURVES
    assert {p.name for p in tmp_path.iterdir()} == {"report.html", "report"}
    check_images(tmp_path)


def test_curves_only_keeps_the_figures_of_an_earlier_full_report(tmp_path: Path,
                                                                  full: tuple[Path, list[np.ndarray]]) -> None:
    folder = tmp_path / "run"
    shutil.copytree(full[0], folder)
    before = {p.name: p.stat().st_mtime_ns for p in (folder / "report").glob("*.png")}
    write_report(folder, history=history(5), curves_only=True)
    after = {p.name: p.stat().st_mtime_ns for p in (folder / "report").glob("*.png")}
    assert set(after) == set(before)
    assert {n for n in after if after[n] != before[n]} <= CURVES  # the rest untouched
    check_images(folder)
    page = (folder / "report.html").read_text()
    assert "t-SNE" in page or "UMAP" in page
    assert "<td>silhouette</td>" in page
    assert "5 history entries" in page


def test_rgb_images_and_no_labelled_item_means_no_confusion(tmp_path: Path, data: dict[str, np.ndarray]) -> None:
    write_report(tmp_path, history=history(), clusters=data["clusters"], images=lambda i: data["rgb"][i],
                 labels=np.full(120, -1))
    assert pngs(tmp_path) == CURVES | {"clusters.png", "cluster_sizes.png"}
    check_images(tmp_path)


def test_a_rewrite_drops_figures_it_no_longer_draws(tmp_path: Path, data: dict[str, np.ndarray]) -> None:
    write_report(tmp_path, history=history(), clusters=data["clusters"], labels=data["labels"])
    assert "confusion.png" in pngs(tmp_path)
    write_report(tmp_path, history=history(metrics=False), clusters=data["clusters"])  # and no labels
    assert pngs(tmp_path) == {"losses.png", "cluster_sizes.png"}  # a history without metrics: no metrics.png
    check_images(tmp_path)


def test_empty_history_and_nothing_else(tmp_path: Path) -> None:
    write_report(tmp_path, history=[])
    assert pngs(tmp_path) == set()
    assert "No figures yet" in (tmp_path / "report.html").read_text()


def test_one_cluster_many_ids_and_few_feature_rows(tmp_path: Path, data: dict[str, np.ndarray]) -> None:
    clusters = np.full(120, 2)  # one used id out of 7
    write_report(tmp_path, history=history(1), clusters=clusters, labels=data["labels"],
                 images=lambda i: data["grey"][i], features=data["features"][:4], feature_index=np.arange(4),
                 n_clusters=7)
    assert pngs(tmp_path) == CURVES | {"cluster_sizes.png", "confusion.png", "clusters.png"}  # < 5 rows: no embedding
    check_images(tmp_path)
    diag = json.loads((tmp_path / "report" / "figures.json").read_text())["diagnostics"]
    assert diag["n_empty"] == 6 and diag["size_entropy"] == 0.0 and "silhouette" not in diag


def test_embedding_maps_feature_rows_through_feature_index(tmp_path: Path, data: dict[str, np.ndarray]) -> None:
    idx = np.arange(0, 120, 2)  # features for every other item only
    write_report(tmp_path, history=history(), clusters=data["clusters"], features=data["features"][idx],
                 feature_index=idx, scores=np.stack([data["scores"]] * 3, axis=1), images=lambda i: data["grey"][i])
    assert {"embedding.png", "clusters.png"} <= pngs(tmp_path)
    with pytest.raises(ValueError, match="feature_index"):
        write_report(tmp_path, history=[], clusters=data["clusters"][:10], features=data["features"][:20])
