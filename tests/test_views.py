"""Every registered view generator makes its training views batched, with each image's own random
parameters drawn within the papers' ranges (docs/api.md, "Views"): no per-image Python loop, so
the number of tensor operations a batch costs does not grow with the batch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from clustkit import BuildContext
from clustkit.nn.augment import simclr_augment, weak_pipeline
from clustkit.plugin_system.manager import get_plugins
from conftest import rgb

GENERATORS: list[tuple[str, dict[str, Any]]] = [
    ("tensor_affine", {}),
    ("cc_weak", {}),
    ("cc_weak", {"blur": True, "normalize": True}),
    ("digpro_simclr", {}),
    ("sacc", {}),
    ("sacc", {"weak": "tensor_affine"}),
]


class CountCalls(TorchFunctionMode):
    """Counts every torch function and tensor method called inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls += 1
        return func(*args, **(kwargs or {}))


def build(name: str, settings: dict[str, Any], channels: int = 3, size: int = 32) -> Any:
    spec = get_plugins().registry.get("views", name)
    assert spec is not None, name
    config = spec.config_model().model_validate({"name": name, **settings})
    recipe = SimpleNamespace(path="t.toml", views=config)
    return spec.build(config, BuildContext(recipe, "views", torch.device("cpu"), in_channels=channels,
                                           image_size=(size, size)))


def ops_for(gen: Any, batch: int) -> int:
    x = rgb(batch)
    torch.manual_seed(0)
    with CountCalls() as counter:
        gen.make_views(x, True, None)
    return counter.calls


@pytest.mark.parametrize(("name", "settings"), GENERATORS)
def test_no_view_generator_loops_over_the_images_of_a_batch(name: str, settings: dict[str, Any]) -> None:
    """A per-image loop costs at least one operation per image: 16 times the batch would cost at
    least 16 times the operations. A batched generator costs about the same at any batch size
    (RandAugment may call a few more ops when a larger batch draws more of its pool)."""
    gen = build(name, settings)
    small, large = ops_for(gen, 32), ops_for(gen, 512)
    assert large < 1.5 * small, (name, settings, small, large)


@pytest.mark.parametrize(("name", "settings"), GENERATORS)
def test_two_copies_of_an_image_get_different_views(name: str, settings: dict[str, Any]) -> None:
    gen = build(name, settings)
    x = rgb(1).expand(16, -1, -1, -1).contiguous()
    torch.manual_seed(1)
    views = gen.make_views(x, True, None)
    for view, v in views.items():
        assert v.shape[0] == 16, view
        flat = v.flatten(1)
        distinct = torch.cdist(flat, flat)[~torch.eye(16, dtype=torch.bool)]
        assert distinct.min() > 0, (name, view)


def test_the_simclr_chain_draws_each_images_parameters_in_the_papers_ranges() -> None:
    """CC's weak view at s = 0.5: crop area 8-100% of the image at aspect ratio 3/4-4/3, flip
    p = 0.5, jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8, grey p = 0.2; each image its own draw."""
    aug = weak_pipeline(32, 3, strength=0.5)
    torch.manual_seed(0)
    aug(rgb(4096))
    crop, flip, jitter, grey = aug
    boxes = crop._params["src"].float()            # corners of each image's crop, in pixels
    width = boxes[:, 1, 0] - boxes[:, 0, 0] + 1
    height = boxes[:, 2, 1] - boxes[:, 1, 1] + 1
    area, ratio = width * height / 32 ** 2, width / height
    assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0 and area.std() > 0.2
    assert ratio.min() >= 0.75 - 0.1 and ratio.max() <= 4 / 3 + 0.1
    assert abs(flip._params["batch_prob"].float().mean().item() - 0.5) < 0.03
    jp = jitter._params
    assert abs(jp["batch_prob"].float().mean().item() - 0.8) < 0.03
    b, c, s, h = (jp[k][jp["batch_prob"] > 0.5] for k in ("brightness_factor", "contrast_factor", "saturation_factor",
                                                      "hue_factor"))
    for factor in (b, c, s):
        assert factor.min() >= 0.6 and factor.max() <= 1.4 and factor.std() > 0.2
    assert h.min() >= -0.1 and h.max() <= 0.1 and h.std() > 0.05
    assert abs(grey._params["batch_prob"].float().mean().item() - 0.2) < 0.03


def test_sacc_strong_base_flips_last_and_blurs_with_a_random_sigma() -> None:
    aug = simclr_augment(32, 3, (0.08, 1.0), (0.4, 0.4, 0.4, 0.1), blur_kernel=13, flip_last=True)
    names = [type(m).__name__ for m in aug]
    assert names == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "RandomGaussianBlur",
                     "RandomHorizontalFlip"]
    torch.manual_seed(0)
    aug(rgb(2048))
    blur = aug[3]._params
    sigma = blur["sigma"][blur["batch_prob"] > 0.5]
    assert abs(blur["batch_prob"].float().mean().item() - 0.5) < 0.04
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0 and sigma.std() > 0.3


def test_grey_images_skip_the_colour_ops() -> None:
    names = [type(m).__name__ for m in weak_pipeline(28, 1, strength=1.0)]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip"]
