"""Feature extraction of a [features] recipe against the model-only forward ceiling.

The ceiling is the frozen backbone alone on ready-made tensors (already at the model's input size,
channels-last, as the extraction runs it); the extraction is the engine's own (clustkit.engine
.feature_cache), into a fresh cache folder, from the dataset's images: decoding or slicing,
resizing to the model's input size, normalising, the forward pass and writing float16 rows.

    python benchmarks/extraction.py recipes/pretrained/cc.toml --set ... [--ceiling-batches 20] [--cache-dir DIR]

prints one JSON line: the ceiling just before and just after the extraction, the extraction's rate
(images/s), and its ratio to the mean of the two ceilings.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from clustkit.engine.build import build_run
from clustkit.engine.cached import prepare
from clustkit.plugin_system.manager import PluginSet
from clustkit.recipe import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--ceiling-batches", type=int, default=20)
    ap.add_argument("--cache-dir", help="extract into this [features] cache_dir (it must not hold these features "
                    "yet), for later runs to reuse; default: a temporary folder")
    args = ap.parse_args()
    plugins = PluginSet()
    plugins.load_entry_points()
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache_dir or scratch
        recipe = load(args.recipe, plugins.registry, [*args.overrides, f'features.cache_dir="{cache}"'])
        run = build_run(recipe, plugins, None)
        frozen = run.ctx.model.backbone.frozen.eval().to(memory_format=torch.channels_last)
        batch = recipe.features.batch_size
        size = frozen.input_resize[0] if frozen.input_resize else run.ctx.image_size[0]
        x = torch.rand(batch, run.ctx.in_channels, size, size).contiguous(memory_format=torch.channels_last)

        @torch.no_grad()
        def ceiling() -> float:
            frozen(x)  # warm-up
            started = time.perf_counter()
            for _ in range(args.ceiling_batches):
                frozen(x)
            return args.ceiling_batches * batch / (time.perf_counter() - started)

        before = ceiling()
        started = time.perf_counter()
        prepare(run)
        seconds = time.perf_counter() - started
        after = ceiling()  # a shared machine's speed drifts: the ceiling on both sides of the extraction
        if run.feature_cache.extracted == 0:
            raise SystemExit(f"{cache} already held these features: nothing was extracted, nothing measured")
    n = len(run.ctx.dataset)
    print(json.dumps({"recipe": args.recipe, "items": n, "input_size": size, "batch": batch,
                      "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                      "ceiling_before_img_s": round(before, 2), "ceiling_after_img_s": round(after, 2),
                      "extraction_s": round(seconds, 1), "extraction_img_s": round(n / seconds, 2),
                      "ratio": round(n / seconds / ((before + after) / 2), 3)}))


if __name__ == "__main__":
    main()
