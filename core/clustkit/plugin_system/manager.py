"""Plugin discovery: entry points of the group ``clustkit``, loaded lazily and each in isolation.

Built-in plugins (``clustkit.builtin`` and the method plugins shipped in this repository)
are registered through the very same entry points a third-party package uses. A run builds its
own manager (:func:`run_hooks`) for the lifecycle notifications: the loaded plugins and the
components its recipe selected.

Environment variables (datasette/llm/tox conventions):

* ``CLUSTKIT_LOAD_PLUGINS=a,b`` loads only these entry points (empty string: none);
* ``CLUSTKIT_DISABLE_PLUGINS=a,b`` blocks these, entry points and loose files alike;
* ``CLUSTKIT_STRICT_PLUGINS=1`` re-raises a plugin's import error instead of warning;
* ``CLUSTKIT_TRACE_PLUGINS=1`` prints every hook call to stderr;
* ``CLUSTKIT_PLUGINS_DIR=dir`` also loads every ``*.py`` file in ``dir`` as a plugin named
  after the file (local plugins without packaging, as datasette's ``--plugins-dir``); the file
  is imported as the top-level module of that name, so ``"myloose:CosAlign"`` factories work;
  its ``__version__``, when it has one, is the plugin's version.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from clustkit.errors import PluginError
from clustkit.plugin_system import hookspecs
from clustkit.plugin_system.registry import Registry

GROUP = "clustkit"


class PluginLoadWarning(UserWarning):
    """A plugin failed to import; the others keep working."""


@dataclass
class PluginInfo:
    name: str
    module: str
    version: str | None
    distribution: str | None
    hooks: list[str] = field(default_factory=list)


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if os.environ.get("CLUSTKIT_TRACE_PLUGINS"):
        pm.add_hookcall_monitoring(_trace_call, lambda *after: None)  # pluggy asks for an "after" too
    return pm


def _trace_call(hook_name: str, impls: Any, kwargs: Any) -> None:
    print(f"[clustkit hook] {hook_name} -> {[i.plugin_name for i in impls]}", file=sys.stderr)


class PluginSet:
    """The loaded plugins and the registry they filled."""

    def __init__(self) -> None:
        self.pm = new_manager()
        self.registry = Registry()
        self.info: dict[str, PluginInfo] = {}
        self.failed: dict[str, str] = {}

    def register(self, plugin: Any, name: str, version: str | None = None, distribution: str | None = None) -> None:
        """Register a plugin object (module or instance) and collect its components."""
        self.pm.register(plugin, name=name)
        try:
            _check_hooks(self.pm, plugin, name)
        except PluginError:
            self.pm.unregister(plugin)
            raise
        module = getattr(plugin, "__name__", type(plugin).__module__)
        self.info[name] = PluginInfo(name, module, version, distribution)
        self.registry.current_plugin = name
        try:
            for impl in self.pm.hook.register_components.get_hookimpls():
                if impl.plugin is plugin:
                    impl.function(registry=self.registry)
        finally:
            self.registry.current_plugin = "?"
        self.info[name].hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.info.pop(name, None)
        self.registry.remove_plugin(name)

    def load_entry_points(self) -> None:
        allow = _env_list("CLUSTKIT_LOAD_PLUGINS")
        block = set(_env_list("CLUSTKIT_DISABLE_PLUGINS") or [])
        strict = bool(os.environ.get("CLUSTKIT_STRICT_PLUGINS"))
        for ep in sorted(entry_points(group=GROUP), key=lambda e: (e.name != "builtin", e.name)):
            if ep.name in self.info or ep.name in block or (allow is not None and ep.name not in allow):
                continue
            dist = getattr(ep, "dist", None)
            version = dist.version if dist is not None else None
            dist_name = dist.metadata["Name"] if dist is not None else None
            try:
                plugin = ep.load()
                self.register(plugin, ep.name, version or getattr(plugin, "__version__", None), dist_name)
            except Exception as exc:  # isolation: one broken plugin must not brick the tool
                if strict:
                    raise
                self.failed[ep.name] = f"{type(exc).__name__}: {exc}"
                warnings.warn(
                    f"clustkit plugin {ep.name!r} ({dist_name or ep.value}) failed to load and is skipped: "
                    f"{type(exc).__name__}: {exc}",
                    PluginLoadWarning,
                    stacklevel=2,
                )
        plugin_dir = os.environ.get("CLUSTKIT_PLUGINS_DIR")
        if plugin_dir:
            self.load_directory(plugin_dir, strict, block)

    def load_directory(self, directory: str, strict: bool = False,
                       block: set[str] | frozenset[str] = frozenset()) -> None:
        """Load every ``*.py`` file of ``directory`` as a plugin named after the file, but those named in
        ``block`` (``CLUSTKIT_DISABLE_PLUGINS``). Naming the folder asks for its files, so the entry
        points' allow-list (``CLUSTKIT_LOAD_PLUGINS``) does not apply to them."""
        from pathlib import Path

        for path in sorted(Path(directory).glob("*.py")):
            name = path.stem
            if name in self.info or name in block:
                continue
            try:
                module = _import_file(path)
                self.register(module, name, getattr(module, "__version__", None), str(path))
            except Exception as exc:
                if strict:
                    raise
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"clustkit plugin file {path} failed to load and is skipped: {type(exc).__name__}: {exc}",
                              PluginLoadWarning, stacklevel=2)


