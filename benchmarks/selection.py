"""How often does the label-free choice of a run's output pick the best candidate?

For every finished run folder given, recompute the run's candidate clusterings from its checkpoint
(``TrainedRun.candidates``), let each criterion choose (``agreement``, ``silhouette``, ``recipe``),
and compare the chosen candidate's ACC with the best candidate's ACC by labels (the researcher's
check). Prints a markdown table, one row per run and a summary per criterion.

    python benchmarks/selection.py runs/digits/*/seed* [--out benchmarks/results/selection.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from clustkit import load_run
from clustkit.cluster.selection import CRITERIA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = ["| run | best (by labels) | " + " | ".join(CRITERIA) + " |", "|---|---|" + "---|" * len(CRITERIA)]
    gaps: dict[str, list[float]] = {c: [] for c in CRITERIA}
    hits: dict[str, int] = {c: 0 for c in CRITERIA}
    for folder in args.runs:
        run = load_run(folder)
        cells, best_name, best = [], "", 0.0
        for criterion in CRITERIA:  # the run's own code path, once per criterion (k-means is seeded)
            run.ctx.recipe.run.select = criterion
            record = run.candidates()
            rows = record["candidates"]
            best_name = max(rows, key=lambda n: rows[n]["acc"])
            best = rows[best_name]["acc"]
            chosen = record["selection"]["chosen"]
            acc = rows[chosen]["acc"]
            gaps[criterion].append(best - acc)
            hits[criterion] += int(acc >= best - 1e-9)
            cells.append(f"{acc:.3f} `{chosen}`")
        lines.append(f"| {folder} | {best:.3f} `{best_name}` | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    n = len(args.runs)
    lines += ["", "| criterion | picks the best | mean ACC below the best | worst |", "|---|---|---|---|"]
    for c in CRITERIA:
        lines.append(f"| {c} | {hits[c]}/{n} | {np.mean(gaps[c]):.4f} | {np.max(gaps[c]):.4f} |")
    text = "\n".join(lines) + "\n"
    print("\n".join(lines[-len(CRITERIA) - 2:]))
    if args.out:
        args.out.write_text(f"Command: `python benchmarks/selection.py {' '.join(sys.argv[1:])}`\n\n" + text)


if __name__ == "__main__":
    main()
