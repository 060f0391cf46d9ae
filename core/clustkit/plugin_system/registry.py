"""The component registry: what each plugin provides, by kind and name, and the config bases.

Plugins fill it through the ``register_components`` hook. Factories and config models may be
given as ``"module:attr"`` strings, so that listing components never imports torch. One
component class may be registered under several names with different defaults
(:func:`with_defaults`): CC, SACC, DCHL and IcicleGCN all register the one instance contrast.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_core import PydanticUndefined

from clustkit.errors import PluginError

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
@dataclass(frozen=True)
class _ViewPair:
    """Metadata marking a config field whose value names two training views of the recipe."""


#: Two view names, e.g. ``("weak1", "strong")``. The recipe loader checks every field of this type
#: (also inside ``list[...]`` and ``X | None``) against the names the ``[views]`` config declares.
Pair = Annotated[tuple[str, str], _ViewPair()]


@dataclass(frozen=True)
class _ViewName:
    """Metadata marking a config field whose value names one training view of the recipe."""


#: One view name, e.g. ``"weak1"``; checked like :data:`Pair` (also ``list[View]``, ``View | None``).
View = Annotated[str, _ViewName()]


class ComponentConfig(BaseModel):
    """Base of every component's config: unknown keys are errors (typos never pass silently)."""

    model_config = ConfigDict(extra="forbid")

    name: str


class LossConfig(ComponentConfig):
    """Base of loss configs: the engine multiplies the loss by ``weight``; 0 removes it at no cost."""

    weight: float = 1.0


class EvaluatorConfig(ComponentConfig):
    """Base of evaluator configs: the neighbour vote any evaluation can end with.

    With ``vote_k`` > 0, the evaluator's clustering is followed by ``vote_rounds`` rounds in
    which every item takes the majority cluster of its ``vote_k`` nearest items (cosine) in
    ``vote_features`` (default: the space the evaluation read). It reads no labels; an
    evaluator applies it with ``RunContext.vote``."""

    vote_k: int = Field(0, ge=0, description="after the clustering, every item takes the majority cluster of its "
                                             "vote_k nearest items, vote_rounds times (0: off); moves border items "
                                             "to their neighbours' cluster")
    vote_rounds: int = Field(3, ge=1, description="rounds of the vote_k neighbour vote")
    vote_features: HeadOrBackbone | None = Field(
        None, description="the space whose neighbours vote: 'backbone' or a head (default: the evaluation's own)")


def _marker(annotation: Any, metadata: list[Any], kind: type[Any] | tuple[type[Any], ...]) -> Any:
    """The first ``kind`` metadata of a field, looking inside ``Annotated``, unions and containers."""
    for m in metadata:
        if isinstance(m, kind):
            return m
    if typing.get_origin(annotation) is Annotated:
        return _marker(None, list(annotation.__metadata__), kind)
    for arg in typing.get_args(annotation):
        found = _marker(arg, [], kind)
        if found is not None:
            return found
    return None


def head_references(model: type[BaseModel]) -> list[tuple[str, bool]]:
    """(field name, backbone allowed) of every :data:`HeadRef` field of ``model`` (also inside
    ``X | None`` and ``list[X]``)."""
    refs = []
    for name, info in model.model_fields.items():
        found = _marker(info.annotation, list(info.metadata), _HeadReference)
        if found is not None:
            refs.append((name, found.allow_backbone))
    return refs


def view_fields(model: type[BaseModel]) -> list[tuple[str, bool]]:
    """(name, holds pairs) of the fields of ``model`` holding view names: :data:`Pair` (True) or
    :data:`View` (False) values, also inside ``list[...]``, ``tuple[...]`` and ``X | None``."""
    out = []
    for name, info in model.model_fields.items():
        found = _marker(info.annotation, list(info.metadata), (_ViewPair, _ViewName))
        if found is not None:
            out.append((name, isinstance(found, _ViewPair)))
    return out


def declared_view_names(config: BaseModel) -> tuple[str, ...] | None:
    """The training views a ``[views]`` config says its generator will make, or ``None``.

    The protocol (docs/api.md, "Views declare their names"): a view generator's config class may
    define ``view_names(self) -> Sequence[str]``, equal to the built generator's ``view_names``.
    It lets ``clustkit check`` test view pairs without building the data or the network."""
    method = getattr(config, "view_names", None)
    if not callable(method):
        return None
    return tuple(str(n) for n in method())


def unknown_view(view: str, generator: str) -> str:
    """The one wording of a view name the view generator does not make (recipe load and build time)."""
    return f"names view {view!r}, which the view generator ({generator!r}) does not produce."