def _import_file(path: Any) -> Any:
    """Import a loose plugin file as the top-level module named after it (``sys.modules[stem]``), so
    that ``"stem:attr"`` factory strings, pickling and ``import stem`` find it like any module. A file
    is executed once per process; a stem that names another module is an error, never a shadowing."""
    import importlib.util
    from pathlib import Path

    path = Path(path).resolve()
    name = path.stem
    if "." in name:
        raise ImportError(f"{path} would be imported as the module {name!r}, a submodule name; rename the plugin "
                          f"file without dots, e.g. {name.replace('.', '_')}.py.")
    existing = sys.modules.get(name)
    if existing is not None:
        origin = getattr(existing, "__file__", None)
        if origin is not None and Path(origin).resolve() == path:
            return existing
        raise ImportError(f"{path} would be imported as the module {name!r}, but a module of that name is already "
                          f"imported ({origin or 'built in'}); rename the plugin file.")
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is not None and found.origin is not None and Path(found.origin).resolve() != path:
        raise ImportError(f"{path} would be imported as the module {name!r}, which is already the name of "
                          f"{found.origin}; rename the plugin file.")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


_DEFAULT: PluginSet | None = None


def get_plugins(reload: bool = False) -> PluginSet:
    """The process-wide plugin set, loaded on first use (lazy and idempotent)."""
    global _DEFAULT
    if _DEFAULT is None or reload:
        plugins = PluginSet()
        plugins.load_entry_points()
        _DEFAULT = plugins
    return _DEFAULT


def _check_hooks(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """A plugin implementing a hook clustkit does not have fails to load, with what to write instead
    when the hook is one of 0.1's step hooks (now component methods)."""
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.has_spec():
            continue
        instead = hookspecs.REMOVED.get(caller.name)
        if instead is not None:
            raise PluginError(f"plugin {name!r} implements the hook {caller.name!r}, which clustkit 0.2 no longer has: "
                              f"the engine now calls {instead} directly, by recipe key. Move the function into the "
                              "component class its factory builds (docs/api.md, 'Components').")
        raise PluginError(f"plugin {name!r} implements {caller.name!r}, which is not a clustkit hook; the hooks are "
                          f"{', '.join(['register_components', *hookspecs.LIFECYCLE])} (docs/hooks.md).")


def _noop() -> None:
    """The target of :data:`_DEFAULT_OPTS`."""


#: pluggy's options of an ``@hookimpl`` without arguments, for component methods written without it.
_DEFAULT_OPTS = getattr(hookspecs.hookimpl(_noop), f"{hookspecs.PROJECT}_impl")


class RunHooks(pluggy.PluginManager):
    """A run's plugin manager: the lifecycle notifications only.

    Every other method of a component (``compute_loss``, ``evaluate``, ...) is called by the engine
    directly, so it is never a hook here, even when clustkit 0.1 code marked it ``@hookimpl``. A
    component's lifecycle method counts with or without the marker: a component is a plain object.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        if os.environ.get("CLUSTKIT_TRACE_PLUGINS"):
            self.add_hookcall_monitoring(_trace_call, lambda *after: None)

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if name not in hookspecs.LIFECYCLE:
            return None
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and not inspect.ismodule(plugin) and inspect.isroutine(getattr(type(plugin), name, None)):
            return dict(_DEFAULT_OPTS)
        return opts


def run_hooks(plugins: PluginSet, components: dict[str, Any]) -> RunHooks:
    """The run's plugin manager: every loaded plugin (so plugins observe runs) and the run's
    components. pluggy calls the last registered first, so the components go in last, in reverse
    recipe order: each notification reaches the components in recipe order, then the plugins."""
    pm = RunHooks()
    for name, plugin in plugins.pm.list_name_plugin():
        if plugin is not None:
            pm.register(plugin, name=f"plugin:{name}")
    for key in reversed(list(components)):
        pm.register(components[key], name=key)
    return pm
