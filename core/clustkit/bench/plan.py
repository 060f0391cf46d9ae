"""Bench files and ``--grid`` axes: what ``clustkit bench`` runs, before anything is run.

A bench is a list of base recipes, a list of axes (each a list of labelled choices, every
choice a list of ``--set`` overrides), and a list of seeds. Its cells are
``recipes × axis₁ × axis₂ × …``; every cell runs once per seed. See docs/bench.md.

Pydantic and the standard library only: no torch.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clustkit.bench.errors import BenchFileError
from clustkit.bench.executor_settings import ExecutorName, RaySettings, SlurmSettings
from clustkit.errors import UserError
from clustkit.recipe import parse_override, read_toml, resolve_recipe, toml_value
from clustkit.recipe.errors import validation_error

DEFAULT_SEEDS = [0, 1, 2]
_SAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


# --- the file format ----------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PublishedFigure(_Strict):
    """A published result the recipe's cells are printed beside (fractions, as clustkit reports them)."""

    source: str = Field(..., min_length=1, description="who published it: paper, table, protocol in brief")
    acc: float | None = Field(None, ge=0, le=1)
    nmi: float | None = Field(None, ge=0, le=1)
    ari: float | None = Field(None, ge=-1, le=1)


class RecipeEntry(_Strict):
    """A base recipe with an optional label (the cell-id prefix) and overrides of its own."""

    path: str = Field(..., description="recipe file, relative to the bench file, or a shipped recipe's name (cc)")
    label: str | None = Field(None, min_length=1, description="cell-id prefix; default: the file's stem")
    set: list[str] = Field(default_factory=list, description="--set overrides for this recipe's cells")
    published: PublishedFigure | None = Field(
        None, description="the paper's figure for this recipe, printed beside the measured one")


class AxisEntry(_Strict):
    """One axis: either ``key`` + ``values`` (one recipe key), or ``choices`` (labelled override lists)."""

    name: str | None = Field(None, min_length=1, description="axis label in cell ids and tables; default: key")
    key: str | None = Field(None, min_length=1, description="recipe key the values are set at (any --set key)")
    values: list[Any] | None = Field(None, min_length=1, description="TOML values of key, one choice each")
    labels: list[str] | None = Field(None, description="one label per value (default: the value itself)")
    choices: dict[str, list[str]] | None = Field(
        None, description="label -> list of --set overrides; [] is the unchanged recipe")

    @model_validator(mode="after")
    def _one_form(self) -> AxisEntry:
        if self.choices is not None:
            if self.key is not None or self.values is not None or self.labels is not None:
                raise ValueError("give either choices, or key and values, not both")
            if not self.choices:
                raise ValueError("choices is empty")
            if self.name is None:
                raise ValueError("an axis with choices needs a name")
        else:
            if self.key is None or self.values is None:
                raise ValueError("an axis needs key and values (or choices)")
            if self.labels is not None and len(self.labels) != len(self.values):
                raise ValueError(f"labels has {len(self.labels)} entries but values has {len(self.values)}")
        return self


class BenchSection(_Strict):
    name: str | None = Field(None, description="bench name (default: the file's stem)")
    description: str | None = None
    recipes: list[str | RecipeEntry] = Field(..., min_length=1, description="base recipes, relative to this file, "
                                             "or shipped recipes by name (cc, cifar10/sacc)")
    seeds: list[int] = Field(default_factory=lambda: list(DEFAULT_SEEDS), min_length=1)
    set: list[str] = Field(default_factory=list, description="--set overrides applied to every cell")
    grid: dict[str, Any] = Field(default_factory=dict, description="'recipe.key' = [values]: one axis per key")
    axes: list[AxisEntry] = Field(default_factory=list, description="[[bench.axes]] tables, after the grid axes")
    executor: ExecutorName | None = Field(None, description="where the runs execute (default local); --executor "
                                          "replaces it")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings, description="[bench.slurm]: sbatch parameters "
                                 "of executor slurm")
    ray: RaySettings = Field(default_factory=RaySettings, description="[bench.ray]: cluster and resources of "
                             "executor ray")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v


