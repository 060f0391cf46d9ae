"""Dataset loaders: real shared files (when present) and fabricated files in every supported layout."""

from __future__ import annotations

import bz2
import gzip
import inspect
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from clustkit.data import (
    DATASETS,
    UNREADABLE,
    ClusterDataset,
    DatasetError,
    FolderDataset,
    InMemoryDataset,
    load_dataset,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLUSTKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGENET10 = ["n02056570", "n02085936", "n02128757", "n02690373", "n02692877", "n03095699", "n04254680", "n04285008",
              "n04467665", "n07747607"]


def shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        pytest.skip(f"shared data {path} not present (set CLUSTKIT_SHARED_DATA)")
    return path


def check_contract(ds: ClusterDataset, n: int, shape: tuple[int, int, int]) -> None:
    assert isinstance(ds, ClusterDataset)
    assert len(ds) == n
    assert (ds.channels, *ds.image_size) == shape
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (n,)
    for i in (0, n - 1):
        img, label, index = ds[i]
        assert img.dtype == torch.uint8 and tuple(img.shape) == shape
        assert isinstance(label, int) and label == ds.labels[i]
        assert isinstance(index, int) and index == i
    if isinstance(ds, InMemoryDataset):
        assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (n, *shape)
    if ds.has_labels:
        assert ds.num_classes == len(ds.class_names)
        assert ds.labels.min() >= -1 and ds.labels.max() < ds.num_classes


def rng_images(n, c, h, w, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def save_png(path: Path, array: np.ndarray) -> None:
    """array: H×W (grey) or H×W×3 uint8."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def jpeg_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ----------------------------------------------------------------------------- registry, errors


def test_registry_and_errors(tmp_path):
    assert {"digits", "mnist", "fashion_mnist", "kmnist", "usps", "coil20", "cifar10", "cifar100", "stl10",
            "image_folder", "imagenet10", "imagenet_dogs", "tiny_imagenet"} <= set(DATASETS)
    assert issubclass(DatasetError, ValueError)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'.*mnist"):
        load_dataset("nope")
    with pytest.raises(DatasetError, match="unknown option.*superclasses"):
        load_dataset("digits", superclasses=True)
    with pytest.raises(DatasetError, match="split 'validation'"):
        load_dataset("digits", split="validation")
    with pytest.raises(DatasetError, match="mnist.*needs a root"):
        load_dataset("mnist")
    missing = tmp_path / "does-not-exist"
    for name in ("mnist", "cifar10", "usps", "coil20", "image_folder", "imagenet10", "tiny_imagenet"):
        with pytest.raises(DatasetError) as err:
            load_dataset(name, root=missing)
        assert str(missing) in str(err.value) and name in str(err.value)
    with pytest.raises(DatasetError, match="no idx files found under"):
        load_dataset("mnist", root=tmp_path)


def test_import_is_light():
    code = (
        "import sys, clustkit.data; "
        "print(','.join(m for m in ('sklearn', 'scipy', 'h5py', 'torchvision', 'PIL') if m in sys.modules))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == ""


FILE_DATASETS = {"image_folder", "imagenet10", "imagenet_dogs", "tiny_imagenet", "webdataset"}  # data.in_memory


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_each_dataset_config_holds_exactly_its_loaders_options(name):
    """The recipe's [data] options go to the loader unfiltered, so each dataset's config model takes
    exactly its loader's options (and in_memory for image files; digits needs no root), defaulting as it does,
    plus imbalance, which load_dataset applies to any labelled dataset after its loader."""
    from clustkit.builtin.dataset_configs import DATASET_CONFIGS

    assert set(DATASET_CONFIGS) == set(DATASETS)
    fields = DATASET_CONFIGS[name].model_fields
    params = inspect.signature(DATASETS[name]).parameters
    expected = (set(params) - ({"root"} if name == "digits" else set())) | {"name", "imbalance"}
    assert set(fields) == expected | ({"in_memory"} if name in FILE_DATASETS else set())
    for key in set(params) & set(fields):
        assert fields[key].default == params[key].default, key


def test_the_dataset_component_passes_every_option_to_the_loader(tmp_path, plugin_set):
    """An option set to what used to be the shared default (channels = 3) still reaches the loader."""
    registry = plugin_set().registry

    def build(section: dict):
        spec = registry.get("dataset", section["name"])
        return spec.build(spec.config_model().model_validate(section), None)

    check_contract(build({"name": "digits", "channels": 3, "image_size": 12}), 1797, (3, 12, 12))
    check_contract(build({"name": "digits"}), 1797, (1, 8, 8))
    make_folder(tmp_path, {"cats": 2, "dogs": 1})
    folder = {"name": "image_folder", "root": str(tmp_path), "image_size": 8, "classes": ["dogs", "cats"]}
    lazy = build({**folder, "in_memory": False, "channels": 1})
    assert isinstance(lazy, FolderDataset) and lazy.class_names == ["dogs", "cats"]
    check_contract(lazy, 3, (1, 8, 8))
    assert isinstance(build(folder), InMemoryDataset)  # in_memory = "auto": three small images fit


# ----------------------------------------------------------------------------- digits


def test_digits():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    check_contract(ds, 1797, (1, 8, 8))
    ref = load_digits()
    assert ds.name == "digits" and ds.num_classes == 10
    np.testing.assert_array_equal(ds.labels, ref.target)
    np.testing.assert_array_equal(np.bincount(ds.labels), np.bincount(ref.target))
    assert ds.images.max() == 255 and ds.images.min() == 0
    # 0..16 -> 0..255, monotone and exact at the ends
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), np.rint(ref.images * 255 / 16).astype(np.uint8))


def test_in_memory_resize_and_channels():
    ds = load_dataset("digits", image_size=16, channels=3)
    check_contract(ds, 1797, (3, 16, 16))
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])
    ds2 = load_dataset("digits", image_size=(12, 10))
    assert ds2.image_size == (12, 10)


# ----------------------------------------------------------------------------- real shared files


def test_real_mnist():
    ds = load_dataset("mnist", root=shared("mnist"))
    check_contract(ds, 70000, (1, 28, 28))
    assert ds.name == "mnist"
    assert np.bincount(ds.labels).tolist()[:2] == [6903, 7877]
    assert abs(ds.images[:60000].float().mean().item() / 255 - 0.1307) < 1e-3  # torchvision's mean
    assert len(load_dataset("mnist", root=shared("mnist"), split="test")) == 10000
    for other in ("fashion_mnist", "kmnist"):
        with pytest.raises(DatasetError, match="official mnist files"):
            load_dataset(other, root=shared("mnist"))


def test_real_usps():
    import h5py

    root = shared("usps")
    ds = load_dataset("usps", root=root)
    check_contract(ds, 9298, (1, 16, 16))
    assert len(load_dataset("usps", root=root / "usps.h5", split="train")) == 7291
    with h5py.File(root / "usps.h5") as f:
        ref = f["test/data"][:].reshape(-1, 16, 16)
    np.testing.assert_array_equal(ds.images[7291:, 0].numpy(), np.rint(ref.astype(np.float64) * 255).astype(np.uint8))


def test_real_coil20_orientation():
    import scipy.io

    root = shared("coil-20")
    ds = load_dataset("coil20", root=root)
    check_contract(ds, 1440, (1, 32, 32))
    assert ds.num_classes == 20 and np.bincount(ds.labels).tolist() == [72] * 20
    m = scipy.io.loadmat(str(root / "COIL20.mat"))
    fea = m["fea"] if m["fea"].shape[0] == 1440 else m["fea"].T
    ref = np.stack([np.rint(col * 255).reshape(32, 32, order="F") for col in fea]).astype(np.uint8)
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), ref)
    np.testing.assert_array_equal(ds.labels, m["gnd"].ravel().astype(np.int64) - 1)
    with pytest.raises(DatasetError, match="no train/test split"):
        load_dataset("coil20", root=root, split="train")


def test_real_cifar10_jpg_listing():
    """Cheap check of the real archive: 10 classes × (5,000 train + 1,000 test) numbered JPEGs."""
    archive = shared("cifar-10-jpg") / "CIFAR-10-images.tar.gz"
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and parts[-1].endswith(".jpg"):
                counts[parts[-3], parts[-2]] = counts.get((parts[-3], parts[-2]), 0) + 1
    assert counts == {**{("train", c): 5000 for c in CIFAR10}, **{("test", c): 1000 for c in CIFAR10}}


@pytest.mark.slow
def test_real_cifar10_jpg_full(tmp_path):
    root = shared("cifar-10-jpg")
    ds = load_dataset("cifar10", root=root, cache_dir=tmp_path)
    check_contract(ds, 60000, (3, 32, 32))
    assert ds.name == "cifar10-jpg" and ds.class_names == CIFAR10
    assert np.bincount(ds.labels).tolist() == [6000] * 10
    means = ds.images.float().mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(means, [125.3, 123.0, 113.9], atol=2.0)  # CIFAR-10 channel means
    again = load_dataset("cifar10", root=root / "CIFAR-10-images.tar.gz", cache_dir=tmp_path, split="test")
    assert torch.equal(again.images, ds.images[50000:])


# ----------------------------------------------------------------------------- MNIST layouts


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def fabricate_mnist(folder: Path, gz: bool, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([5, 6, 7], dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(folder / name, arr, gz)
    return arrays


def test_mnist_torchvision_layout_matches_torchvision(tmp_path):
    from torchvision.datasets import MNIST

    arrays = fabricate_mnist(tmp_path / "MNIST" / "raw", gz=False)
    ds = load_dataset("mnist", root=tmp_path)
    check_contract(ds, 9, (1, 28, 28))
    tv_train = MNIST(str(tmp_path), train=True, download=False)
    tv_test = MNIST(str(tmp_path), train=False, download=False)
    assert torch.equal(ds.images[:, 0], torch.cat([tv_train.data, tv_test.data]))
    np.testing.assert_array_equal(ds.labels, torch.cat([tv_train.targets, tv_test.targets]).numpy())
    test = load_dataset("mnist", root=tmp_path, split="test")
    np.testing.assert_array_equal(test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert test.num_classes == 10  # the class count does not depend on which labels occur


def test_fashion_mnist_gz_layouts(tmp_path):
    a = fabricate_mnist(tmp_path / "tv" / "FashionMNIST" / "raw", gz=True, seed=1)
    b = fabricate_mnist(tmp_path / "flat", gz=True, seed=1)
    ds_tv = load_dataset("fashion-mnist", root=tmp_path / "tv")
    ds_flat = load_dataset("fashion_mnist", root=tmp_path / "flat", split="train")
    assert ds_tv.name == "fashion_mnist" and ds_tv.class_names[0] == "T-shirt/top"
    assert torch.equal(ds_tv.images[:6], ds_flat.images)
    np.testing.assert_array_equal(ds_flat.images[:, 0].numpy(), b["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds_tv.labels, np.r_[a["train-labels-idx1-ubyte"], a["t10k-labels-idx1-ubyte"]])
    # the MNIST folder of the torchvision layout is not mistaken for Fashion-MNIST
    with pytest.raises(DatasetError, match="no idx files"):
        load_dataset("mnist", root=tmp_path / "tv")


def test_kmnist_torchvision_layout_matches_torchvision(tmp_path):
    from torchvision.datasets import KMNIST

    arrays = fabricate_mnist(tmp_path / "KMNIST" / "raw", gz=False, seed=2)
    ds = load_dataset("kmnist", root=tmp_path)
    check_contract(ds, 9, (1, 28, 28))
    assert ds.name == "kmnist" and ds.class_names == KMNIST.classes
    tv = KMNIST(str(tmp_path), train=True, download=False)
    assert torch.equal(ds.images[: len(tv), 0], tv.data)
    np.testing.assert_array_equal(ds.labels[len(tv):], arrays["t10k-labels-idx1-ubyte"])
    with pytest.raises(DatasetError, match="no idx files"):  # not read from MNIST's folder name
        load_dataset("mnist", root=tmp_path)


def test_mnist_truncated_file(tmp_path):
    fabricate_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("mnist", root=tmp_path)


# ----------------------------------------------------------------------------- USPS, COIL-20 fabricated


def test_usps_torchvision_bz2(tmp_path):
    rng = np.random.default_rng(0)
    for fname, n in (("usps.bz2", 4), ("usps.t.bz2", 2)):
        lines = []
        for k in range(n):
            vals = rng.uniform(-1, 1, 256)
            lines.append(f"{k + 1} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(vals)))
        (tmp_path / fname).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    ds = load_dataset("usps", root=tmp_path)
    check_contract(ds, 6, (1, 16, 16))
    assert ds.labels.tolist() == [0, 1, 2, 3, 0, 1]


def test_coil20_fabricated_column_major(tmp_path):
    import scipy.io

    img = np.zeros((32, 32))
    img[2:30, 3] = 1.0  # a vertical bar on the left, a short horizontal foot at the bottom
    img[29, 3:12] = 0.5
    fea = np.stack([img.ravel(order="F")] * 4, axis=1)  # (1024, 4), column per image
    scipy.io.savemat(tmp_path / "COIL20.mat", {"fea": fea, "gnd": np.array([[1, 1, 2, 2]], dtype=np.uint8)})
    ds = load_dataset("coil20", root=tmp_path / "COIL20.mat")
    check_contract(ds, 4, (1, 32, 32))
    np.testing.assert_array_equal(ds.images[0, 0].numpy(), np.rint(img * 255).astype(np.uint8))
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.num_classes == 2


# ----------------------------------------------------------------------------- CIFAR pickles


def write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    train = [rng_images(3, 3, 32, 32, seed=i) for i in range(5)]
    for i, x in enumerate(train):
        write_pickle(folder / f"data_batch_{i + 1}", {"data": x.reshape(3, -1), "labels": [i, i + 1, 9]})
    test = rng_images(2, 3, 32, 32, seed=9)
    write_pickle(folder / "test_batch", {"data": test.reshape(2, -1), "labels": [4, 5]})
    write_pickle(folder / "batches.meta", {"label_names": CIFAR10})
    ds = load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")
    check_contract(ds, 17, (3, 32, 32))
    assert ds.name == "cifar10" and ds.class_names == CIFAR10
    np.testing.assert_array_equal(ds.images.numpy(), np.concatenate([*train, test]))
    assert ds.labels.tolist()[:3] == [0, 1, 9] and ds.labels.tolist()[-2:] == [4, 5]
    assert len(load_dataset("cifar10", root=folder, split="test")) == 2
    assert not (tmp_path / "cache").exists()  # lossless pickles need no cache
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar100_superclasses(tmp_path):
    from clustkit.data.cifar import CIFAR100_SUPERCLASSES, FINE_TO_COARSE

    fines = sorted(f for v in CIFAR100_SUPERCLASSES.values() for f in v)
    assert fines == list(range(100))  # the table is a partition of the 100 fine classes
    folder = tmp_path / "cifar-100-python"
    fine = np.arange(100)
    coarse = FINE_TO_COARSE[fine]
    x = rng_images(100, 3, 32, 32)
    write_pickle(folder / "train", {"data": x.reshape(100, -1), "fine_labels": fine.tolist(),
                                    "coarse_labels": coarse.tolist()})
    write_pickle(folder / "test", {"data": x[:5].reshape(5, -1), "fine_labels": [72, 4, 95, 30, 55]})
    write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                   "coarse_label_names": [f"c{i}" for i in range(20)]})
    ds = load_dataset("cifar100", root=tmp_path)
    check_contract(ds, 105, (3, 32, 32))
    assert ds.name == "cifar100-20" and ds.num_classes == 20 and ds.class_names[3] == "c3"
    assert ds.labels[:100].tolist() == coarse.tolist()
    assert ds.labels[100:].tolist() == [0] * 5  # from the table: the test pickle has no coarse labels
    assert ds.labels[72] == 0 and ds.labels[1] == 1 and ds.labels[85] == 19
    fine_ds = load_dataset("cifar100", root=tmp_path, superclasses=False, split="train")
    assert fine_ds.num_classes == 100 and fine_ds.labels.tolist() == fine.tolist()


# ----------------------------------------------------------------------------- CIFAR-10 JPEG copy


def fabricate_cifar_jpg(tmp_path: Path, classes=CIFAR10, per_split=(3, 1)) -> tuple[Path, dict]:
    """A tiny CIFAR-10-images.tar.gz; members added in a shuffled order, numbers out of lexical order."""
    rng = np.random.default_rng(0)
    members, expected = [], {"train": [], "test": []}
    for split, n in zip(("train", "test"), per_split):
        for k, c in enumerate(classes):
            for j in (9, 10, 2)[:n]:  # 2 < 9 < 10 numerically, "10" < "2" < "9" as names
                img = np.full((32, 32, 3), 20 * k + j, dtype=np.uint8) + rng.integers(0, 5, (32, 32, 3), dtype=np.uint8)
                data = jpeg_bytes(img)
                members.append((f"CIFAR-10-images/{split}/{c}/{j}.jpg", data))
                expected[split].append((CIFAR10.index(c), j, data))
    rng.shuffle(members)
    archive = tmp_path / "src" / "CIFAR-10-images.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        readme = b"# CIFAR-10-images\n"
        info = tarfile.TarInfo("CIFAR-10-images/README.md")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive, expected


def decode_reference(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)


def test_cifar10_jpg_archive(tmp_path):
    archive, expected = fabricate_cifar_jpg(tmp_path)
    cache = tmp_path / "cache"
    ds = load_dataset("cifar10", root=archive.parent, cache_dir=cache)
    check_contract(ds, 40, (3, 32, 32))
    assert ds.name == "cifar10-jpg" and ds.class_names == CIFAR10
    order = sorted(expected["train"], key=lambda t: (t[0], t[1])) + sorted(expected["test"], key=lambda t: (t[0], t[1]))
    assert ds.labels.tolist() == [t[0] for t in order]
    ref = np.stack([decode_reference(t[2]) for t in order])
    assert np.abs(ds.images.numpy().astype(int) - ref.astype(int)).max() <= 2  # decoders may differ by rounding
    # numeric order inside a class: 2.jpg, 9.jpg, 10.jpg (name order would put 10.jpg first)
    means = [ds.images[i].float().mean().item() for i in range(3)]
    assert means == sorted(means)
    # cached once, atomically: a single .npz and no leftover temporary file
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].startswith("cifar10-jpg-") and files[0].endswith(".npz")
    cached = load_dataset("cifar10", root=archive, cache_dir=cache, split="test")
    assert torch.equal(cached.images, ds.images[30:]) and cached.labels.tolist() == ds.labels[30:].tolist()
    # the archive is never extracted next to itself
    assert sorted(p.name for p in archive.parent.iterdir()) == ["CIFAR-10-images.tar.gz"]

    # an already-extracted tree gives the same arrays
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "tree", filter="data")
    tree = load_dataset("cifar10", root=tmp_path / "tree", cache_dir=tmp_path / "cache2")
    assert tree.name == "cifar10-jpg" and torch.equal(tree.images, ds.images)
    assert tree.labels.tolist() == ds.labels.tolist()
    again = load_dataset("cifar10", root=tmp_path / "tree" / "CIFAR-10-images", cache_dir=tmp_path / "cache2")
    assert torch.equal(again.images, ds.images)


def test_cifar10_jpg_corrupt_cache_is_rebuilt(tmp_path):
    archive, _ = fabricate_cifar_jpg(tmp_path, per_split=(1, 1))
    cache = tmp_path / "cache"
    ds = load_dataset("cifar10", root=archive, cache_dir=cache)
    (npz,) = cache.iterdir()
    npz.write_bytes(b"garbage")
    again = load_dataset("cifar10", root=archive, cache_dir=cache)
    assert torch.equal(again.images, ds.images)


def test_cifar10_jpg_missing_classes(tmp_path):
    archive, _ = fabricate_cifar_jpg(tmp_path, classes=["airplane", "cat"], per_split=(1, 1))
    with pytest.raises(DatasetError, match="automobile, bird, deer"):
        load_dataset("cifar10", root=archive, cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetError, match="found neither pickles"):
        load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- STL-10


def test_stl10_binary(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    train, test, unl = rng_images(3, 3, 96, 96, 0), rng_images(2, 3, 96, 96, 1), rng_images(4, 3, 96, 96, 2)
    for name, x in (("train_X.bin", train), ("test_X.bin", test), ("unlabeled_X.bin", unl)):
        (folder / name).write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())  # column-major
    (folder / "train_y.bin").write_bytes(bytes([1, 2, 10]))
    (folder / "test_y.bin").write_bytes(bytes([3, 4]))
    (folder / "class_names.txt").write_text("airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n")
    ds = load_dataset("stl10", root=tmp_path)
    check_contract(ds, 5, (3, 96, 96))
    np.testing.assert_array_equal(ds.images.numpy(), np.concatenate([train, test]))
    assert ds.labels.tolist() == [0, 1, 9, 2, 3] and ds.class_names[2] == "car"
    full = load_dataset("stl10", root=tmp_path, unlabeled=True)
    check_contract(full, 9, (3, 96, 96))
    assert full.labels[5:].tolist() == [-1] * 4 and full.num_classes == 10 and full.has_labels
    np.testing.assert_array_equal(full.images[5:].numpy(), unl)
    (folder / "unlabeled_X.bin").unlink()
    with pytest.raises(DatasetError, match="unlabeled_X.bin"):
        load_dataset("stl10", root=tmp_path, unlabeled=True)


# ----------------------------------------------------------------------------- folders


def make_folder(root: Path, layout: dict[str, int], size=(20, 30), seed=0) -> None:
    """layout: relative folder -> number of PNGs."""
    rng = np.random.default_rng(seed)
    for rel, n in layout.items():
        for j in range(n):
            save_png(root / rel / f"img{j:02d}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def test_image_folder_labelled(tmp_path):
    make_folder(tmp_path, {"cats": 3, "dogs": 2, "dogs/sub": 1, "empty_dir_has_none": 0})
    (tmp_path / "empty_dir_has_none").mkdir(exist_ok=True)
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    ds = load_dataset("image_folder", root=tmp_path, image_size=16)
    assert isinstance(ds, FolderDataset)
    check_contract(ds, 6, (3, 16, 16))
    assert ds.class_names == ["cats", "dogs"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    picked = load_dataset("image_folder", root=tmp_path, classes=["dogs", "cats"], image_size=(8, 12), channels=1)
    check_contract(picked, 6, (1, 8, 12))
    assert picked.class_names == ["dogs", "cats"] and picked.labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DatasetError, match="birds"):
        load_dataset("image_folder", root=tmp_path, classes=["cats", "birds"])
    # default size 224, and batches collate through a DataLoader (pickled for workers)
    big = load_dataset("image_folder", root=tmp_path)
    assert big.image_size == (224, 224)
    loader = torch.utils.data.DataLoader(pickle.loads(pickle.dumps(ds)), batch_size=4)
    imgs, _, idx = next(iter(loader))
    assert imgs.shape == (4, 3, 16, 16) and imgs.dtype == torch.uint8 and idx.tolist() == [0, 1, 2, 3]
    mem = ds.to_memory()
    assert isinstance(mem, InMemoryDataset) and torch.equal(mem.images[5], ds[5][0])


def test_image_folder_resize_is_resize_then_center_crop(tmp_path):
    from torchvision.transforms import v2

    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    save_png(tmp_path / "a" / "x.png", img)
    save_png(tmp_path / "b" / "y.png", img)
    ds = load_dataset("image_folder", root=tmp_path, image_size=10)
    t = torch.from_numpy(img).permute(2, 0, 1)
    ref = v2.CenterCrop(10)(v2.Resize(10, antialias=True)(t))
    assert torch.equal(ds[0][0], ref)


def test_image_folder_flat_unlabelled(tmp_path):
    make_folder(tmp_path, {".": 4})
    save_png(tmp_path / "grey.png", np.zeros((5, 5), dtype=np.uint8))  # grey input -> 3 channels
    ds = load_dataset("image_folder", root=tmp_path, image_size=8)
    check_contract(ds, 5, (3, 8, 8))
    assert ds.num_classes is None and ds.class_names is None and not ds.has_labels
    assert ds.labels.tolist() == [-1] * 5
    (tmp_path / "zz_broken.png").write_bytes(b"not a png")
    broken = load_dataset("image_folder", root=tmp_path, image_size=8)
    image, label, index = broken[len(broken) - 1]  # a blank image marked unreadable; the run skips it
    assert label == UNREADABLE and index == len(broken) - 1 and not image.any()
    assert "zz_broken.png" in broken.describe_unreadable(index)


def test_image_folder_wrapper_and_splits(tmp_path):
    make_folder(tmp_path / "wrap", {"only/a": 2, "only/b": 1})  # wrap/only/{a,b}: extra nesting
    ds = load_dataset("image_folder", root=tmp_path / "wrap", image_size=8)
    assert ds.class_names == ["a", "b"] and ds.labels.tolist() == [0, 0, 1]
    make_folder(tmp_path / "split", {"train/a": 2, "train/b": 1, "val/a": 1, "val/b": 2})
    both = load_dataset("image_folder", root=tmp_path / "split", image_size=8)
    assert len(both) == 6 and both.labels.tolist() == [0, 0, 1, 0, 1, 1]
    test = load_dataset("image_folder", root=tmp_path / "split", image_size=8, split="test")
    assert test.labels.tolist() == [0, 1, 1]
    with pytest.raises(DatasetError, match="split 'train' needs"):
        load_dataset("image_folder", root=tmp_path / "wrap", split="train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset("image_folder", root=tmp_path / "empty")


def test_imagenet10_nested_train(tmp_path):
    make_folder(tmp_path / "train", {w: 1 + (k % 2) for k, w in enumerate(IMAGENET10)} | {"n09999999": 1}, size=(8, 8))
    ds = load_dataset("imagenet10", root=tmp_path, image_size=8)
    check_contract(ds, 15, (3, 8, 8))
    assert ds.class_names == IMAGENET10 and ds.num_classes == 10
    assert np.bincount(ds.labels).tolist() == [1, 2] * 5  # not every label 0
    direct = load_dataset("imagenet10", root=tmp_path / "train", image_size=8)
    assert direct.labels.tolist() == ds.labels.tolist()


def test_imagenet_missing_wnids(tmp_path):
    make_folder(tmp_path, {w: 1 for w in IMAGENET10[:7]}, size=(8, 8))
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet10", root=tmp_path)
    msg = str(err.value)
    assert all(w in msg for w in IMAGENET10[7:]) and IMAGENET10[0] not in msg.split("lacks")[1].split(".")[0]
    make_folder(tmp_path / "other", {"cats": 1}, size=(8, 8))
    with pytest.raises(DatasetError, match="none of the WordNet-id folders.*cats"):
        load_dataset("imagenet_dogs", root=tmp_path / "other")


def test_tiny_imagenet_layout(tmp_path):
    wnids = ["n01443537", "n01629819", "n01641577"]
    make_folder(tmp_path / "train", {f"{w}/images": 2 for w in wnids}, size=(64, 64))
    for w in wnids:
        (tmp_path / "train" / w / f"{w}_boxes.txt").write_text("")
    make_folder(tmp_path / "val", {"images": 2}, size=(64, 64))
    (tmp_path / "val" / "val_annotations.txt").write_text(
        f"img00.png\t{wnids[2]}\t0\t0\t10\t10\nimg01.png\t{wnids[0]}\t0\t0\t10\t10\n"
    )
    ds = load_dataset("tiny_imagenet", root=tmp_path)
    check_contract(ds, 6, (3, 64, 64))
    assert ds.class_names == wnids and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    val = load_dataset("tiny_imagenet", root=tmp_path, split="test", image_size=32)
    check_contract(val, 2, (3, 32, 32))
    assert val.labels.tolist() == [2, 0]
