"""Every candidate clustering of finished runs, side by side: mean ± std of each candidate's ACC
over the seeds of each cell, read from the runs' ``summary.json`` (no recomputation).

A run lists all of its candidates (docs/selection.md) whatever ``run.select`` chose, so one set of
runs answers "what would the head's argmax have given?" next to the recipe's output.

    python benchmarks/candidates.py runs/usps-sacc/seed* runs/usps-cc/seed* [--metric acc]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (seed folders of a bench cell)")
    parser.add_argument("--metric", default="acc", choices=["acc", "nmi", "ari", "ami"])
    args = parser.parse_args()
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    chosen: dict[str, set[str]] = defaultdict(set)
    wall: dict[str, list[float]] = defaultdict(list)
    for folder in args.runs:
        summary = json.loads((folder / "summary.json").read_text())
        cell = str(folder.parent) if folder.name.startswith("seed") else str(folder)
        for name, row in summary.get("candidates", {}).items():
            if args.metric in row:
                cells[cell][name].append(row[args.metric])
        chosen[cell].add(summary["selection"]["chosen"])
        wall[cell].append(summary.get("wall_s", float("nan")))
    print(f"| cell | runs | wall s | output | candidate | {args.metric} mean ± std |")
    print("|---|---|---|---|---|---|")
    for cell, rows in cells.items():
        for name, values in sorted(rows.items(), key=lambda kv: -np.mean(kv[1])):
            mark = "✓" if name in chosen[cell] else ""
            print(f"| {cell} | {len(values)} | {np.mean(wall[cell]):.0f} | {mark} | `{name}` | "
                  f"{np.mean(values):.3f} ± {np.std(values):.3f} |")


if __name__ == "__main__":
    main()
