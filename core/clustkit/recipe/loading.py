"""Reading a recipe: TOML, ``--set`` overrides, ``$VAR`` expansion, then validation in two phases.

Phase 1 checks the core sections and that every component section names a registered component.
Phase 2 validates each component section with the config model its plugin registered, then the
references between sections (heads named by losses, evaluators and refiners; loss keys named by
``run.unlabeled_losses``). Every error names the file, the key path and the allowed values.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from clustkit.errors import RecipeError
from clustkit.plugin_system.registry import Registry, declared_view_names, head_references, unknown_view, view_fields
from clustkit.recipe.errors import validation_error
from clustkit.recipe.schema import (
    COMPONENT_SECTIONS,
    CORE_SECTIONS,
    DEFAULT_GROUPING,
    TOP_LEVEL,
    FeaturesSection,
    MomentumSection,
    Recipe,
    RunSection,
)

# --- loading ------------------------------------------------------------------------------


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(str(path), None, "file not found.")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), None, f"not valid TOML: {exc}.") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), None, f"not a text file (TOML must be UTF-8): {exc.reason} at byte "
                          f"{exc.start}.") from None


def parse_override(text: str, file: str | None = None) -> tuple[list[str], Any]:
    """``a.b.c=value``: the value is read as a TOML value (number, bool, string, list), else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(file, key or text, f"--set expects KEY.PATH=VALUE, got {text!r}.")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str], file: str | None = None) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text, file)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(file, ".".join(parts[: i + 1]),
                                  "is a value, not a table, so --set cannot go inside it.")
            node = child
        node[parts[-1]] = value
    return data


_DEFAULTED_VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _expand(value: Any) -> Any:
    """Expand ``$VAR`` / ``${VAR}``, ``${VAR:-default}`` (default when VAR is unset or empty) and
    ``~`` in string values (data roots, paths)."""
    if isinstance(value, str) and ("$" in value or value.startswith("~")):
        value = _DEFAULTED_VAR.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), value)
        return os.path.expanduser(os.path.expandvars(value))
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _validate_model(file: str, prefix: str, model: type[BaseModel], data: Any) -> BaseModel:
    if not isinstance(data, dict):
        raise RecipeError(file, prefix, f"must be a table, got {type(data).__name__} {data!r}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(file, exc, model, prefix) from None


def _component(file: str, key: str, kind: str, data: Any, registry: Registry) -> BaseModel:
    if not isinstance(data, dict):
        raise RecipeError(file, key, f"must be a table with a 'name', got {data!r}.")
    name = data.get("name")
    allowed = registry.names(kind)
    if name is None:
        raise RecipeError(file, f"{key}.name", f"is required: which {kind} to use.", allowed)
    if not isinstance(name, str) or registry.get(kind, name) is None:
        raise RecipeError(file, f"{key}.name", f"unknown {kind} {name!r}.", allowed)
    spec = registry.get(kind, name)
    assert spec is not None
    return _validate_model(file, key, spec.config_model(), data)


def validate(raw: dict[str, Any], registry: Registry, file: str = "<recipe>") -> Recipe:
    """Validate a raw recipe dict against the core schema and the registered components."""
    for key in raw:
        if key not in TOP_LEVEL:
            raise RecipeError(file, key, "unknown section.", TOP_LEVEL)
    raw = _expand(raw)
    core = {name: _validate_model(file, name, model, raw.get(name, {})) for name, model in CORE_SECTIONS.items()
            if name not in ("momentum", "features")}
    momentum = _validate_model(file, "momentum", MomentumSection, raw["momentum"]) if "momentum" in raw else None
    features = _validate_model(file, "features", FeaturesSection, raw["features"]) if "features" in raw else None
    comps: dict[str, Any] = {}
    for key, kind, table, required in COMPONENT_SECTIONS:
        data = raw.get(key)
        if key == "grouping" and data is None:
            data = DEFAULT_GROUPING
        if data is None:
            if required:
                raise RecipeError(file, key, f"section is required: choose a {kind}.", registry.names(kind))
            comps[key] = {} if table else None
            continue
        if table:
            if not isinstance(data, dict) or any(not isinstance(v, dict) for v in data.values()):
                raise RecipeError(file, key,
                                  f"must be a table of named {kind} tables, e.g. [{key}.<id>] with name = ...")
            comps[key] = {k: _component(file, f"{key}.{k}", kind, v, registry) for k, v in data.items()}
        else:
            comps[key] = _component(file, key, kind, data, registry)
    run: RunSection = core["run"]  # type: ignore[assignment]
    recipe = Recipe(path=file, run=run, optimizer=core["optimizer"], schedule=core["schedule"],  # type: ignore[arg-type]
                    momentum=momentum, features=features, **comps)
    _check_references(recipe, file)
    return recipe


def _check_references(recipe: Recipe, file: str) -> None:
    """Cross-section checks the per-component models cannot see: every :data:`HeadRef` field names
    a head of the recipe, and the loss keys of ``run.unlabeled_losses`` exist."""
    heads = sorted(recipe.heads)
    for key, _, cfg in recipe.components:
        for attr, allow_backbone in head_references(type(cfg)):
            ref = getattr(cfg, attr)
            if isinstance(ref, str) and ref not in recipe.heads and not (allow_backbone and ref == "backbone"):
                allowed = ["backbone", *heads] if allow_backbone else heads
                raise RecipeError(file, f"{key}.{attr}", f"names head {ref!r}, which the recipe does not define.",
                                  allowed)
    _check_view_pairs(recipe, file)
    if recipe.momentum is not None:
        for ref in recipe.momentum.heads:
            if ref not in recipe.heads:
                raise RecipeError(file, "momentum.heads", f"names head {ref!r}, which the recipe does not define.",
                                  heads)
    if recipe.unlabeled is not None and not recipe.run.unlabeled_losses:
        raise RecipeError(file, "run.unlabeled_losses", "is required with an [unlabeled] section: which loss terms "
                          "train on the unlabelled images (CC's STL-10 protocol: the instance loss).",
                          sorted(recipe.losses))
    if recipe.run.unlabeled_losses and recipe.unlabeled is None:
        raise RecipeError(file, "run.unlabeled_losses", "is set but the recipe has no [unlabeled] section (the dataset "
                          "of the unlabelled pass).")
    for i, ref in enumerate(recipe.run.unlabeled_losses):
        if ref not in recipe.losses:
            raise RecipeError(file, f"run.unlabeled_losses[{i}]", f"names loss {ref!r}, which the recipe does not "
                              "define.", sorted(recipe.losses))
    _check_features(recipe, file)
    for prefix in recipe.optimizer.lr_mult:
        if not prefix:
            raise RecipeError(file, "optimizer.lr_mult", "has an empty parameter prefix.")


def _check_features(recipe: Recipe, file: str) -> None:
    """[features] caches a frozen backbone's output: the backbone must be frozen, and augmented
    positives need cached augmentations."""
    f = recipe.features
    if f is None:
        return
    train = getattr(recipe.backbone, "train", "none")  # a backbone without the option is frozen by the engine
    if train != "none":
        raise RecipeError(file, "backbone.train", f"is {train!r}, but [features] trains on cached features of a "
                          "frozen backbone: set backbone.train = \"none\", or remove [features] to fine-tune the "
                          "backbone on images.", ["none"])
    if f.positives == "augment" and f.augmentations < 1:
        raise RecipeError(file, "features.augmentations", "is 0, but features.positives = \"augment\" draws each "
                          "view from the cached augmentations: cache at least one round, or use positives = "
                          "\"neighbours\".")
    if f.trunk and not f.trunk_dim:
        raise RecipeError(file, "features.trunk_dim", "is unset, but features.trunk has hidden layers: the trunk "
                          "needs an output size.")
    if recipe.unlabeled is not None:
        raise RecipeError(file, "features", "cannot be combined with an [unlabeled] section yet: the cache holds "
                          "[data] only.")


def _pairs(value: Any, key: str) -> list[tuple[str, Any]]:
    """(key path, pair) of every view pair in a :data:`Pair` field's value (a pair, a list of them, None)."""
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, str) for v in value):
        return [(key, value)]
    if isinstance(value, (tuple, list)):
        return [found for i, v in enumerate(value) for found in _pairs(v, f"{key}[{i}]")]
    return []


