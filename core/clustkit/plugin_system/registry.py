"""The component registry: what each plugin provides, by kind and name, and the config bases.

Plugins fill it through the ``register_components`` hook. Factories and config models may be
given as ``"module:attr"`` strings, so that listing components never imports torch. One
component class may be registered under several names with different defaults
(:func:`with_defaults`): CC, SACC, DCHL and IcicleGCN all register the one instance contrast.
"""

from __future__ import annotations

import copy
import importlib
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict, create_model
from pydantic_core import PydanticUndefined

KINDS: tuple[str, ...] = (
    "dataset",
    "backbone",
    "head",
    "views",
    "loss",
    "grouper",
    "evaluator",
    "refiner",
)


@dataclass(frozen=True)
class _HeadReference:
    """Metadata marking a config field whose value names a ``[heads.<id>]`` of the recipe."""

    allow_backbone: bool = False


#: A config field naming a head of the recipe (``head: HeadRef = "instance"``): the recipe loader
#: rejects a name the recipe does not define, whatever the field is called.
HeadRef = Annotated[str, _HeadReference()]
#: Like :data:`HeadRef`, but ``"backbone"`` (the backbone's features) is allowed too.
HeadOrBackbone = Annotated[str, _HeadReference(allow_backbone=True)]
#: Two view names, e.g. ``("weak1", "strong")``.
Pair = tuple[str, str]


class ComponentConfig(BaseModel):
    """Base of every component's config: unknown keys are errors (typos never pass silently)."""

    model_config = ConfigDict(extra="forbid")

    name: str


class LossConfig(ComponentConfig):
    """Base of loss configs: the engine multiplies the loss by ``weight``; 0 removes it at no cost."""

    weight: float = 1.0


def head_references(model: type[BaseModel]) -> list[tuple[str, bool]]:
    """(field name, backbone allowed) of every :data:`HeadRef` field of ``model`` (also inside
    ``X | None`` and ``list[X]``)."""

    def marker(annotation: Any, metadata: list[Any]) -> _HeadReference | None:
        for m in metadata:
            if isinstance(m, _HeadReference):
                return m
        if typing.get_origin(annotation) is Annotated:
            return marker(None, list(annotation.__metadata__))
        for arg in typing.get_args(annotation):
            found = marker(arg, [])
            if found is not None:
                return found
        return None

    refs = []
    for name, info in model.model_fields.items():
        found = marker(info.annotation, list(info.metadata))
        if found is not None:
            refs.append((name, found.allow_backbone))
    return refs


M = TypeVar("M", bound=BaseModel)


def with_defaults(model: type[M], class_name: str | None = None, **defaults: Any) -> type[M]:
    """A subclass of ``model`` whose fields have new defaults; types, bounds and descriptions are
    kept. Lets one component be registered under several names, each with its method's settings."""
    fields: dict[str, Any] = {}
    for key, value in defaults.items():
        info = model.model_fields.get(key)
        if info is None:
            raise TypeError(f"{model.__name__} has no field {key!r}")
        new = copy.copy(info)
        if isinstance(value, (list, dict, set)):
            new.default, new.default_factory = PydanticUndefined, (lambda v=value: copy.deepcopy(v))
        else:
            new.default, new.default_factory = value, None
        fields[key] = (info.annotation, new)
    return create_model(class_name or model.__name__, __base__=model, __module__=model.__module__,
                        __doc__=model.__doc__, **fields)


def resolve(obj: Any) -> Any:
    """Import ``"package.module:attr"`` strings; pass objects through."""
    if isinstance(obj, str):
        module, _, attr = obj.partition(":")
        target: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else []:
            target = getattr(target, part)
        return target
    return obj


@dataclass
class ComponentSpec:
    """One registered component."""

    kind: str
    name: str
    factory: Any  # callable(config, ctx) or "module:attr"
    config: Any = ComponentConfig  # pydantic model class or "module:attr"
    plugin: str = "?"
    doc: str = ""
    _config_cls: type[BaseModel] | None = field(default=None, repr=False)

    def config_model(self) -> type[BaseModel]:
        if self._config_cls is None:
            cls = resolve(self.config)
            if self.kind == "loss" and not issubclass(cls, LossConfig):
                raise TypeError(f"loss {self.name!r} (plugin {self.plugin!r}): its config {cls.__name__} must "
                                "subclass LossConfig (every loss has a weight)")
            self._config_cls = cls
        return self._config_cls

    def build(self, config: BaseModel, ctx: Any) -> Any:
        factory: Callable[..., Any] = resolve(self.factory)
        return factory(config, ctx)


class Registry:
    """Components by kind and name; the core owns naming and collisions, plugins stay tiny."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {k: {} for k in KINDS}
        self.current_plugin = "?"  # set by the plugin manager while a plugin registers

    def add(
        self,
        kind: str,
        name: str,
        factory: Any,
        config: Any = ComponentConfig,
        doc: str = "",
    ) -> None:
        """Register a component; a name taken by another plugin is an error naming both."""
        if kind not in self._specs:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        existing = self._specs[kind].get(name)
        if existing is not None and existing.plugin != self.current_plugin:
            raise ValueError(
                f"{kind} {name!r} from plugin {self.current_plugin!r} collides with plugin {existing.plugin!r}"
            )
        self._specs[kind][name] = ComponentSpec(kind, name, factory, config, self.current_plugin, doc)

    def get(self, kind: str, name: str) -> ComponentSpec | None:
        return self._specs[kind].get(name)

    def names(self, kind: str) -> list[str]:
        return sorted(self._specs[kind])

    def by_plugin(self, plugin: str) -> list[ComponentSpec]:
        return [s for kind in KINDS for s in self._specs[kind].values() if s.plugin == plugin]

    def all(self) -> list[ComponentSpec]:
        return [s for kind in KINDS for s in self._specs[kind].values()]

    def remove_plugin(self, plugin: str) -> None:
        """Forget every component of ``plugin`` (when it is unregistered)."""
        for kind in KINDS:
            self._specs[kind] = {n: s for n, s in self._specs[kind].items() if s.plugin != plugin}
