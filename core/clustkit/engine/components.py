"""A run's components by role, each role method checked once and then called directly.

The engine builds one object per recipe section (``factory(config, ctx)``) and looks up, by the
section's kind, the method it must have (``clustkit.plugin_system.interfaces.ROLES``) and the
optional ones any component may have (``build_heads``, ``update_prototypes``, ``candidates``). A
missing method, or one asking for an argument the engine does not pass, is a ``PluginError``
naming the plugin and the recipe key before anything trains. Calls go by keyword; a method may
leave out the arguments it does not need (as pluggy allowed hook implementations of clustkit 0.1).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clustkit.errors import PluginError
from clustkit.plugin_system.interfaces import OPTIONAL, ROLES
from clustkit.plugin_system.registry import ComponentSpec


@dataclass
class Bound:
    """One component's method, ready to be called with keyword arguments."""

    key: str              # the recipe key, e.g. "losses.instance"
    spec: ComponentSpec
    obj: Any
    method: str
    call: Callable[..., Any]

    def describe(self) -> str:
        """``loss 'x' of [losses.k] (plugin 'p')``: how errors name it."""
        return f"{self.spec.kind} {self.spec.name!r} of [{self.key}] (plugin {self.spec.plugin!r})"

    @property
    def accepts_shards(self) -> bool:
        """A grouper that clusters the ranks' shards together (``accepts_shards = True`` on its class)."""
        return bool(getattr(self.obj, "accepts_shards", False))


@dataclass
class RunComponents:
    """The built components of a recipe, by role, each list in recipe order."""

    by_key: dict[str, Any]                    # recipe key -> object: views, losses, grouping, evaluation, refine
    specs: dict[str, ComponentSpec]
    views: Bound
    grouper: Bound
    evaluator: Bound
    losses: dict[str, Bound] = field(default_factory=dict)   # by the <id> of [losses.<id>]
    refiners: list[Bound] = field(default_factory=list)
    head_builders: list[Bound] = field(default_factory=list)
    updaters: list[Bound] = field(default_factory=list)
    candidate_sources: list[Bound] = field(default_factory=list)

    def key_of(self, obj: Any) -> str | None:
        """The recipe key of a built component (by identity), or None."""
        return next((k for k, o in self.by_key.items() if o is obj), None)


def organise(built: dict[str, tuple[ComponentSpec, Any]]) -> RunComponents:
    """Check and bind the role methods of ``built`` (recipe key -> (spec, object), recipe order)."""
    roles: dict[str, Any] = {"losses": {}, "refiners": []}
    optional: dict[str, list[Bound]] = {name: [] for name in OPTIONAL}
    for key, (spec, obj) in built.items():
        method, offered = ROLES[spec.kind]
        bound = bind(key, spec, obj, method, offered)
        if bound is None:
            raise PluginError(_missing(key, spec, obj, method, offered))
        if spec.kind == "grouper" and bound.accepts_shards and "rows" not in _accepted(bound.obj, method, offered):
            raise PluginError(f"{bound.describe()} declares accepts_shards, but its assign_groups takes no 'rows': "
                              "since clustkit 0.2 a shard's position is passed as rows (None: the whole matrix) "
                              "instead of ctx.grouping_shards; add the parameter and test `rows is not None`.")
        if spec.kind == "loss":
            roles["losses"][key.split(".", 1)[1]] = bound
        elif spec.kind == "refiner":
            roles["refiners"].append(bound)
        else:
            roles[spec.kind] = bound
        for name, params in OPTIONAL.items():
            extra = bind(key, spec, obj, name, params)
            if extra is not None:
                optional[name].append(extra)
    return RunComponents(by_key={k: o for k, (_, o) in built.items()}, specs={k: s for k, (s, _) in built.items()},
                         views=roles["views"], grouper=roles["grouper"], evaluator=roles["evaluator"],
                         losses=roles["losses"], refiners=roles["refiners"], head_builders=optional["build_heads"],
                         updaters=optional["update_prototypes"], candidate_sources=optional["candidates"])


def bind(key: str, spec: ComponentSpec, obj: Any, method: str, offered: tuple[str, ...]) -> Bound | None:
    """``obj.method`` as a :class:`Bound` called with the keywords ``offered`` it accepts, or None
    when ``obj`` has no such method."""
    fn = getattr(obj, method, None)
    if fn is None:
        return None
    where = f"{spec.kind} {spec.name!r} of [{key}] (plugin {spec.plugin!r})"
    if not callable(fn):
        raise PluginError(f"{where}: its attribute {method!r} is {type(fn).__name__}, not a method "
                          f"{method}({', '.join(offered)}).")
    accepted = _accepted(obj, method, offered)
    if accepted is None:
        params = inspect.signature(fn).parameters
        unknown = [n for n, p in params.items() if n not in offered and p.default is p.empty
                   and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        raise PluginError(f"{where}: {method}({', '.join(params)}) asks for {', '.join(map(repr, unknown))}, which "
                          f"the engine does not pass; it calls {method} with the keywords {', '.join(offered)} "
                          "(docs/api.md, 'Components').")
    if accepted == offered:
        return Bound(key, spec, obj, method, fn)
    return Bound(key, spec, obj, method, lambda **kw: fn(**{n: kw[n] for n in accepted}))


def _accepted(obj: Any, method: str, offered: tuple[str, ...]) -> tuple[str, ...] | None:
    """The keywords of ``offered`` that ``obj.method`` takes (all of them with ``**kwargs``), or None
    when it requires one the engine does not offer."""
    try:
        params = inspect.signature(getattr(obj, method)).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass everything
        return offered
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return offered
    for name, p in params.items():
        if name not in offered and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return None
        if p.kind is p.POSITIONAL_ONLY and name in offered:
            return None
    return tuple(n for n in offered if n in params)


def _missing(key: str, spec: ComponentSpec, obj: Any, method: str, offered: tuple[str, ...]) -> str:
    text = (f"{spec.kind} {spec.name!r} of [{key}] (plugin {spec.plugin!r}, registered at {spec.shown_where()}) "
            f"built a {type(obj).__name__}, which has no {method}({', '.join(offered)}) method: the engine calls it "
            f"directly for every {spec.kind} (docs/api.md, 'Components').")
    if spec.kind == "refiner" and hasattr(obj, "after_training"):
        text += (" Since clustkit 0.2 a [refine.<id>] stage is refine(previous, ctx) -> Prediction, called in recipe "
                 "order: move the body of after_training into refine, return the Prediction its evaluate returned "
                 "(or previous, to keep it), and drop the tryfirst evaluate.")
    return text