def _names(value: Any, key: str) -> list[tuple[str, Any]]:
    """(key path, [name]) of every view name in a :data:`View` field's value (a name, a list or tuple of
    them, None): each element of a list named by its index."""
    if isinstance(value, str):
        return [(key, [value])]
    if isinstance(value, (tuple, list)):
        return [found for i, v in enumerate(value) for found in _names(v, f"{key}[{i}]")]
    return []


def _check_view_pairs(recipe: Recipe, file: str) -> None:
    """Every :data:`Pair` and :data:`View` field of every component names views the ``[views]`` config declares
    (``declared_view_names``); without a declaration only the build-time check applies."""
    names = declared_view_names(recipe.views)
    if names is None:
        return
    for key, _, cfg in recipe.components:
        for attr, pairs in view_fields(type(cfg)):
            found = _pairs if pairs else _names
            for where, pair in found(getattr(cfg, attr), f"{key}.{attr}"):
                for view in pair:
                    if view not in names:
                        raise RecipeError(file, where, unknown_view(view, recipe.views.name), list(names))


def load(path: str | Path, registry: Registry, overrides: list[str] | None = None,
         installed_plugins: list[str] | None = None) -> Recipe:
    """Read, override, and validate a recipe file."""
    file = str(path)
    raw = apply_overrides(read_toml(path), overrides or [], file)
    recipe = validate(raw, registry, file)
    if installed_plugins is not None:
        for i, need in enumerate(recipe.run.plugins):
            if need not in installed_plugins:
                raise RecipeError(file, f"run.plugins[{i}]", f"needs plugin {need!r}, which is not installed "
                                  "or disabled.", sorted(installed_plugins))
    return recipe


def dumps(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(recipe.to_dict())
