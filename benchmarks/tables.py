"""Rebuild the tables of benchmarks/RESULTS.md and README.md from the committed bench reports.

A figure in the docs is copied from the run that produced it, never typed: each table lives
between ``<!-- tables.py: NAME -->`` and ``<!-- /tables.py -->`` and is written from

- ``benchmarks/tables.toml``: which committed report (``benchmarks/results/*.md``, as
  ``clustkit bench`` wrote it) and which cell hold the current figure of each shipped recipe,
  and the published anchors of each dataset;
- the reports themselves: their overview row (mean ± std over seeds), their per-seed rows and
  their header (command, date, machine);
- ``benchmarks/papers.toml`` and the paper-setting recipes' headers (``# Protocol:``,
  ``# Paper:``, ``# clustkit:``) for the papers' table.

    python benchmarks/tables.py            # rewrite the tables in place
    python benchmarks/tables.py --check    # exit 1 and name the tables that differ

tests/test_results_tables.py runs the check, so the committed docs always equal what the
committed reports say.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCS = {"RESULTS": HERE / "RESULTS.md", "README": ROOT / "README.md", "pretrained": ROOT / "docs" / "pretrained.md"}
BLOCK = re.compile(r"(<!-- tables.py: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /tables.py -->)", re.S)
METHODS = {"cc": "CC", "sacc": "SACC", "dchl": "DCHL", "iciclegcn": "IcicleGCN", "digpro": "DigPro", "temi": "TEMI",
           "kmeans": "k-means (no training)", "cc_finetune": "CC, last block fine-tuned"}


# --- reading a bench report ------------------------------------------------------------------


@dataclass
class Report:
    """What tables.py reads of a ``clustkit bench`` results.md."""

    path: Path
    command: str
    written: str  # "2026-12-07 20:44:20"
    machine: str  # "2 CPU cores; jobs 1, torch threads per run default"
    cells: dict[str, dict[str, str]]  # cell id -> overview columns
    runs: dict[str, list[dict[str, str]]]  # cell id -> per-seed rows
    recipes: dict[str, str] = field(default_factory=dict)  # cell id -> recipe path

    @property
    def date(self) -> str:
        return self.written.split()[0]

    @property
    def link(self) -> str:
        """The report's path from benchmarks/ (where RESULTS.md is)."""
        return self.path.relative_to(HERE).as_posix()

    def link_from(self, doc: Path) -> str:
        """The report's path from the folder of ``doc``."""
        return Path(os.path.relpath(self.path, doc.parent)).as_posix()


