"""How often does the label-free choice of a run's output pick the best candidate?

For every finished run folder given, recompute the run's candidate clusterings from its checkpoint
once (the run's own code path: ``clustkit.engine.evaluation``), let each criterion choose
(``agreement``, ``neighbors``, ``silhouette``, ``recipe``), and compare the chosen candidate's ACC
with the best candidate's ACC by labels (the researcher's check). Prints a markdown table, one row
per run and a summary per criterion. ``--set`` changes the recipe first, e.g. to add a UMAP
evaluation as the recipe's candidate: ``--set 'evaluation = {name = "umap"}'``.

    python benchmarks/selection.py runs/digits/*/seed* [--set KEY=VALUE] [--out benchmarks/results/selection.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from clustkit import load_run
from clustkit.cluster.diagnostics import cluster_diagnostics
from clustkit.cluster.metrics import cluster_acc
from clustkit.cluster.selection import CRITERIA, select
from clustkit.engine.evaluation import evaluation, run_candidates, sample_features, sample_neighbors


def choices(run) -> tuple[dict[str, float], dict[str, str]]:
    """(ACC of every candidate, the candidate each criterion chooses) for one loaded run."""
    ctx, state = run.ctx, run.state
    features = ctx.extract_spaces(["backbone", *ctx.model.heads])
    recipe_pred = evaluation(state)
    candidates = run_candidates(state, recipe_pred, every_space=True, features=features)
    labels = {n: p.labels for n, p in candidates.items()}
    idx, feats = sample_features(state)
    silhouettes = {n: cluster_diagnostics(p.labels, ctx.n_clusters, feats, feature_index=idx).get("silhouette")
                   for n, p in candidates.items()}
    near = sample_neighbors(features["backbone"], idx)
    truth = np.asarray(ctx.dataset.labels)
    accs = {n: cluster_acc(truth, p.labels) for n, p in candidates.items()}
    chosen = {c: select(labels, c, recipe_pred.name, silhouettes, near).chosen for c in CRITERIA}
    return accs, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, repeatable")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = ["| run | best (by labels) | " + " | ".join(CRITERIA) + " |", "|---|---|" + "---|" * len(CRITERIA)]
    gaps: dict[str, list[float]] = {c: [] for c in CRITERIA}
    hits: dict[str, int] = {c: 0 for c in CRITERIA}
    for folder in args.runs:
        accs, chosen = choices(load_run(folder, overrides=args.overrides))
        best_name = max(accs, key=accs.get)
        best = accs[best_name]
        cells = []
        for criterion in CRITERIA:
            acc = accs[chosen[criterion]]
            gaps[criterion].append(best - acc)
            hits[criterion] += int(acc >= best - 1e-9)
            cells.append(f"{acc:.3f} `{chosen[criterion]}`")
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
