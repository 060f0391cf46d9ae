"""The runs of a bench (cell × seed) and the state of each one's folder: cached, to resume, to run,
or failed (an invalid recipe, or a folder holding a different run)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clustkit.bench.plan import Cell, Plan
from clustkit.bench.resources import RESOURCES
from clustkit.engine.run_folder import CHECKPOINT, RECIPE, SUMMARY
from clustkit.errors import RecipeError, UserError


@dataclass
class RunTask:
    cell: Cell
    seed: int
    dir: Path
    status: str = "pending"  # pending -> todo/resume -> done/resumed/failed; or cached
    error: str | None = None
    selected: bool = True
    command: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None

    @property
    def resume(self) -> bool:
        return self.status == "resume"

    def adopt(self, ran: RunTask) -> None:
        """Take the outcome of this run made elsewhere (a Slurm job or Ray task returns its own copy)."""
        self.status, self.error, self.summary, self.resources = ran.status, ran.error, ran.summary, ran.resources

    def record(self, out: Path) -> dict[str, Any]:
        return {"seed": self.seed, "status": self.status, "dir": str(self.dir.relative_to(out)), "error": self.error,
                "command": shlex.join(self.command) if self.command else None,
                "summary": self.summary, "resources": self.resources}


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _unexpanded(data: Any, prefix: str = "") -> tuple[str, str] | None:
    """The first string value still holding ``$VAR`` after expansion (an unset environment variable)."""
    if isinstance(data, dict):
        for k, v in data.items():
            hit = _unexpanded(v, f"{prefix}{k}.")
            if hit:
                return hit
    elif isinstance(data, list):
        for i, v in enumerate(data):
            hit = _unexpanded(v, f"{prefix[:-1]}[{i}].")
            if hit:
                return hit
    elif isinstance(data, str):
        m = re.search(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", data)
        if m:
            return prefix[:-1], m.group(1)
    return None


def _resolved(cell: Cell, seed: int, plugins: Any) -> dict[str, Any]:
    """The fully resolved recipe of one run, as written to its recipe.toml (raises UserError)."""
    from clustkit.recipe import dumps, load

    loaded = load(cell.recipe.path, plugins.registry, cell.run_overrides(seed), installed_plugins=list(plugins.info))
    data = tomllib.loads(dumps(loaded))
    hit = _unexpanded(data)
    if hit:
        raise RecipeError(str(cell.recipe.path), hit[0], f"uses ${hit[1]}, which is not set in the environment "
                          f"(export {hit[1]}=... before the bench).")
    return data


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return prefix[:-1] or "(root)"


def plan_tasks(plan: Plan, cells: list[Cell], selected: set[str], out: Path) -> list[RunTask]:
    """One task per (cell, seed) with its state: cached, resume, todo, failed (invalid) or pending (not selected)."""
    from clustkit.plugin_system.manager import get_plugins

    plugins = get_plugins()
    tasks: list[RunTask] = []
    for cell in cells:
        for seed in plan.seeds:
            t = RunTask(cell, seed, out / cell.id / f"seed{seed}", selected=cell.id in selected)
            tasks.append(t)
            done = (t.dir / SUMMARY).exists()
            if not t.selected:
                t.status = "cached" if done else "pending"
                continue
            try:
                want = _resolved(cell, seed, plugins)
            except UserError as exc:
                t.status, t.error = "failed", str(exc)
                continue
            if done:
                try:
                    have = tomllib.loads((t.dir / RECIPE).read_text())
                except (OSError, tomllib.TOMLDecodeError):
                    have = None
                if have is not None and have != want:
                    t.status = "failed"
                    t.error = (f"{t.dir} holds a finished run of a different recipe (first difference at "
                               f"'{_first_difference(have, want)}'); delete that folder or use another --out.")
                else:
                    t.status = "cached"
            else:
                t.status = "resume" if (t.dir / CHECKPOINT).exists() else "todo"
    for t in tasks:
        if t.status in ("cached",):
            t.summary = read_json(t.dir / SUMMARY)
            t.resources = read_json(t.dir / RESOURCES)
    return tasks