@dataclass(frozen=True)
class ConfigField:
    """One recipe key of a component's config, as ``clustkit plugins --show`` lists it."""

    key: str  # dotted below nested models, e.g. "affine.degrees"
    type: str  # as a recipe writer reads it: "float, > 0", "head name", "list[[view, view]]"
    default: Any  # the default value; None with required=True
    required: bool
    description: str


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "min length"),
           ("max_length", "max length"), ("pattern", "pattern"))


def _type_text(annotation: Any) -> str:
    """A field type as a recipe writer reads it (the markers :data:`HeadRef` and :data:`Pair` by meaning)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        for m in annotation.__metadata__:
            if isinstance(m, _HeadReference):
                return "head name | 'backbone'" if m.allow_backbone else "head name"
            if isinstance(m, _ViewPair):
                return "[view, view]"
            if isinstance(m, _ViewName):
                return "view name"
        return _type_text(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if annotation is type(None):
        return "None"
    if annotation is Ellipsis:
        return "..."
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_text(a) for a in args)}]"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def config_fields(model: type[BaseModel], prefix: str = "") -> list[ConfigField]:
    """The recipe keys of a config model (``name`` left out), with type, bounds, default and
    description; the fields of a nested model (SACC's ``affine``) as dotted keys."""
    out = []
    for name, info in model.model_fields.items():
        if name == "name" and not prefix:
            continue
        key = f"{prefix}{name}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(config_fields(ann, f"{key}."))
            continue
        markers = [m for m in info.metadata if isinstance(m, (_HeadReference, _ViewPair, _ViewName))]
        text = _type_text(Annotated[ann, markers[0]] if markers else ann)
        bounds = [f"{sign} {getattr(m, attr)}" for m in info.metadata for attr, sign in _BOUNDS
                  if getattr(m, attr, None) is not None]
        if bounds:
            text += ", " + ", ".join(bounds)
        required = info.is_required()
        try:
            default = None if required else info.get_default(call_default_factory=True)
        except TypeError:  # a factory that needs the other fields' values
            default = "(computed)"
        out.append(ConfigField(key, text, default, required, info.description or ""))
    return out


def qualified_name(obj: Any) -> str:
    """``"module:attr"`` of a factory or config given as an object; a string as it is."""
    if isinstance(obj, str):
        return obj
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"


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
    where: str = "?"  # file:line of the registry.add call that registered it
    _config_cls: type[BaseModel] | None = field(default=None, repr=False)

    def config_model(self) -> type[BaseModel]:
        if self._config_cls is None:
            cls = resolve(self.config)
            if self.kind == "loss" and not issubclass(cls, LossConfig):
                raise TypeError(f"loss {self.name!r} (plugin {self.plugin!r}): its config {cls.__name__} must "
                                "subclass LossConfig (every loss has a weight)")
            self._config_cls = cls
        return self._config_cls

    def describe(self) -> str:
        """``loss 'x' (plugin 'p', registered at file:line)``: how errors name the component."""
        return f"{self.kind} {self.name!r} (plugin {self.plugin!r}, registered at {self.shown_where()})"

    def shown_where(self) -> str:
        """:attr:`where` relative to the working folder when it lies inside it."""
        try:
            relative = os.path.relpath(self.where)
        except ValueError:  # another drive
            return self.where
        return self.where if relative.startswith("..") else relative

    def factory_callable(self) -> Callable[..., Any]:
        """The factory, imported when given as ``"module:attr"``; one that does not import is a
        :class:`~clustkit.errors.PluginError` naming the component and where it was registered."""
        try:
            factory = resolve(self.factory)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"the factory {qualified_name(self.factory)!r} of {self.describe()} cannot be imported: "
                              f"{type(exc).__name__}: {exc}. Fix the import string given to registry.add, or the "
                              "module it names.") from None
        if not callable(factory):
            raise PluginError(f"the factory {qualified_name(self.factory)!r} of {self.describe()} is "
                              f"{type(factory).__name__}, not a callable factory(config, ctx).")
        return factory

    def factory_problem(self) -> str | None:
        """Why the factory's module cannot be found, without importing it (``clustkit plugins --show``
        stays light; ``clustkit check`` imports the factory itself), or None."""
        if not isinstance(self.factory, str):
            return None
        module = self.factory.partition(":")[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError) as exc:
            return f"the factory {self.factory!r} cannot be found: {type(exc).__name__}: {exc}"
        return None if found is not None else f"the factory {self.factory!r} names no module {module!r}"

    def build(self, config: BaseModel, ctx: Any) -> Any:
        return self.factory_callable()(config, ctx)


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
        caller = sys._getframe(1)
        where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
        self._specs[kind][name] = ComponentSpec(kind, name, factory, config, self.current_plugin, doc, where)

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
