"""A picture of a recipe's training views: ``clustkit views RECIPE --out grid.png``.

Builds the run's dataset and view generator exactly as ``clustkit run`` would (same seed, same
``--set`` overrides), takes the first ``n_images`` images and writes a PNG grid: one row for the
originals, then one row per training view (``weak1``, ``weak2``, ``strong``, ...), each row
labelled. Views that are mean/std-normalised are min-max rescaled per image for display.
Also runnable as ``python -m clustkit.cli.viewgrid RECIPE --out grid.png [--set K=V] [-n 8]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F


def _display(x: torch.Tensor) -> torch.Tensor:
    """Map a batch into [0, 1] for display (per-image min-max only when it lies outside)."""
    x = x.detach().float().cpu()
    if x.min() >= 0 and x.max() <= 1:
        return x
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def view_rows(recipe_path: str, overrides: list[str], n_images: int = 8) -> dict[str, torch.Tensor]:
    """``{"original": ..., view_name: ...}``, each n x C x H x W in [0, 1] on the CPU."""
    from clustkit.engine.build import build_run
    from clustkit.recipe import load_recipe

    recipe, plugins = load_recipe(recipe_path, list(overrides))
    ctx = build_run(recipe, plugins, None).ctx
    n = min(n_images, len(ctx.dataset))
    images = torch.stack([torch.as_tensor(ctx.dataset[i][0]) for i in range(n)])
    x = images.to(ctx.device).float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    with torch.no_grad():
        views = ctx.make_views(x, train=True)
    rows = {"original": x.cpu()}
    rows.update({name: _display(v) for name, v in views.items()})
    return rows


def save_view_grid(recipe_path: str, overrides: list[str], out: str, n_images: int = 8) -> Path:
    """Write a labelled PNG grid (row 1: the images, then one row per training view); return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = view_rows(recipe_path, overrides, n_images)
    size = max(v.shape[-1] for v in rows.values())
    n = next(iter(rows.values())).shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 0.9, 1.1 * len(rows)), squeeze=False)
    for r, (name, batch) in enumerate(rows.items()):
        if batch.shape[-1] != size:
            batch = F.interpolate(batch, size=(size, size), mode="nearest")
        for c in range(n):
            ax = axes[r][c]
            img = batch[c].clamp(0, 1)
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(Path(recipe_path).name + (" " + " ".join(overrides) if overrides else ""), fontsize=9)
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clustkit.cli.viewgrid", description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--out", "-o", default="views.png")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[])
    parser.add_argument("-n", "--n-images", type=int, default=8)
    args = parser.parse_args(argv)
    print(save_view_grid(args.recipe, args.overrides, args.out, args.n_images))


if __name__ == "__main__":  # pragma: no cover
    main()