def _table(lines: list[str], start: int) -> list[dict[str, str]]:
    """The markdown table whose header is lines[start], as dicts keyed by its header."""
    head = [h.strip() for h in lines[start].strip().strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append(dict(zip(head, cols)))
    return rows


def read_report(path: Path) -> Report:
    lines = path.read_text().splitlines()
    command = written = machine = ""
    tables: list[list[dict[str, str]]] = []
    recipes: dict[str, str] = {}
    for i, line in enumerate(lines):
        if line.startswith("- command: "):
            command = line[len("- command: "):].strip("`")
        elif line.startswith("- written "):
            m = re.match(r"- written (\S+ \S+) on \S+, (\d+ CPU cores); devices: [^;]*; (.*)$", line)
            if not m:
                raise ValueError(f"{path}: unreadable line {line!r}")
            written, machine = m.group(1), f"{m.group(2)}; {m.group(3)}"
        elif line.startswith("| cell |"):
            tables.append(_table(lines, i))
        elif line.startswith("- `") and "`: `" in line:
            m = re.match(r"- `([^`]+)`: `([^`]+)`", line)
            if m:
                recipes[m.group(1)] = m.group(2)
    if len(tables) < 2 or not command or not written:
        raise ValueError(f"{path}: not a clustkit bench report (needs the command, the overview and ## Runs)")
    cells = {r["cell"].strip("`"): r for r in tables[0]}
    runs: dict[str, list[dict[str, str]]] = {}
    for r in tables[1]:
        runs.setdefault(r["cell"].strip("`"), []).append(r)
    return Report(path, command, written, machine, cells, runs, recipes)


# --- the spec ---------------------------------------------------------------------------------


@dataclass
class Row:
    recipe: str
    report: Report | None
    cell: str | None
    note: str = ""

    @property
    def dataset(self) -> str:
        parts = Path(self.recipe).parts
        return parts[1] if len(parts) == 3 and parts[1] != "mix" else "digits"

    @property
    def method(self) -> str:
        stem = Path(self.recipe).stem.removesuffix("_cpu")
        return METHODS.get(stem, "SACC views + DCHL losses" if stem == "sacc_views_dchl_losses" else stem)


def load_spec(path: Path = HERE / "tables.toml") -> tuple[dict, list[Row]]:
    spec = tomllib.loads(path.read_text())
    reports: dict[str, Report] = {}
    rows = []
    for entry in spec["row"]:
        report = None
        if "report" in entry:
            name = entry["report"]
            report = reports.get(name) or reports.setdefault(name, read_report(HERE / name))
            if entry["cell"] not in report.cells:
                raise ValueError(f"{path}: cell {entry['cell']!r} is not in {name}")
            if report.cells[entry["cell"]]["runs ok"].startswith("0/"):
                raise ValueError(f"{path}: cell {entry['cell']!r} of {name} has no finished run")
            shown = report.recipes.get(entry["cell"], "")
            if Path(shown).name != Path(entry["recipe"]).name:
                raise ValueError(f"{path}: cell {entry['cell']!r} of {name} ran {shown}, not {entry['recipe']}")
        rows.append(Row(entry["recipe"], report, entry.get("cell"), entry.get("note", "")))
    return spec, rows


@functools.cache
def paper_recipes() -> list[dict[str, str]]:
    """Each paper-setting recipe's header lines, with its entry in benchmarks/papers.toml."""
    bench = tomllib.loads((HERE / "papers.toml").read_text())["bench"]
    out = []
    for entry in bench["recipes"]:
        path = (HERE / entry["path"]).resolve()
        head = _header(path)
        out.append({"recipe": path.relative_to(ROOT).as_posix(), "published": entry["published"], **head})
    return out


def _header(path: Path) -> dict[str, str]:
    """The ``# Protocol:``, ``# Paper:`` and ``# clustkit:`` lines (continued by ``#   ``) of a recipe."""
    found: dict[str, str] = {}
    key = None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        m = re.match(r"# (Protocol|Paper|clustkit): (.*)$", line)
        if m:
            key = m.group(1).lower()
            found[key] = m.group(2)
        elif key and line.startswith("#   "):
            found[key] += " " + line[4:]
        else:
            key = None
    missing = {"protocol", "paper", "clustkit"} - set(found)
    if missing:
        raise ValueError(f"{path}: the header lacks {', '.join(sorted(missing))} (docs/results.md says what they hold)")
    return found


# --- the tables -------------------------------------------------------------------------------


def _acc(row: Row, key: str = "ACC") -> str:
    return row.report.cells[row.cell].get(key, "–") if row.report and row.cell else "–"


def _seeds(row: Row) -> str:
    runs = row.report.runs.get(row.cell or "", []) if row.report else []
    return ", ".join(r["seed"] for r in runs) or "–"


def _wall(row: Row) -> str:
    runs = row.report.runs.get(row.cell or "", []) if row.report else []
    walls = [float(r["wall s"]) for r in runs if r.get("wall s", "–") != "–"]
    if not walls:
        return "–"
    lo, hi = min(walls), max(walls)
    return f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f}"


def _published(method: str, dataset: str) -> dict | None:
    for p in paper_recipes():
        if p["recipe"] == f"recipes/{dataset}/{method.lower()}.toml":
            return p["published"]
    return None


def recipes_table(spec: dict, rows: list[Row], dataset: str, doc: Path = HERE / "RESULTS.md") -> str:
    """One dataset's shipped recipes: their current figure, where it comes from, the anchors."""
    info = spec["dataset"][dataset]
    mine = [r for r in rows if r.dataset == dataset]
    paper_col = bool(info.get("paper_column"))
    head = "| recipe | method | ACC | NMI | ARI | seeds | wall s a run | date | report |"
    rule = "|---|---|---:|---:|---:|---|---:|---|---|"
    if paper_col:
        head += " paper's ACC (its protocol) |"
        rule += "---:|"
    lines = [head, rule]
    for r in mine:
        link = f"[{Path(r.report.link).stem}]({r.report.link_from(doc)}) `{r.cell}`" if r.report else r.note
        if r.report and r.note:
            link += f" ({r.note})"
        cols = [f"`{r.recipe.removeprefix('recipes/')}`", r.method, f"**{_acc(r)}**", _acc(r, "NMI"),
                _acc(r, "ARI"), _seeds(r), _wall(r), r.report.date if r.report else "–", link]
        if paper_col:
            pub = _published(r.method, dataset.removesuffix("_cpu"))
            cols.append(f"{pub['acc']:.3f}" if pub and pub.get("acc") is not None else "–")
        lines.append("| " + " | ".join(cols) + " |")
    for a in info.get("anchors", []):
        figs = [f"{a[k]:.3f}" if k in a else "–" for k in ("acc", "nmi", "ari")]
        cols = [f"*{a['name']}* (published)", "–", *figs, "–", "–", "–", a["source"]]
        if paper_col:
            cols.append("–")
        lines.append("| " + " | ".join(cols) + " |")
    reports = {r.report.path: r.report for r in mine if r.report}
    if not reports:
        return "\n".join(lines) + "\n"
    lines += ["", "How each report ran (commands from the repository root, data under `$CLUSTKIT_SHARED_DATA`):", ""]
    for rep in reports.values():
        lines.append(f"- [{Path(rep.link).stem}]({rep.link_from(doc)}): `{rep.command}` — {rep.written}, {rep.machine}")
    return "\n".join(lines) + "\n"


