"""Pretrained weights for a backbone, and which part of it trains.

``[backbone] weights`` is ``"none"`` (random initialisation), ``"hub"`` (the library's own
download: timm's pretrained weights, torchvision's ``DEFAULT``; needs network) or a local file
(``.safetensors``, ``.pth``, ``.pt``, ``.bin``). A file is read as a state dict, optionally
renamed by ``key_map``, and must fit the model exactly (a classifier the backbone dropped is
ignored): a missing or unexpected key or a wrong shape is a one-paragraph error naming the file
and the first keys, exit code 2, never a silently half-loaded network.

``key_map`` renames the file's keys for checkpoints written by other code: either a table of
regular expressions applied in order (``{"^module\\\\." = "", "^_fc\\\\." = "classifier."}``), or
``"order"``, which pairs the file's tensors with the model's in order and requires the same count
and every shape equal (ports of one network written with other names, such as
EfficientNet-PyTorch's files for timm's ``tf_efficientnet_*``).

``[backbone] train`` is ``"all"``, ``"none"`` (frozen: no gradients, BatchNorm statistics fixed,
the forward pass without autograd) or ``"last:N"`` (the last N blocks train, the rest is frozen;
blocks as timm groups them for layer-wise learning rates, or a ResNet's stages).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clustkit.errors import RecipeError
from clustkit.nn.configs import FILE_SUFFIXES

_CONTAINERS = ("state_dict", "model", "model_state", "module", "net")


def read_state(path: Path, recipe_file: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from the usual containers (``{"state_dict": ...}``)."""
    if not path.is_file():
        raise RecipeError(recipe_file, "backbone.weights", f"the weights file {path} does not exist. Allowed values: "
                          "\"none\", \"hub\" (download; needs network) or a file ending in "
                          f"{', '.join(FILE_SUFFIXES)}.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file or a pickle that is not plain tensors
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise RecipeError(recipe_file, "backbone.weights", f"cannot read the weights file {path}: "
                          f"{type(exc).__name__}{': ' + first if first else ''}.") from None
    for name in _CONTAINERS:
        if isinstance(state, dict) and isinstance(state.get(name), dict):
            state = state[name]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RecipeError(recipe_file, "backbone.weights", f"the weights file {path} does not hold a state dict "
                          "(a mapping of names to tensors).")
    return dict(state)


def _counter(key: str, value: torch.Tensor) -> bool:
    """BatchNorm's ``num_batches_tracked`` (an integer scalar, under any name): not a weight."""
    return key.endswith("num_batches_tracked") or (value.dim() == 0 and not value.is_floating_point())


def map_keys(state: dict[str, torch.Tensor], key_map: dict[str, str] | str | None,
             target: dict[str, torch.Tensor], file: Path, recipe_file: str | None = None,
             optional: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """``state`` with its keys renamed by ``key_map`` (regex table, or ``"order"``)."""
    if not key_map:
        return state
    if key_map == "order":
        src = [(k, v) for k, v in state.items() if not _counter(k, v)]
        dst = [(k, v) for k, v in target.items() if not _counter(k, v)]
        if len(src) != len(dst) and optional:  # a file without the classifier
            dst = [(k, v) for k, v in dst if not k.startswith(optional)]
        if len(src) != len(dst):
            raise RecipeError(recipe_file, "backbone.key_map", f"key_map = \"order\" pairs tensors by position, but "
                              f"{file} holds {len(src)} and the model {len(dst)} (not counting BatchNorm's "
                              "num_batches_tracked); map the names with a table of regular expressions instead.")
        for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst)):
            if sv.shape != dv.shape:
                raise RecipeError(recipe_file, "backbone.key_map", f"key_map = \"order\": tensor {i} of {file} ({sk}, "
                                  f"shape {tuple(sv.shape)}) does not fit the model's {dk} (shape {tuple(dv.shape)}).")
        return {dk: sv for (_, sv), (dk, _) in zip(src, dst)}
    assert isinstance(key_map, dict)
    out = {}
    for k, v in state.items():
        for pattern, repl in key_map.items():
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def load_state(model: nn.Module, state: dict[str, torch.Tensor], file: Path, recipe_file: str | None = None,
               optional: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model`` exactly: every key present, none unexpected, every shape equal.

    ``optional``: key prefixes of the model a file may leave out (the ImageNet classifier, which
    the backbone drops after loading)."""
    own = model.state_dict()
    missing = [k for k, v in own.items() if k not in state and not _counter(k, v)
               and not (optional and k.startswith(optional))]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
                parts.append(f"{len(keys)} key(s) {what}: {shown}")
        raise RecipeError(recipe_file, "backbone.weights", f"the weights file {file} does not fit the model: "
                          + "; ".join(parts) + ". Rename the file's keys with backbone.key_map (a table of regular "
                          "expressions, or \"order\" for a port of the same network).")
    model.load_state_dict(state, strict=False)


# --- what trains ------------------------------------------------------------------------------


def blocks(net: nn.Module) -> list[list[str]]:
    """The backbone's parameter names in blocks, input to output: timm's own grouping (the one its
    layer-wise learning-rate decay uses) when the model has one, else one block per child module."""
    matcher = getattr(net, "group_matcher", None)
    if callable(matcher):
        from timm.models import group_parameters

        groups = group_parameters(net, matcher(coarse=True), reverse=False)
        return [list(ps) for _, ps in sorted(groups.items())]
    out: dict[str, list[str]] = {}
    for n, _ in net.named_parameters():
        out.setdefault(n.split(".")[0], []).append(n)
    return list(out.values())


class Frozen:
    """Applies ``train = "none" | "last:N"`` to a backbone and keeps it applied across ``.train()``."""

    def __init__(self, net: nn.Module, last: int | None):
        self.last = last
        groups = blocks(net)
        trainable = set() if not last else {n for g in groups[-last:] for n in g}
        self.frozen_modules: list[nn.Module] = []
        for name, p in net.named_parameters():
            p.requires_grad_(name in trainable)
        for _, module in net.named_modules():
            own = list(module.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                self.frozen_modules.append(module)

    @property
    def all_frozen(self) -> bool:
        return not self.last

    def keep_eval(self) -> None:
        """Frozen modules stay in eval mode (BatchNorm statistics fixed, dropout off)."""
        for m in self.frozen_modules:
            m.eval()


def load_file(net: nn.Module, weights: str, key_map: dict[str, str] | str | None, classifier: str,
              recipe_file: str | None = None) -> None:
    """Load a weights file into ``net`` as built, its classifier (``classifier``, a key prefix)
    still in place and optional; the caller drops the classifier afterwards."""
    path = Path(weights).expanduser()
    optional = (classifier + ".",) if classifier else ()
    state = read_state(path, recipe_file)
    state = map_keys(state, key_map, net.state_dict(), path, recipe_file, optional)
    load_state(net, state, path, recipe_file, optional)
