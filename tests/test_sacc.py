"""SACC plugin: the strong augmentation (deterministic, changes images, batched == per image),
the view generator, pair sets, losses against naive loops (docs/methods/sacc.md), zero weights,
the view grid and a tiny run."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from clustkit import BuildContext, ClusterContrast, InstanceContrast
from clustkit.errors import RecipeError
from clustkit_sacc import (
    OP_NAMES,
    TRAIN_PY_CLUSTER_PAIRS,
    TRAIN_PY_INSTANCE_PAIRS,
    SACCClusterConfig,
    SACCInstanceConfig,
    SACCViewsConfig,
)
from clustkit_sacc import views as C
from clustkit_sacc.randaugment import RandAugment, geometric_warp, op_args
from conftest import REPO, FakeOut, rgb, run_recipe
from naive import naive_cluster_contrast as naive_cluster
from naive import naive_nt_xent

D = torch.float64


def digits(n: int = 16) -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16.0


def views_ctx(channels: int = 1, size: int = 8) -> BuildContext:
    recipe = SimpleNamespace(path="t.toml", views=SimpleNamespace(name="sacc"))
    return BuildContext(recipe, "views", torch.device("cpu"), in_channels=channels, image_size=(size, size))


# ----------------------------------------------------------------------------- RandAugment


def test_strong_augmentation_is_deterministic_under_a_seed_and_changes_images():
    x = digits()
    gen = C.SACCViews(SACCViewsConfig(name="sacc", weak="tensor_affine"), views_ctx())
    torch.manual_seed(3)
    a = gen.make_views(x, True, None)
    torch.manual_seed(3)
    b = gen.make_views(x, True, None)
    torch.manual_seed(4)
    c = gen.make_views(x, True, None)
    for name in ("weak1", "weak2", "strong"):
        assert torch.equal(a[name], b[name])
        assert not torch.equal(a[name], c[name])
        assert a[name].shape == x.shape and a[name].min() >= 0 and a[name].max() <= 1
    assert (a["strong"] - x).abs().mean() > 0.05
    ra = RandAugment(OP_NAMES, channels=1)
    torch.manual_seed(0)
    s1 = ra(x)
    torch.manual_seed(0)
    assert torch.equal(ra(x), s1) and not torch.equal(s1, x)


def test_randaugment_rgb_pipeline_is_deterministic():
    x = rgb()
    gen = C.SACCViews(SACCViewsConfig(name="sacc"), views_ctx(3, 32))
    torch.manual_seed(1)
    a = gen.make_views(x, True, None)
    torch.manual_seed(1)
    b = gen.make_views(x, True, None)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["strong"], a["weak1"])


def reference_op(name: str, img: torch.Tensor, v: int, sign: int) -> torch.Tensor:
    """One FixMatch op on one image with torchvision's functional ops (PIL's formulas), written from
    the table in docs/methods/sacc.md: the per-image reference the batched kornia ops must match."""
    from torchvision.transforms.v2 import functional as TF

    h, w = img.shape[-2:]
    if name == "Identity":
        return img
    f = 0.9 * v / 10 + 0.05
    if name == "TranslateX" or name == "TranslateY":
        px = sign * (3 * v * (w if name == "TranslateX" else h) // 100)
        t = [px, 0] if name == "TranslateX" else [0, px]
        return TF.affine(img, angle=0.0, translate=t, scale=1.0, shear=[0.0, 0.0])
    if name in ("ShearX", "ShearY"):
        deg = sign * math.degrees(math.atan(0.3 * v / 10))
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
                         shear=[deg, 0.0] if name == "ShearX" else [0.0, deg])
    out = {"AutoContrast": lambda: TF.autocontrast(img), "Equalize": lambda: TF.equalize(img),
           "Brightness": lambda: TF.adjust_brightness(img, f), "Color": lambda: TF.adjust_saturation(img, f),
           "Contrast": lambda: TF.adjust_contrast(img, f), "Sharpness": lambda: TF.adjust_sharpness(img, f),
           "Posterize": lambda: TF.posterize((img * 255).round().to(torch.uint8), v * 4 // 10 + 4).float() / 255,
           "Solarize": lambda: TF.solarize(img, (256 - v * 256 // 10) / 255),
           "Rotate": lambda: TF.rotate(img, float(sign * (v * 30 // 10)))}[name]()
    return out.clamp(0, 1)


def agree(a: torch.Tensor, b: torch.Tensor, atol: float) -> float:
    """Share of pixel values of a and b within ``atol``."""
    return ((a - b).abs() <= atol).float().mean().item()


@pytest.mark.parametrize("op", OP_NAMES)
def test_each_batched_op_matches_the_per_image_reference(op):
    """Every image of a batch gets its own magnitude and sign, and the one batched call matches
    the per-image reference: exactly up to float rounding for the colour ops, and on all but the
    pixels a nearest-neighbour warp rounds the other way for the geometric ones."""
    x = (rgb(n=36, size=32, seed=5) * 255).round() / 255     # 8-bit levels, as decoded images
    ra = RandAugment([op], n_ops=1, max_magnitude=9, p=1.0, channels=3)
    draws = {"op": torch.zeros(36, 1, dtype=torch.long), "mag": torch.arange(36).remainder(9).add(1).view(36, 1),
             "sign": torch.arange(36).div(9, rounding_mode="floor").remainder(2).view(36, 1),
             "apply": torch.ones(36, 1, dtype=torch.bool)}
    batched = ra(x, draws)
    for i in range(36):
        ref = reference_op(op, x[i:i + 1], int(draws["mag"][i, 0]), 1 if draws["sign"][i, 0] else -1)
        if op in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
            assert agree(batched[i:i + 1], ref, 1e-6) > 0.97, (op, i)
        else:
            assert torch.allclose(batched[i:i + 1], ref, atol=1e-3), (op, i)  # grey weights .299 vs .2989


@pytest.mark.parametrize("size", [8, 16, 32])
def test_geometric_warp_samples_as_an_inverse_pixel_map(size):
    """The batched warp against a naive reference written from the pixel map: the output pixel p
    takes the input at A^-1 (p - c - t) + c (A: rotation or shear, t: translation, c: the centre),
    rounded to the nearest pixel, zero outside; equal on all but the pixels whose source lies
    within rounding of a pixel boundary."""
    torch.manual_seed(size)
    names = ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"] * 6
    value = torch.tensor([(-1) ** i * (1 + i) for i in range(30)], dtype=torch.float32)
    value[1::5] /= 100  # shear factors
    value[2::5] /= 100
    x = torch.rand(30, 2, size, size)
    out = geometric_warp(x, names, value)
    c = (size - 1) / 2
    ref = torch.zeros_like(x)
    for i, (name, v) in enumerate(zip(names, value.double().tolist())):
        a, t = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        if name == "Rotate":
            r = math.radians(v)
            a = torch.tensor([[math.cos(r), math.sin(r)], [-math.sin(r), math.cos(r)]], dtype=torch.float64)
        elif name == "ShearX":
            a[0, 1] = -v
        elif name == "ShearY":
            a[1, 0] = -v
        else:
            t[0 if name == "TranslateX" else 1] = v
        inv = torch.linalg.inv(a)
        for yy in range(size):
            for xx in range(size):
                sx, sy = (inv @ (torch.tensor([xx, yy], dtype=torch.float64) - c - t) + c).tolist()
                ix, iy = round(sx), round(sy)
                if 0 <= ix < size and 0 <= iy < size:
                    ref[i, :, yy, xx] = x[i, :, iy, ix]
    assert agree(out, ref, 0.0) > 0.99


def test_batched_randaugment_follows_each_images_draws():
    """Five slots of random ops on a batch equal the per-image reference applied slot by slot
    (geometric ops up to nearest-neighbour rounding)."""
    x = (rgb(n=24, size=16, seed=1) * 255).round() / 255
    ra = RandAugment(OP_NAMES, n_ops=5, max_magnitude=9, p=0.5, channels=3)
    torch.manual_seed(0)
    d = ra.sample(x.shape[0])
    batched = ra(x, d)
    for i in range(x.shape[0]):
        img = x[i:i + 1]
        for s in range(ra.n_ops):
            if d["apply"][i, s]:
                img = reference_op(ra.ops[int(d["op"][i, s])], img, int(d["mag"][i, s]), 1 if d["sign"][i, s] else -1)
        assert agree(batched[i:i + 1], img, 1e-3) > 0.9, i


def test_randaugment_draws_follow_the_sacc_settings():
    ra = RandAugment(OP_NAMES, n_ops=5, max_magnitude=9, p=0.5, channels=3)
    torch.manual_seed(0)
    d = ra.sample(4000)
    assert d["op"].shape == (4000, 5)
    assert set(d["mag"].unique().tolist()) == set(range(1, 10))
    assert set(d["op"].unique().tolist()) == set(range(14))  # drawn with replacement from 14
    assert abs(d["apply"].float().mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("op", OP_NAMES)
def test_each_op_keeps_range_and_changes_an_image(op):
    x = rgb(n=2, size=32, seed=2)
    ra = RandAugment([op], n_ops=1, max_magnitude=9, p=1.0, channels=3)
    draws = {"op": torch.zeros(2, 1, dtype=torch.long), "mag": torch.full((2, 1), 9),
             "sign": torch.ones(2, 1, dtype=torch.long), "apply": torch.ones(2, 1, dtype=torch.bool)}
    y = ra(x, draws)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    if op == "Identity":
        assert torch.equal(y, x)
    else:
        assert not torch.allclose(y, x), op


def test_op_parameters_follow_the_table():
    assert op_args("Brightness", 1, 1, 8, 8) == (0.9 * 1 / 10 + 0.05,)
    assert op_args("Posterize", 9, 1, 8, 8) == (7,) and op_args("Posterize", 1, 1, 8, 8) == (4,)
    assert op_args("Solarize", 1, 1, 8, 8) == (231 / 255,) and op_args("Solarize", 9, 1, 8, 8) == (26 / 255,)
    assert op_args("Rotate", 9, -1, 8, 8) == (-27.0,)
    assert op_args("ShearX", 5, 1, 8, 8)[0] == pytest.approx(0.15)
    assert op_args("TranslateY", 9, 1, 100, 50) == (27.0,) and op_args("TranslateX", 1, 1, 8, 8) is None


def test_every_op_parameter_stays_in_the_papers_range():
    """Over every magnitude 1..9 and sign: factors in [0.14, 0.86], posterize 4..7 bits, solarize
    threshold in [26/255, 231/255], rotations within 27 degrees, shears within 0.27, translations
    within 27% of the side; Identity, AutoContrast and Equalize take no parameter."""
    ra = RandAugment(OP_NAMES, n_ops=5, max_magnitude=9, channels=3)
    table = ra.table(32, 32)
    bounds = {"Brightness": (0.14, 0.86), "Color": (0.14, 0.86), "Contrast": (0.14, 0.86), "Sharpness": (0.14, 0.86),
              "Posterize": (4, 7), "Solarize": (26 / 255, 231 / 255), "Rotate": (-27, 27), "ShearX": (-0.27, 0.27),
              "ShearY": (-0.27, 0.27), "TranslateX": (-8, 8), "TranslateY": (-8, 8), "AutoContrast": (0, 0),
              "Equalize": (0, 0)}
    for i, name in enumerate(ra.ops):
        values = table[i, 1:].flatten()
        if name == "Identity":
            assert values.isnan().all()
            continue
        values = values[~values.isnan()]   # NaN: a translation of less than a pixel, a no-op
        lo, hi = bounds[name]
        assert values.min() >= lo - 1e-9 and values.max() <= hi + 1e-9, name
        if name in ("Rotate", "ShearX", "TranslateX"):
            assert values.min() < 0 < values.max(), name      # both signs drawn


def test_colour_ops_needing_three_channels_are_skipped_for_grey_images():
    assert "Color" not in RandAugment(OP_NAMES, channels=1).ops
    assert "Color" in RandAugment(OP_NAMES, channels=3).ops


def test_normalisation_modes():
    x = rgb(n=4, size=32)
    for mode, normalised in (("none", set()), ("strong", {"strong"}), ("all", {"weak1", "weak2", "strong", "eval"})):
        gen = C.SACCViews(SACCViewsConfig(name="sacc", normalize=mode), views_ctx(3, 32))
        v = gen.make_views(x, True, None) | gen.make_views(x, False, None)
        for name, t in v.items():
            assert (t.min() < 0) == (name in normalised), (mode, name)
    gen = C.SACCViews(SACCViewsConfig(name="sacc"), views_ctx(3, 32))
    assert torch.equal(gen.make_views(x, False, None)["eval"], x)


# ----------------------------------------------------------------------------- losses


def loss_ctx(key: str, views=("weak1", "weak2", "strong")) -> BuildContext:
    recipe = SimpleNamespace(path="t.toml", views=SimpleNamespace(name="sacc"))
    return BuildContext(recipe, key, torch.device("cpu"), view_names=tuple(views))


def three_views(n: int = 8, k: int = 3, d: int = 5):
    h = {}
    for i, v in enumerate(("weak1", "weak2", "strong")):
        g = torch.Generator().manual_seed(i)
        h[(v, "instance")] = torch.randn(n, d, generator=g, dtype=D).requires_grad_(True)
        h[(v, "cluster")] = torch.softmax(torch.randn(n, k, generator=g, dtype=D), 1).detach().requires_grad_(True)
    return h


def check(value, ref, inputs):
    assert torch.allclose(value, ref, atol=1e-10)
    for ga, gb in zip(torch.autograd.grad(value, inputs), torch.autograd.grad(ref, inputs)):
        assert torch.allclose(ga, gb, atol=1e-10)


def test_default_pairs_follow_train_py(plugin_set):
    registry = plugin_set().registry
    assert registry.get("loss", "sacc_instance").config_model() is SACCInstanceConfig
    assert registry.get("loss", "sacc_cluster").config_model() is SACCClusterConfig
    assert SACCInstanceConfig(name="sacc_instance").pairs == [("weak1", "weak2"), ("weak2", "strong")]
    assert SACCClusterConfig(name="sacc_cluster").pairs == [("weak1", "weak2"), ("weak1", "strong"),
                                                            ("weak2", "strong")]
    assert TRAIN_PY_INSTANCE_PAIRS != TRAIN_PY_CLUSTER_PAIRS


@pytest.mark.parametrize("pairs", [None, [("weak1", "weak2"), ("weak1", "strong")]])  # train.py / train_STL10.py
def test_losses_match_naive_loops_over_the_pair_set(pairs):
    h = three_views()
    extra = {} if pairs is None else {"pairs": pairs}
    inst = InstanceContrast(SACCInstanceConfig(name="sacc_instance", **extra), loss_ctx("losses.instance"))
    clu = ClusterContrast(SACCClusterConfig(name="sacc_cluster", weight=0.5, **extra), loss_ctx("losses.cluster"))
    ins_pairs = pairs or TRAIN_PY_INSTANCE_PAIRS
    clu_pairs = pairs or TRAIN_PY_CLUSTER_PAIRS
    views = ("weak1", "weak2", "strong")
    value = inst.compute_loss(FakeOut(h), None)
    ref = sum(naive_nt_xent(h[(u, "instance")], h[(v, "instance")], 0.5) for u, v in ins_pairs)
    check(value, ref, [h[(v, "instance")] for v in views])
    value = clu.compute_loss(FakeOut(h), None)  # unweighted: the engine applies sigma (weight)
    ref = sum(naive_cluster(h[(u, "cluster")], h[(v, "cluster")], 1.0, 1.0) for u, v in clu_pairs)
    check(value, ref, [h[(v, "cluster")] for v in views])


def test_pairs_must_name_produced_views():
    with pytest.raises(RecipeError, match=r"losses.instance.pairs\[1\].*'strong2'"):
        InstanceContrast(SACCInstanceConfig(name="sacc_instance", pairs=[("weak1", "weak2"), ("weak1", "strong2")]),
                         loss_ctx("losses.instance"))
    with pytest.raises(RecipeError, match="itself"):
        InstanceContrast(SACCInstanceConfig(name="sacc_instance", pairs=[("weak1", "weak1")]), loss_ctx("losses.i"))


# ----------------------------------------------------------------------------- through the engine


def test_recipe_pairs_and_zero_weight(plugin_set):
    from clustkit.engine.run import Run
    from clustkit.recipe import load

    ps = plugin_set()
    path = REPO / "recipes" / "sacc.toml"
    built = Run(load(path, ps.registry, ["backbone.width=8", 'losses.instance.pairs=[["weak1", "strong"]]']),
                ps, None).build().components.by_key
    assert built["losses.instance"].pairs == [("weak1", "strong")]
    assert built["views"].view_names == ["weak1", "weak2", "strong"]
    built = Run(load(path, ps.registry, ["backbone.width=8", "losses.cluster.weight=0"]),
                ps, None).build().components.by_key
    assert "losses.cluster" not in built and "losses.instance" in built
    with pytest.raises(RecipeError, match=r"losses.cluster.pairs\[0\]"):  # at load: SACC's views declare their names
        load(path, ps.registry, ['losses.cluster.pairs=[["weak1", "strong9"]]'])


def test_tiny_sacc_run_end_to_end(plugin_set, tmp_path: Path):
    summary = run_recipe(REPO / "recipes" / "sacc.toml", plugin_set(), tmp_path / "run", [
        "run.epochs=1", "run.batch_size=128", "run.eval_every=0", "backbone.width=8", "backbone.out_dim=32",
        "heads.instance.hidden=[32]", "heads.cluster.hidden=[32]", "losses.cluster.weight=0.5"])
    assert summary["epochs"] == 1 and 0 <= summary["acc"] <= 1
    assert '"cluster"' in (tmp_path / "run" / "metrics.jsonl").read_text()


def test_view_grid_png(tmp_path: Path):
    from clustkit.cli.viewgrid import save_view_grid, view_rows

    rows = view_rows(str(REPO / "recipes" / "sacc.toml"), ["backbone.width=8"], n_images=4)
    assert list(rows) == ["original", "weak1", "weak2", "strong"]
    assert all(r.shape == (4, 1, 8, 8) for r in rows.values())
    path = save_view_grid(str(REPO / "recipes" / "sacc.toml"), ["backbone.width=8"], str(tmp_path / "g.png"), 4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
