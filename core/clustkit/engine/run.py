"""A training run, start to finish: build, (resume,) train epoch by epoch, second stage, evaluate,
write the run folder. One step is :func:`clustkit.engine.step.train_step`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clustkit import dist
from clustkit.engine.build import build_run, loss_callers
from clustkit.engine.context import Prediction, RunContext
from clustkit.engine.run_folder import RunFolder
from clustkit.engine.step import train_step
from clustkit.plugin_system.manager import PluginSet
from clustkit.recipe import Recipe, dumps


class Run:
    """One training run: ``Run(recipe, plugins, out_dir).execute(resume=...)``; ``build()`` alone
    gives the built :class:`RunContext` (views pictures, throughput measurements)."""

    def __init__(self, recipe: Recipe, plugins: PluginSet, out_dir: Path | None):
        self.recipe = recipe
        self.plugins = plugins
        self.out_dir = out_dir
        self.started = time.perf_counter()

    def build(self) -> RunContext:
        return build_run(self.recipe, self.plugins, self.out_dir, self.started)

    def execute(self, resume: bool = False) -> dict[str, Any]:
        ctx = self.build()
        folder = RunFolder(self.out_dir, ctx.is_main)
        resumed = ctx.checkpointer.restore(ctx) if resume else False
        if resumed and ctx.epoch < ctx.epochs:
            ctx.phase = "train"  # resuming with a larger run.epochs extends training
        if resume and not resumed:
            ctx.console.print(f"[yellow]no checkpoint in {self.out_dir}; starting from scratch[/yellow]")
        folder.write_recipe(dumps(self.recipe))
        folder.write_metrics(ctx.history)
        ctx.hook.on_run_start(ctx=ctx)
        last = {"epoch": ctx.epoch, "step": ctx.step, "losses": {}}
        if ctx.phase == "train":
            last = self.train(ctx, folder) or last
            ctx.phase = "post"
            ctx.save_checkpoint()
        if ctx.phase == "post":
            ctx.hook.after_training(ctx=ctx)  # second stages (IcicleGCN's GCN)
        pred, metrics = evaluate(ctx)
        ctx.history = [e for e in ctx.history if not e.get("final")] + [{**last, **metrics, "final": True}]
        folder.write_metrics(ctx.history)
        summary = self.summary(ctx, pred, metrics)
        ctx.hook.on_run_end(ctx=ctx, summary=summary)
        ctx.phase = "done"
        summary["wall_s"] = round(ctx.wall_s(), 3)
        folder.write_summary(summary)
        folder.write_assignments(pred.labels, np.asarray(ctx.dataset.labels))
        ctx.save_checkpoint()
        dist.barrier()
        return summary

    def train(self, ctx: RunContext, folder: RunFolder) -> dict[str, Any] | None:
        """The epochs still to run; returns the last epoch's log entry when it had no evaluation."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        r = self.recipe
        passes = self.passes(ctx)
        last = None
        ctx.model.train()
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn())
        with Progress(*columns, console=ctx.console, disable=not ctx.is_main, transient=False) as progress:
            task = progress.add_task(r.run.name or Path(r.path).stem, total=ctx.epochs, completed=ctx.epoch, info="")
            while ctx.epoch < ctx.epochs:
                ctx.hook.on_epoch_start(ctx=ctx)
                logs: dict[str, float] = {}
                for name, losses in passes.items():
                    ctx.current_pass = name
                    sums: dict[str, torch.Tensor] = {}
                    batches = 0
                    for batch in ctx.sources[name].train_batches(ctx.epoch):
                        for k, v in train_step(ctx, batch, losses).items():
                            sums[k] = sums.get(k, 0) + v  # stays on the device: no sync per step
                        batches += 1
                    prefix = "" if name == "data" else f"{name}_"
                    logs.update({prefix + k: float(v) / max(1, batches) for k, v in sums.items()})
                ctx.current_pass = "data"
                ctx.hook.on_epoch_end(ctx=ctx, logs=logs)
                dist.broadcast_buffers(ctx.model)
                ctx.epoch += 1
                entry: dict[str, Any] = {"epoch": ctx.epoch, "step": ctx.step, "losses": logs}
                last = entry
                if r.run.eval_every and ctx.epoch % r.run.eval_every == 0 and ctx.epoch < ctx.epochs:
                    _, metrics = evaluate(ctx)
                    ctx.history.append({**entry, **metrics})
                    folder.write_metrics(ctx.history)
                    ctx.print(f"epoch {ctx.epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                    ctx.model.train()
                    last = None
                if ctx.epoch % r.run.checkpoint_every == 0 or ctx.epoch == ctx.epochs:
                    ctx.save_checkpoint()
                progress.update(task, completed=ctx.epoch, info=" ".join(f"{k}={v:.3f}" for k, v in logs.items()))
        return last

    def passes(self, ctx: RunContext) -> dict[str, dict[str, Any]]:
        """The passes of an epoch and the losses each trains: with an [unlabeled] section, a pass
        over those items with only ``run.unlabeled_losses`` comes first; then [data] with all."""
        every = [k for k in ctx.components if k.startswith("losses.")]
        keep = {f"losses.{k}" for k in self.recipe.run.unlabeled_losses}
        chosen = {"unlabeled": [k for k in every if k in keep], "data": every}
        return {name: loss_callers(ctx.pm, ctx.components, chosen[name]) for name in ctx.sources}

    def summary(self, ctx: RunContext, pred: Prediction, metrics: dict[str, float]) -> dict[str, Any]:
        r = self.recipe
        summary: dict[str, Any] = {
            "method": r.run.name or Path(r.path).stem,
            "dataset": getattr(ctx.dataset, "name", r.data.name),
            "n_samples": len(ctx.dataset),
            "n_clusters": ctx.n_clusters,
            "n_clusters_used": int(len(np.unique(pred.labels))),
            "evaluation": pred.source,
            "epochs": ctx.epoch,
            "seed": r.run.seed,
            "acc": metrics.get("acc"), "nmi": metrics.get("nmi"), "ari": metrics.get("ari"),
            "wall_s": round(ctx.wall_s(), 3),
            "recipe": r.path,
            "world_size": dist.world_size(),
            "device": str(ctx.device),
            "plugins": {n: i.version for n, i in self.plugins.info.items()},
        }
        summary.update({k: v for k, v in pred.extra.items() if isinstance(v, (int, float, str))})
        return summary


def evaluate(ctx: RunContext) -> tuple[Prediction, dict[str, float]]:
    """The recipe's evaluator's prediction, and ACC/NMI/ARI when the dataset has labels."""
    from clustkit.cluster.metrics import evaluate_clustering

    pred = ctx.hook.evaluate(ctx=ctx)
    if pred is None:
        raise RuntimeError("no evaluator answered; add an [evaluation] section")
    labels = np.asarray(ctx.dataset.labels)
    metrics = evaluate_clustering(labels, pred.labels) if (labels >= 0).any() else {}
    return pred, metrics
