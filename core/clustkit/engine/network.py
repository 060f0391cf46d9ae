"""The network a run trains (backbone + named heads) and its momentum (EMA) copy."""

from __future__ import annotations

import copy

import torch
from torch import nn


class Network(nn.Module):
    """Backbone plus named heads; the momentum network is a copy of the same shape."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def head_input(self, name: str) -> str | None:
        """The head whose output head ``name`` reads (a head module with an ``input_head``
        attribute, e.g. BYOL's predictor on the projector), or None for the backbone features."""
        return getattr(self.heads[name], "input_head", None)

    def head(self, feats: torch.Tensor, name: str) -> torch.Tensor:
        """Head ``name`` applied to backbone features ``feats``, through the heads it reads."""
        source = self.head_input(name)
        return self.heads[name](feats if source is None else self.head(feats, source))


def momentum_copy(model: Network, heads: list[str]) -> Network:
    """A frozen copy of ``model`` with only the listed heads: the target network of BYOL/MoCo-style
    methods, moved towards the online network by :func:`ema_update` after every step."""
    target = copy.deepcopy(model)
    for name in list(target.heads):
        if name not in heads:
            del target.heads[name]
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float, copy_buffers: bool = True) -> None:
    """target <- m·target + (1-m)·online for every parameter the two share. Buffers (BatchNorm
    statistics) are copied from the online network, or, with ``copy_buffers=False``, left to the
    target's own forward passes as the MoCo/BYOL reference code does (``[momentum] buffers``)."""
    online_params = dict(online.named_parameters())
    pairs = [(p, online_params[name].detach()) for name, p in target.named_parameters()
             if online_params[name].requires_grad]  # a frozen backbone is the same in both
    if pairs:  # one fused call per op over all tensors (the same arithmetic as p.mul_(m).add_(o, alpha=1-m))
        mine, theirs = [p for p, _ in pairs], [o for _, o in pairs]
        torch._foreach_mul_(mine, momentum)
        torch._foreach_add_(mine, theirs, alpha=1 - momentum)
    if not copy_buffers:
        return
    online_buffers = dict(online.named_buffers())
    for name, b in target.named_buffers():
        b.copy_(online_buffers[name])
