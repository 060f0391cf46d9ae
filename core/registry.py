"""The component registry: what each plugin provides, by kind and name.

Plugins fill it through the ``register_components`` hook. Factories and config models may
be given as ``"module:attr"`` strings so that listing components never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

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


class ComponentConfig(BaseModel):
    """Base of every component's config: unknown keys are errors (typos never pass silently)."""

    model_config = ConfigDict(extra="forbid")

    name: str


class LossConfig(ComponentConfig):
    """Base of loss configs: every loss has a weight; weight 0 removes the term at no cost."""

    weight: float = 1.0


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
            self._config_cls = resolve(self.config)
        return self._config_cls

    def build(self, config: BaseModel, ctx: Any) -> Any:
        factory: Callable[..., Any] = resolve(self.factory)
        return factory(config, ctx)


class Registry:
    """Components by kind and name; the core owns naming and collisions, plugins stay tiny."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {k: {} for k in KINDS}
        self._current_plugin = "?"

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
        if existing is not None and existing.plugin != self._current_plugin:
            raise ValueError(
                f"{kind} {name!r} from plugin {self._current_plugin!r} collides with plugin {existing.plugin!r}"
            )
        self._specs[kind][name] = ComponentSpec(kind, name, factory, config, self._current_plugin, doc)

    def get(self, kind: str, name: str) -> ComponentSpec | None:
        return self._specs[kind].get(name)

    def names(self, kind: str) -> list[str]:
        return sorted(self._specs[kind])

    def by_plugin(self, plugin: str) -> list[ComponentSpec]:
        return [s for kind in KINDS for s in self._specs[kind].values() if s.plugin == plugin]

    def all(self) -> list[ComponentSpec]:
        return [s for kind in KINDS for s in self._specs[kind].values()]