class BenchFile(_Strict):
    bench: BenchSection


# --- the resolved bench ----------------------------------------------------------------------


@dataclass
class Axis:
    name: str
    options: list[tuple[str, list[str]]]  # (label, overrides)
    key: str | None = None


@dataclass
class BaseRecipe:
    path: Path
    label: str
    overrides: list[str] = field(default_factory=list)
    published: dict[str, Any] | None = None  # PublishedFigure as a dict: source, acc, nmi, ari


@dataclass
class Cell:
    id: str
    recipe: BaseRecipe
    axes: dict[str, str]  # axis name -> choice label
    overrides: list[str]  # everything except the seed, in the order applied

    def run_overrides(self, seed: int) -> list[str]:
        return [*self.overrides, f"run.seed={seed}"]


@dataclass
class Plan:
    name: str
    source: str
    recipes: list[BaseRecipe]
    axes: list[Axis]
    seeds: list[int]
    common: list[str]  # bench.set
    description: str | None = None
    cli: list[str] = field(default_factory=list)  # --set: after the recipe entries' own overrides
    executor: str | None = None  # local, slurm or ray; None: not chosen (local)
    executor_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # executor -> settings as given

    def cells(self) -> list[Cell]:
        out: list[Cell] = []
        seen: dict[str, str] = {}
        for base in self.recipes:
            for combo in itertools.product(*[a.options for a in self.axes]):
                labels = {a.name: lab for a, (lab, _) in zip(self.axes, combo)}
                overrides = [*self.common, *base.overrides, *self.cli]
                for _, ovs in combo:
                    overrides.extend(ovs)
                parts = [base.label] + [f"{_safe(a.name)}={_safe(lab)}" for a, (lab, _) in zip(self.axes, combo)]
                cid = "__".join(parts)
                if cid in seen:
                    raise BenchFileError(self.source, None, f"two cells get the same id {cid!r} ({seen[cid]} and "
                                         f"{labels}); give the axes distinct names or labels.")
                seen[cid] = str(labels)
                out.append(Cell(cid, base, labels, overrides))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "description": self.description, "seeds": self.seeds,
                "common": self.common, "cli": self.cli, "executor": self.executor,
                "executor_options": self.executor_options,
                "recipes": [{"path": str(r.path), "label": r.label, "set": r.overrides, "published": r.published}
                            for r in self.recipes],
                "axes": [{"name": a.name, "key": a.key, "options": [[lab, ovs] for lab, ovs in a.options]}
                         for a in self.axes]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        return cls(name=d["name"], source=d["source"], description=d.get("description"), seeds=list(d["seeds"]),
                   common=list(d["common"]), cli=list(d.get("cli", [])), executor=d.get("executor"),
                   executor_options=dict(d.get("executor_options") or {}),
                   recipes=[BaseRecipe(Path(r["path"]), r["label"], list(r["set"]), r.get("published"))
                            for r in d["recipes"]],
                   axes=[Axis(a["name"], [(lab, list(ovs)) for lab, ovs in a["options"]], a.get("key"))
                         for a in d["axes"]])


# --- helpers -------------------------------------------------------------------------------------


def _safe(text: str) -> str:
    """A label as a file-name-safe token (letters, digits, ``._+=-``)."""
    return _SAFE.sub("-", text).strip("-") or "x"


def value_label(value: Any, index: int) -> str:
    """How a value of a key axis appears in cell ids: the value itself for scalars, else ``v<i>``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return toml_value(value)
    if isinstance(value, str) and value and len(value) <= 40:
        return value
    return f"v{index}"


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,...`` at top-level commas (not inside quotes, [] or {})."""
    items: list[str] = []
    depth, quote, start, i = 0, "", 0, 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
        i += 1
    items.append(text[start:])
    return [s.strip() for s in items]


