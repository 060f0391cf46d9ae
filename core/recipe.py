"""TOML recipes, validated by pydantic v2 in two phases.

Phase 1 checks the core sections (``run``, ``optimizer``, ``schedule``, ``momentum``) and that
every component section names a registered component. Phase 2 validates each component
section with the config model its plugin registered. Every error names the file, the key
path and the allowed values.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clustkit.errors import RecipeError
from clustkit.registry import Registry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Strict):
    """How to train: seeds, epochs, batch, device, evaluation and checkpoint cadence."""

    name: str | None = None
    seed: int = 0
    epochs: int = Field(100, ge=0)
    batch_size: int = Field(256, ge=2)
    eval_batch_size: int = Field(512, ge=1)
    drop_last: bool = True
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    num_workers: int = Field(0, ge=0)
    n_clusters: int | None = Field(None, ge=2)
    eval_every: int = Field(0, ge=0, description="epochs between evaluations; 0 = only at the end")
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    deterministic: bool = False
    plugins: list[str] = Field(default_factory=list, description="plugins the recipe needs")
    unlabeled_losses: list[str] = Field(
        default_factory=list, description="loss keys trained on the [unlabeled] dataset each epoch, in a pass before "
        "the one over [data] (CC's STL-10 protocol); required with [unlabeled]")


class OptimizerSection(_Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    lr_scale_batch: int | None = Field(None, ge=1, description="if set, lr *= batch_size / lr_scale_batch")
    lr_mult: dict[str, float] = Field(default_factory=dict, description="parameter-name prefix -> lr multiplier")


class ScheduleSection(_Strict):
    name: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)


class MomentumSection(_Strict):
    """A momentum (EMA) copy of the backbone and the listed heads, updated after every step."""

    base: float = Field(0.996, ge=0, le=1)
    final: float | None = Field(None, ge=0, le=1, description="cosine increase to this value; None = constant")
    heads: list[str] = Field(default_factory=list, description="heads copied into the momentum network")


# Component sections: (recipe key, registry kind, is a table of named instances, required)
COMPONENT_SECTIONS: tuple[tuple[str, str, bool, bool], ...] = (
    ("data", "dataset", False, True),
    ("unlabeled", "dataset", False, False),
    ("backbone", "backbone", False, True),
    ("heads", "head", True, False),
    ("views", "views", False, True),
    ("losses", "loss", True, False),
    ("grouping", "grouper", False, False),
    ("evaluation", "evaluator", False, True),
    ("refine", "refiner", False, False),
)
CORE_SECTIONS: dict[str, type[BaseModel]] = {
    "run": RunSection,
    "optimizer": OptimizerSection,
    "schedule": ScheduleSection,
    "momentum": MomentumSection,
}
DEFAULT_GROUPING = {"name": "kmeans"}
TOP_LEVEL = ["run", "data", "unlabeled", "backbone", "heads", "views", "losses", "grouping", "evaluation", "refine",
             "optimizer", "schedule", "momentum"]


@dataclass
class Recipe:
    """A validated recipe: core sections as models, components as their plugins' config models."""

    path: str
    run: RunSection
    optimizer: OptimizerSection
    schedule: ScheduleSection
    momentum: MomentumSection | None
    data: BaseModel
    backbone: BaseModel
    views: BaseModel
    evaluation: BaseModel
    grouping: BaseModel
    heads: dict[str, BaseModel] = field(default_factory=dict)
    losses: dict[str, BaseModel] = field(default_factory=dict)
    refine: BaseModel | None = None
    unlabeled: BaseModel | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (every default filled in), as plain TOML-able data."""
        out: dict[str, Any] = {"run": _dump(self.run)}
        for key, _, table, _ in COMPONENT_SECTIONS:
            value = getattr(self, key)
            if value is None:
                continue
            out[key] = {k: _dump(v) for k, v in value.items()} if table else _dump(value)
        out["optimizer"] = _dump(self.optimizer)
        out["schedule"] = _dump(self.schedule)
        if self.momentum is not None:
            out["momentum"] = _dump(self.momentum)
        return out

    def fingerprint(self, ignore: tuple[str, ...] = ("run.epochs", "run.eval_every", "run.checkpoint_every")) -> str:
        flat = {k: v for k, v in flatten(self.to_dict()).items() if k not in ignore}
        return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def components(self) -> list[tuple[str, str, BaseModel]]:
        """(recipe key path, kind, config) of every selected component, in build order."""
        items: list[tuple[str, str, BaseModel]] = []
        for key, kind, table, _ in COMPONENT_SECTIONS:
            value = getattr(self, key)
            if value is None:
                continue
            if table:
                items.extend((f"{key}.{k}", kind, v) for k, v in value.items())
            else:
                items.append((key, kind, value))
        return items


def _dump(model: BaseModel) -> dict[str, Any]:
    return _tomlable(model.model_dump(mode="json", exclude_none=True))


def _tomlable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tomlable(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_tomlable(v) for v in value]
    return value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


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
                raise RecipeError(file, ".".join(parts[: i + 1]), "is a value, not a table, so --set cannot go inside it.")
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


def _validation_error(file: str, prefix: str, exc: ValidationError, model: type[BaseModel]) -> RecipeError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix, *loc]) if prefix else ".".join(loc)
    allowed: list[str] | None = None
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        target: Any = model
        for part in loc[:-1]:
            f = getattr(target, "model_fields", {}).get(part)
            target = f.annotation if f is not None else None
        fields = getattr(target, "model_fields", None)
        msg = "unknown key."
        if fields is not None:
            allowed = sorted(fields)
    elif err["type"] == "missing":
        msg = "is required but missing."
    elif err["type"] in ("literal_error", "enum"):
        expected = str(err.get("ctx", {}).get("expected", ""))
        allowed = [a.strip().strip("'") for a in expected.replace(" or ", ", ").split(",") if a.strip()]
        msg = f"{err.get('input')!r} is not a valid choice."
    else:
        msg = f"{msg} (got {err.get('input')!r})."
    extra = len(exc.errors()) - 1
    if extra:
        msg += f" ({extra} more problem{'s' if extra > 1 else ''} in this section.)"
    return RecipeError(file, key, msg, allowed)


def _validate_model(file: str, prefix: str, model: type[BaseModel], data: Any) -> BaseModel:
    if not isinstance(data, dict):
        raise RecipeError(file, prefix, f"must be a table, got {type(data).__name__} {data!r}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(file, prefix, exc, model) from None


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
            if name != "momentum"}
    momentum = _validate_model(file, "momentum", MomentumSection, raw["momentum"]) if "momentum" in raw else None
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
                raise RecipeError(file, key, f"must be a table of named {kind} tables, e.g. [{key}.<id>] with name = ...")
            comps[key] = {k: _component(file, f"{key}.{k}", kind, v, registry) for k, v in data.items()}
        else:
            comps[key] = _component(file, key, kind, data, registry)
    run: RunSection = core["run"]  # type: ignore[assignment]
    recipe = Recipe(path=file, run=run, optimizer=core["optimizer"], schedule=core["schedule"],  # type: ignore[arg-type]
                    momentum=momentum, **comps)
    _check_references(recipe, file)
    return recipe


def _check_references(recipe: Recipe, file: str) -> None:
    """Cross-section checks the per-component models cannot see (heads named by losses)."""
    heads = sorted(recipe.heads)
    for key, _, cfg in recipe.components:
        for attr in ("head", "instance_head", "cluster_head"):
            ref = getattr(cfg, attr, None)
            if isinstance(ref, str) and ref not in recipe.heads:
                raise RecipeError(file, f"{key}.{attr}", f"names head {ref!r}, which the recipe does not define.", heads)
    if recipe.momentum is not None:
        for ref in recipe.momentum.heads:
            if ref not in recipe.heads:
                raise RecipeError(file, "momentum.heads", f"names head {ref!r}, which the recipe does not define.", heads)
    if recipe.unlabeled is not None and not recipe.run.unlabeled_losses:
        raise RecipeError(file, "run.unlabeled_losses", "is required with an [unlabeled] section: which loss terms "
                          "train on the unlabelled images (CC's STL-10 protocol: the instance loss).", sorted(recipe.losses))
    if recipe.run.unlabeled_losses and recipe.unlabeled is None:
        raise RecipeError(file, "run.unlabeled_losses", "is set but the recipe has no [unlabeled] section (the dataset "
                          "of the unlabelled pass).")
    for i, ref in enumerate(recipe.run.unlabeled_losses):
        if ref not in recipe.losses:
            raise RecipeError(file, f"run.unlabeled_losses[{i}]", f"names loss {ref!r}, which the recipe does not "
                              "define.", sorted(recipe.losses))
    for prefix in recipe.optimizer.lr_mult:
        if not prefix:
            raise RecipeError(file, "optimizer.lr_mult", "has an empty parameter prefix.")
    missing = [p for p in recipe.run.plugins if p]  # checked against installed plugins by load()
    del missing


def load(path: str | Path, registry: Registry, overrides: list[str] | None = None,
         installed_plugins: list[str] | None = None) -> Recipe:
    """Read, override, and validate a recipe file."""
    file = str(path)
    raw = apply_overrides(read_toml(path), overrides or [], file)
    recipe = validate(raw, registry, file)
    if installed_plugins is not None:
        for i, need in enumerate(recipe.run.plugins):
            if need not in installed_plugins:
                raise RecipeError(file, f"run.plugins[{i}]", f"needs plugin {need!r}, which is not installed or disabled.",
                                  sorted(installed_plugins))
    return recipe


def dumps(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(recipe.to_dict())
