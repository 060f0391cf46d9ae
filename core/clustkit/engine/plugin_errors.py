"""An exception raised in a plugin's code, as one paragraph naming the plugin, the component, its
recipe key and the plugin's file and line (``PluginError``, exit code 4).

The engine calls components directly, so a traceback always passes through the component that
failed: the frame whose ``self`` is a built component gives the recipe key, and the innermost
frame in that component's code or in a plugin's own files gives the file and line. A traceback
that reaches no plugin code is clustkit's own bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clustkit.errors import PluginError

if TYPE_CHECKING:
    from clustkit.engine.components import RunComponents
    from clustkit.plugin_system.manager import PluginSet


def plugin_roots(plugins: PluginSet) -> dict[str, Path]:
    """Each loaded plugin's own files: its package folder, or its module file."""
    roots: dict[str, Path] = {}
    for name, info in plugins.info.items():
        module = sys.modules.get(info.module)
        file = getattr(module, "__file__", None)
        if file:
            path = Path(file).resolve()
            roots[name] = path.parent if path.name == "__init__.py" else path
    return roots


def _owner(file: str, roots: dict[str, Path]) -> str | None:
    path = Path(file).resolve()
    return next((name for name, root in roots.items() if path == root or root in path.parents), None)


def _shown(file: str) -> str:
    """A file as a user reads it: relative to the working folder when it is inside it."""
    try:
        return os.path.relpath(file)
    except ValueError:  # another drive (Windows)
        return file


def plugin_failure(exc: BaseException, plugins: PluginSet, components: RunComponents | None,
                   during: str = "") -> PluginError | None:
    """The one-paragraph error of ``exc`` when its traceback passes through plugin code, else None."""
    roots = plugin_roots(plugins)
    key: str | None = None
    found: tuple[str, int, str, str | None, str | None] | None = None
    tb = exc.__traceback__
    while tb is not None:  # outermost frame first
        frame, line = tb.tb_frame, tb.tb_lineno
        file = frame.f_code.co_filename
        owner = _owner(file, roots)
        own = components.key_of(frame.f_locals.get("self")) if components is not None else None
        key = own or key
        if own is not None or owner is not None:
            found = (file, line, frame.f_code.co_name, key, owner)
        tb = tb.tb_next
    if found is None:
        return None
    file, line, function, key, owner = found
    if key is not None and components is not None:
        spec = components.specs[key]
        what = f"the {spec.kind} {spec.name!r} of [{key}]"
        plugin = spec.plugin
    else:
        what, plugin = "a lifecycle hook", owner or "?"
    message = " ".join(str(exc).split()) or "(no message)"
    if len(message) > 400:
        message = message[:400] + " …"
    text = (f"plugin {plugin!r} failed: {what} raised {type(exc).__name__}: {message} at {_shown(file)}:{line} "
            f"(in {function}){during}.")
    return PluginError(text, detail=traceback_text(exc))


def traceback_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def describe_factory_failure(exc: BaseException, spec: Any, key: str, plugins: PluginSet) -> PluginError:
    """A factory that raised: the component, its key, and the innermost frame in the plugin's own
    files or in clustkit's (the built-in factories live in its library), else the innermost one."""
    roots = plugin_roots(plugins)
    core = Path(__file__).resolve().parents[1]
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if _owner(f.filename, roots) is not None or core in Path(f.filename).resolve().parents]
    last = mine[-1] if mine else (frames[-1] if frames else None)
    at = f" at {_shown(last.filename)}:{last.lineno} (in {last.name})" if last is not None else ""
    message = " ".join(str(exc).split()) or "(no message)"
    return PluginError(f"plugin {spec.plugin!r} failed: the factory of the {spec.kind} {spec.name!r} for [{key}] "
                       f"raised {type(exc).__name__}: {message[:400]}{at}.", detail=traceback_text(exc))
