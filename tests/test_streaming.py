"""Datasets larger than memory: WebDataset tar shards read by random access, ``data.in_memory``
(decode once, or read from disk in DataLoader workers every epoch) and ``run.num_workers = "auto"``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clustkit.data import DatasetError, FolderDataset, InMemoryDataset, TarShardDataset, load_dataset, memory
from conftest import TINY_CC, clustkit_exe, torchrun_exe

webdataset = pytest.importorskip("webdataset")  # in the test extra: CI always has it


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(folder: Path, n: int, *, size: int = 12, per_shard: int = 40, labels: bool = True,
                 corrupt: tuple[int, ...] = ()) -> np.ndarray:
    """``n`` random RGB PNGs (3 classes) in WebDataset shards written by webdataset's ShardWriter;
    returns the images, N×H×W×3."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    with webdataset.ShardWriter(str(folder / "part-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i, a in enumerate(images):
            sample = {"__key__": f"{i:06d}", "png": b"not a png" if i in corrupt else _png(a)}
            if labels:
                sample["cls"] = i % 3
            sink.write(sample)
    return images


def test_shards_read_back_every_image_and_label_in_order(tmp_path: Path) -> None:
    images = write_shards(tmp_path / "wds", 100)
    assert len(list((tmp_path / "wds").glob("*.tar"))) == 3
    for root in (tmp_path / "wds", f"{tmp_path}/wds/*.tar", f"{tmp_path}/wds/part-{{000000..000002}}.tar"):
        ds = load_dataset("webdataset", root=str(root), image_size=12)
        assert isinstance(ds, TarShardDataset) and len(ds) == 100 and ds.num_classes == 3
        assert ds.labels.tolist() == [i % 3 for i in range(100)]
        for i in (0, 39, 40, 99):  # first and last of a shard
            img, label, idx = ds[i]
            assert idx == i and label == i % 3
            assert torch.equal(img, torch.from_numpy(images[i]).permute(2, 0, 1))


def test_forked_workers_read_the_same_bytes(tmp_path: Path) -> None:
    """Each DataLoader worker reads with its own positioned reads: a descriptor opened before the fork
    must not mix up the workers' reads."""
    images = write_shards(tmp_path, 90)
    ds = load_dataset("webdataset", root=str(tmp_path), image_size=12)
    ds[0]  # opens a descriptor in this process before the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=2, shuffle=False)
    got = torch.cat([b for b, _, _ in loader])
    assert torch.equal(got, torch.from_numpy(images).permute(0, 3, 1, 2))


def test_split_subfolders_and_unlabelled_shards(tmp_path: Path) -> None:
    write_shards(tmp_path / "train", 30, labels=False)
    write_shards(tmp_path / "test", 20, labels=False)
    assert len(load_dataset("webdataset", root=str(tmp_path), split="test", image_size=12)) == 20
    pooled = load_dataset("webdataset", root=str(tmp_path), image_size=12)
    assert len(pooled) == 50 and not pooled.has_labels