def parse_grid_option(text: str) -> Axis:
    """``--grid key=v1,v2``: values parsed as TOML like ``--set`` (bare words are strings)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise BenchFileError("--grid", key or text, f"expects KEY.PATH=VALUE1,VALUE2,..., got {text!r}.")
    items = split_values(raw)
    if not items or any(not s for s in items):
        raise BenchFileError("--grid", key, f"has an empty value in {raw!r}; separate values with commas.")
    options = []
    for i, item in enumerate(items):
        _, value = parse_override(f"{key}={item}", "--grid")
        options.append((value_label(value, i), [f"{key}={item}"]))
    _check_axis_key("--grid", key, key)
    return Axis(key, options, key)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in split_values(text) if s]
    except ValueError:
        raise BenchFileError("--seeds", None, f"expects comma-separated integers, got {text!r}.") from None
    if not seeds:
        raise BenchFileError("--seeds", None, "is empty.")
    if len(set(seeds)) != len(seeds):
        raise BenchFileError("--seeds", None, f"repeats a seed: {text!r}.")
    return seeds


def _check_axis_key(file: str, where: str, key: str) -> None:
    if key == "run.seed":
        raise BenchFileError(file, where, "an axis cannot set run.seed: list the seeds in bench.seeds or --seeds.")


def _check_override(file: str, where: str, text: str) -> str:
    parts, _ = parse_override(text, file)
    if ".".join(parts) == "run.seed":
        raise BenchFileError(file, where, "cannot set run.seed: list the seeds in bench.seeds or --seeds.")
    return text


def _bench_error(file: str, exc: ValidationError, raw: dict[str, Any]) -> BenchFileError:
    err = exc.errors()[0]
    loc = list(err["loc"])
    if loc[:2] == ["bench", "recipes"] and len(loc) > 2 and isinstance(loc[2], int):
        entry = raw["bench"]["recipes"][loc[2]]
        if isinstance(entry, dict):  # a table: its own first problem, not the union's "must be a path"
            try:
                RecipeEntry.model_validate(entry)
            except ValidationError as inner:
                return validation_error(file, inner, RecipeEntry, f"bench.recipes[{loc[2]}]", error=BenchFileError)
        if err["type"] == "string_type":
            return BenchFileError(file, f"bench.recipes[{loc[2]}]",
                                  "must be a recipe path or a table {path = ..., label = ..., set = [...]}.")
    return validation_error(file, exc, BenchFile, error=BenchFileError)


# --- building a plan ---------------------------------------------------------------------------------


def is_bench_file(raw: dict[str, Any]) -> bool:
    return "bench" in raw


def _grid_axes(file: str, grid: dict[str, Any], prefix: str = "") -> list[Axis]:
    axes: list[Axis] = []
    for k, v in grid.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            axes.extend(_grid_axes(file, v, key + "."))
            continue
        if not isinstance(v, list) or not v:
            raise BenchFileError(file, f"bench.grid.{key}", f"must be a non-empty list of values, got {v!r}.")
        _check_axis_key(file, f"bench.grid.{key}", key)
        axes.append(Axis(key, [(value_label(x, i), [f"{key}={toml_value(x)}"]) for i, x in enumerate(v)], key))
    return axes


def _recipe_label(path: Path) -> str:
    return _safe(path.stem)


def load_bench_file(path: Path, raw: dict[str, Any]) -> Plan:
    file = str(path)
    for key in raw:
        if key != "bench":
            raise BenchFileError(file, key, "unknown section: a bench file holds one [bench] table.", ["bench"])
    try:
        model = BenchFile.model_validate(raw)
    except ValidationError as exc:
        raise _bench_error(file, exc, raw) from None
    b = model.bench
    base_dir = path.parent
    recipes: list[BaseRecipe] = []
    for i, entry in enumerate(b.recipes):
        e = RecipeEntry(path=entry) if isinstance(entry, str) else entry
        try:  # a file relative to the bench file, else a shipped recipe's name (cc, cifar10/sacc)
            p = resolve_recipe(e.path, base_dir)
        except UserError as exc:
            raise BenchFileError(file, f"bench.recipes[{i}]", str(exc)) from None
        for j, text in enumerate(e.set):
            _check_override(file, f"bench.recipes[{i}].set[{j}]", text)
        published = e.published.model_dump(exclude_none=True) if e.published else None
        recipes.append(BaseRecipe(p, _safe(e.label) if e.label else _recipe_label(p), list(e.set), published))
    _dedupe_labels(file, recipes)
    for j, text in enumerate(b.set):
        _check_override(file, f"bench.set[{j}]", text)
    axes = _grid_axes(file, b.grid)
    for i, a in enumerate(b.axes):
        where = f"bench.axes[{i}]"
        if a.choices is not None:
            assert a.name is not None
            opts = []
            for lab, ovs in a.choices.items():
                for j, text in enumerate(ovs):
                    _check_override(file, f"{where}.choices.{lab}[{j}]", text)
                opts.append((lab, list(ovs)))
            axes.append(Axis(a.name, opts))
        else:
            assert a.key is not None and a.values is not None
            _check_axis_key(file, f"{where}.key", a.key)
            labels = a.labels or [value_label(v, k) for k, v in enumerate(a.values)]
            axes.append(Axis(a.name or a.key, [(lab, [f"{a.key}={toml_value(v)}"]) for lab, v in zip(labels, a.values)],
                             a.key))
    _dedupe_axes(file, axes)
    options = {k: m.model_dump(exclude_unset=True) for k, m in (("slurm", b.slurm), ("ray", b.ray))}
    options = {k: v for k, v in options.items() if v}  # the keys the file sets; --executor-option go on top
    return Plan(name=b.name or path.stem, source=file, recipes=recipes, axes=axes, seeds=list(b.seeds),
                common=list(b.set), description=b.description, executor=b.executor, executor_options=options)


def _dedupe_labels(file: str, recipes: list[BaseRecipe]) -> None:
    seen: set[str] = set()
    for r in recipes:
        if r.label in seen:
            # recipes/cc.toml and recipes/mnist/cc.toml: prefix the parent folder's name
            r.label = _safe(f"{r.path.parent.name}-{r.label}")
        if r.label in seen:
            raise BenchFileError(file, "bench.recipes", f"two recipes get the label {r.label!r}; give them labels.")
        seen.add(r.label)


def _dedupe_axes(file: str, axes: list[Axis]) -> None:
    names = [a.name for a in axes]
    for n in names:
        if names.count(n) > 1:
            raise BenchFileError(file, n, "two axes have this name; give one a distinct name.")
    for a in axes:
        labels = [lab for lab, _ in a.options]
        for lab in labels:
            if labels.count(lab) > 1:
                raise BenchFileError(file, a.name, f"two choices have the label {lab!r}; give them labels.")


def build_plan(source: Path, grid: list[str], seeds: str | None, overrides: list[str]) -> Plan:
    """The plan for ``clustkit bench SOURCE [--grid ...] [--seeds ...] [--set ...]``."""
    raw = read_toml(source)
    for j, text in enumerate(overrides):
        _check_override("--set", f"--set[{j}]", text)
    if is_bench_file(raw):
        plan = load_bench_file(source, raw)
    else:
        plan = Plan(name=source.stem, source=str(source), recipes=[BaseRecipe(source, _recipe_label(source))],
                    axes=[], seeds=list(DEFAULT_SEEDS), common=[])
    plan.axes.extend(parse_grid_option(g) for g in grid)
    _dedupe_axes("--grid", plan.axes)
    plan.cli.extend(overrides)
    if seeds is not None:
        plan.seeds = parse_seeds(seeds)
    return plan


def select(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """Cells whose id matches any of the glob patterns (all cells without patterns)."""
    if not patterns:
        return cells
    chosen = [c for c in cells if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]
    if not chosen:
        raise BenchFileError("--only", None, f"no cell matches {', '.join(patterns)}.", [c.id for c in cells])
    return chosen


def read_plan(path: Path) -> Plan:
    return Plan.from_json(json.loads(path.read_text()))