def headline_table(spec: dict, rows: list[Row]) -> str:
    """One line per dataset: its best shipped recipe by mean ACC, and the dataset's anchor."""
    lines = ["| dataset | best recipe | ACC | NMI | seeds | the method's paper on this dataset (GPU protocol) | "
             "published anchors |",
             "|---|---|---:|---:|---|---:|---|"]
    for dataset, info in spec["dataset"].items():
        mine = [r for r in rows if r.dataset == dataset and r.report]
        if not mine or not info.get("headline", True):
            continue
        best = max(mine, key=lambda r: float(_acc(r).split()[0]))
        pub = _published(best.method, dataset)
        paper = f"{pub['acc']:.3f}" if pub and pub.get("acc") is not None else "the paper has no figure"
        anchor = "; ".join(f"{a['name']} {a['acc']:.3f}" for a in info.get("anchors", []) if "acc" in a) or "–"
        lines.append(f"| {info['title']} | `{best.recipe.removeprefix('recipes/')}` | **{_acc(best)}** | "
                     f"{_acc(best, 'NMI')} | {_seeds(best)} | {paper} | {anchor} |")
    lines += ["", "Mean ± std over the seeds shown, on 2 CPU cores; every recipe, its command and its report: "
              "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)."]
    return "\n".join(lines) + "\n"


def papers_table() -> str:
    lines = ["| recipe | protocol | paper: ACC / NMI / ARI | published by | clustkit |", "|---|---|---|---|---|"]
    for p in paper_recipes():
        pub = p["published"]
        figs = " / ".join(f"{pub[k]:.3f}" if k in pub else "n/a" for k in ("acc", "nmi", "ari"))
        status = p["clustkit"].split(" (")[0].rstrip(".")
        lines.append(f"| `{p['recipe'].removeprefix('recipes/')}` | {p['protocol'].rstrip('.')} | {figs} | "
                     f"{pub['source']} | **{status}** |")
    return "\n".join(lines) + "\n"


def ablation_table(spec: dict) -> str:
    lines = ["| method | cell | ACC | NMI | ARI | report |", "|---|---|---:|---:|---:|---|"]
    for name in spec["ablations"]["reports"]:
        rep = read_report(HERE / name)
        for cid, c in rep.cells.items():
            method, _, cell = cid.partition("__")
            lines.append(f"| {METHODS.get(method, method)} | {cell.removeprefix('ablate=')} | {c['ACC']} | "
                         f"{c['NMI']} | {c['ARI']} | [{Path(rep.link).stem}]({rep.link}) ({rep.date}) |")
    return "\n".join(lines) + "\n"


def render(name: str, spec: dict, rows: list[Row], doc: Path = HERE / "RESULTS.md") -> str:
    """Table ``name`` as written into ``doc`` (its links relative to the doc's folder)."""
    if name.startswith("recipes-"):
        return recipes_table(spec, rows, name.removeprefix("recipes-"), doc)
    if name == "headline":  # README's
        return headline_table(spec, rows)
    if name == "papers":
        return papers_table()
    if name == "ablations":
        return ablation_table(spec)
    raise ValueError(f"unknown table {name!r} (recipes-<dataset>, headline, papers, ablations)")


def rebuild(text: str, spec: dict, rows: list[Row], doc: Path = HERE / "RESULTS.md") -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name"), spec, rows, doc) + m.group(4), text)


def stale() -> list[str]:
    """The tables whose committed text differs from what the reports say."""
    spec, rows = load_spec()
    out = []
    for doc, path in DOCS.items():
        text = path.read_text()
        for m in BLOCK.finditer(text):
            if m.group("body") != render(m.group("name"), spec, rows, path):
                out.append(f"{doc}: {m.group('name')}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    args = ap.parse_args(argv)
    if args.check:
        diff = stale()
        for d in diff:
            print(f"stale table: {d} (run python benchmarks/tables.py)")
        return 1 if diff else 0
    spec, rows = load_spec()
    for path in DOCS.values():
        text = path.read_text()
        new = rebuild(text, spec, rows, path)
        if new != text:
            path.write_text(new)
            print(f"rewrote the tables of {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