def test_bad_shards_are_named(tmp_path: Path) -> None:
    write_shards(tmp_path / "wds", 10)
    with tarfile.open(tmp_path / "packed.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "wds" / "part-000000.tar", arcname="x.png")
    with pytest.raises(DatasetError, match="not an uncompressed tar file"):
        load_dataset("webdataset", root=str(tmp_path / "packed.tar.gz"))
    with pytest.raises(DatasetError, match="needs a test/ subfolder"):
        load_dataset("webdataset", root=str(tmp_path / "wds"), split="test")
    with pytest.raises(DatasetError, match="do not exist"):
        load_dataset("webdataset", root=f"{tmp_path}/wds/part-{{000000..000004}}.tar")


def test_in_memory_auto_decides_by_the_memory_each_process_has(tmp_path: Path, monkeypatch) -> None:
    write_shards(tmp_path, 40)  # 40 × 3 × 12 × 12 = 17,280 decoded bytes
    monkeypatch.setattr(memory, "available_bytes", lambda: 4 * 17_280)
    assert isinstance(load_dataset("webdataset", root=str(tmp_path), image_size=12, in_memory="auto"), InMemoryDataset)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on this node, each with its own copy
    lazy = load_dataset("webdataset", root=str(tmp_path), image_size=12, in_memory="auto")
    assert isinstance(lazy, FolderDataset)
    assert isinstance(load_dataset("webdataset", root=str(tmp_path), image_size=12, in_memory=True), InMemoryDataset)
    assert memory.auto_workers(in_memory=True) == 0 and memory.auto_workers(in_memory=False) >= 1
    with pytest.raises(DatasetError, match="in_memory = false"):
        load_dataset("digits", in_memory=False)


def _tiny_shard_recipe(tmp_path: Path, root: Path) -> Path:
    text = TINY_CC.replace('[data]\nname = "digits"\n',
                           f'[data]\nname = "webdataset"\nroot = "{root}"\nimage_size = 12\n')
    assert text != TINY_CC
    path = tmp_path / "shards.toml"
    path.write_text(text)
    return path


def test_a_run_from_disk_equals_a_run_from_memory(tmp_path: Path) -> None:
    """The same shards, with an unreadable image among them, decoded once into memory or read from
    disk by DataLoader workers every epoch: the same summary and assignments (as a user runs it)."""
    write_shards(tmp_path / "wds", 200, corrupt=(17,))
    recipe = _tiny_shard_recipe(tmp_path, tmp_path / "wds")
    out = {}
    for mode in ("true", "false"):
        out[mode] = tmp_path / f"run-{mode}"
        result = subprocess.run([clustkit_exe(), "run", str(recipe), "--out", str(out[mode]), "--set",
                                 f"data.in_memory={mode}", "--set", "run.num_workers=2", "--set", "run.report=false"],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "part-000000.tar:000017" in result.stderr  # reported once, by name
    a, b = (json.loads((out[m] / "summary.json").read_text()) for m in ("true", "false"))
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differ <= {"wall_s"}, {k: (a.get(k), b.get(k)) for k in differ}
    assert a["unreadable_images"] == 1
    rows = (out["false"] / "assignments.csv").read_text()
    assert rows == (out["true"] / "assignments.csv").read_text() and "\n17,-1," in rows


def test_the_shipped_webdataset_recipe_reads_its_shards(tmp_path: Path) -> None:
    """recipes/webdataset/cc.toml as shipped, shrunk to a CPU minute (small CNN, 16 px, one epoch)."""
    write_shards(tmp_path / "shards" / "train", 120, size=16)
    result = subprocess.run(
        [clustkit_exe(), "run", "webdataset/cc", "--out", str(tmp_path / "run"), "--set", "run.epochs=1",
         "--set", "run.batch_size=32", "--set", "run.precision=fp32", "--set", "run.channels_last=false",
         "--set", 'backbone={name="small_cnn", width=8, out_dim=32}', "--set", "data.image_size=16",
         "--set", "views.size=16", "--set", "run.report=false"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "CLUSTKIT_DATA": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "webdataset" and summary["n_samples"] == 120 and summary["n_clusters"] == 3


def test_two_processes_read_the_shards_from_disk(tmp_path: Path) -> None:
    """Under torchrun rank 0 indexes the shards and sends the index to rank 1; both read their own
    share of each batch from disk in DataLoader workers."""
    write_shards(tmp_path / "wds", 200)
    recipe = _tiny_shard_recipe(tmp_path, tmp_path / "wds")
    result = subprocess.run([torchrun_exe(), "--standalone", "--nproc-per-node", "2", clustkit_exe(), "run",
                             str(recipe), "--out", str(tmp_path / "run"), "--set", "data.in_memory=false", "--set",
                             "run.num_workers=1", "--set", "run.report=false"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_samples"] == 200 and summary["dataset"] == "webdataset"
