"""A training run, start to finish: build, (resume,) train epoch by epoch, second stage, evaluate,
write the run folder. One step is :func:`clustkit.engine.step.train_step`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clustkit import dist
from clustkit.cluster.diagnostics import DIAGNOSTIC_KEYS
from clustkit.cluster.metrics import METRIC_KEYS
from clustkit.engine.build import after_training, build_run, loss_callers
from clustkit.engine.candidates import choose
from clustkit.engine.context import Prediction, RunContext
from clustkit.engine.progress import EpochProgress
from clustkit.engine.reporting import env_switch, report_enabled, sample_features, write_curves, write_run_report
from clustkit.engine.tensorboard import TensorBoardLog
from clustkit.engine.run_folder import CHECKPOINT, SUMMARY, RunFolder
from clustkit.engine.step import train_step
from clustkit.errors import RunDiverged, UserError
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
        if resume:
            self.check_resumable()
        ctx = self.build()
        folder = RunFolder(self.out_dir, ctx.is_main)
        if resume:
            finished = self.restore(ctx)
            if finished is not None:
                return finished
        folder.write_recipe(dumps(self.recipe))
        folder.write_metrics(ctx.history)
        board = TensorBoardLog(folder.path, env_switch("CLUSTKIT_TENSORBOARD", self.recipe.run.tensorboard))
        ctx.hook.on_run_start(ctx=ctx)
        if ctx.phase == "train":
            self.train(ctx, folder, board)
            ctx.phase = "post"
            ctx.save_checkpoint()
        if ctx.phase == "post":
            after_training(ctx)  # second stages, in recipe order (IcicleGCN's GCN, self-labelling)
        recipe_pred, _ = evaluate(ctx)
        features = sample_features(ctx)  # the silhouettes, and the report's embedding
        pred, chosen = choose(ctx, recipe_pred, features)  # label-free (run.select)
        row = chosen["candidates"][chosen["selected"]]
        metrics = {k: row[k] for k in METRIC_KEYS if k in row}
        diagnostics = {k: row[k] for k in DIAGNOSTIC_KEYS if k in row}
        ctx.assignment = {"rule": pred.rule, "space": pred.space, "momentum": pred.momentum,
                          "centroids": pred.centroids}  # saved with the final checkpoint, for predict
        self.record_final(ctx, {**metrics, "selected": chosen["selected"], "candidates": chosen["candidates"]})
        folder.write_metrics(ctx.history)
        board.log({"epoch": ctx.epoch, **metrics})
        board.close()
        summary = self.summary(ctx, pred, metrics, diagnostics, recipe_pred, chosen)
        ctx.hook.on_run_end(ctx=ctx, summary=summary)
        ctx.phase = "done"
        summary["wall_s"] = round(ctx.wall_s(), 3)
        folder.write_summary(summary)
        folder.write_assignments(pred.labels, np.asarray(ctx.dataset.labels))
        ctx.save_checkpoint()
        if report_enabled(self.recipe) and folder.path is not None:
            write_run_report(ctx, folder.path, pred, summary, features, diagnostics)
        dist.barrier()
        return summary

    # -- resuming ---------------------------------------------------------------------------
    def check_resumable(self) -> None:
        """``--resume`` needs a run folder holding a checkpoint; never start afresh silently."""
        out = self.out_dir
        if out is None or not out.is_dir():
            raise UserError(f"--resume: the run folder {out} does not exist. Pass --out with the folder of the run "
                            "to continue, or leave out --resume to start a new run.")
        if not (out / CHECKPOINT).exists():
            raise UserError(f"--resume: {out} holds no checkpoint ({CHECKPOINT}), so there is nothing to continue. "
                            "Start a new run without --resume (into another --out, or after removing the folder).")

    def restore(self, ctx: RunContext) -> dict[str, Any] | None:
        """Load the checkpoint; returns the run's summary when there is nothing left to do (a
        finished run asked for the same or fewer epochs), leaving the folder untouched."""
        ctx.checkpointer.restore(ctx)
        done_epochs = ctx.epoch
        summary_file = self.out_dir / SUMMARY  # type: ignore[operator]
        if ctx.phase in ("post", "done") and ctx.epochs <= done_epochs:
            if ctx.phase == "done" and summary_file.exists():
                ctx.print(f"{self.out_dir} already finished {done_epochs} epochs (run.epochs = {ctx.epochs}); "
                          "nothing to do, the run folder is unchanged")
                return json.loads(summary_file.read_text())
            # else: a second stage to finish, or the final outputs to write again (a lost summary)
        elif ctx.phase == "train" and ctx.epochs < done_epochs:
            raise UserError(f"--resume: {self.out_dir} has already trained {done_epochs} epochs, more than "
                            f"run.epochs = {ctx.epochs}; pass run.epochs >= {done_epochs}.")
        elif ctx.phase in ("post", "done"):  # a larger run.epochs extends a finished run
            ctx.phase = "train"
            for entry in ctx.history:
                entry.pop("final", None)  # the earlier final line stays, as an ordinary one
        ctx.print(f"resuming {self.out_dir} from epoch {done_epochs} (step {ctx.step}, phase {ctx.phase}) "
                  f"to epoch {ctx.epochs}")
        return None

    # -- training ---------------------------------------------------------------------------
    def train(self, ctx: RunContext, folder: RunFolder, board: TensorBoardLog) -> None:
        """The epochs still to run; one metrics.jsonl line per epoch (losses, lr, images/s, and
        the metrics at evaluation epochs)."""
        r = self.recipe
        passes = self.passes(ctx)
        ctx.model.train()
        with EpochProgress(ctx.console, r.run_name, ctx.epoch, ctx.epochs, enabled=ctx.is_main) as progress:
            while ctx.epoch < ctx.epochs:
                started = time.perf_counter()
                ctx.hook.on_epoch_start(ctx=ctx)
                logs: dict[str, float] = {}
                images = 0
                for pass_name, losses in passes.items():
                    ctx.current_pass = pass_name
                    sums: dict[str, torch.Tensor] = {}
                    batches = 0
                    for batch in ctx.sources[pass_name].train_batches(ctx.epoch):
                        for k, v in train_step(ctx, batch, losses).items():
                            sums[k] = sums.get(k, 0) + v  # stays on the device: no sync per step
                        batches += 1
                        images += int(batch[0].shape[0]) * ctx.world_size
                    prefix = "" if pass_name == "data" else f"{pass_name}_"
                    logs.update({prefix + k: float(v) / max(1, batches) for k, v in sums.items()})
                ctx.current_pass = "data"
                check_finite(ctx, logs)
                ctx.hook.on_epoch_end(ctx=ctx, logs=logs)
                dist.broadcast_buffers(ctx.model)
                ctx.epoch += 1
                seconds = time.perf_counter() - started
                entry: dict[str, Any] = {"epoch": ctx.epoch, "step": ctx.step, "losses": logs, "lr": current_lr(ctx),
                                         "images_per_s": round(images / max(seconds, 1e-9), 1),
                                         "epoch_s": round(seconds, 3)}
                evaluated = bool(r.run.eval_every and ctx.epoch % r.run.eval_every == 0 and ctx.epoch < ctx.epochs)
                if evaluated:
                    _, metrics = evaluate(ctx)
                    entry.update(metrics)
                    ctx.model.train()
                ctx.history.append(entry)
                folder.write_metrics(ctx.history)
                board.log(entry)
                if ctx.epoch % r.run.checkpoint_every == 0 or ctx.epoch == ctx.epochs:
                    ctx.save_checkpoint()
                progress.epoch_done(entry)
                if evaluated and report_enabled(r) and folder.path is not None:
                    write_curves(ctx, folder.path)

    def passes(self, ctx: RunContext) -> dict[str, dict[str, Any]]:
        """The passes of an epoch and the losses each trains: with an [unlabeled] section, a pass
        over those items with only ``run.unlabeled_losses`` comes first; then [data] with all."""
        every = [k for k in ctx.components if k.startswith("losses.")]
        keep = {f"losses.{k}" for k in self.recipe.run.unlabeled_losses}
        chosen = {"unlabeled": [k for k in every if k in keep], "data": every}
        return {name: loss_callers(ctx.pm, ctx.components, chosen[name]) for name in ctx.sources}

    # -- results ----------------------------------------------------------------------------
    @staticmethod
    def record_final(ctx: RunContext, metrics: dict[str, Any]) -> None:
        """The final metrics join the last epoch's line (or a line of their own after a second
        stage resumed with no epoch trained in this invocation)."""
        last = ctx.history[-1] if ctx.history else None
        if last is not None and last.get("epoch") == ctx.epoch:
            last.update(metrics)
            last["final"] = True
        else:
            ctx.history.append({"epoch": ctx.epoch, "step": ctx.step, "losses": {}, **metrics, "final": True})

    def summary(self, ctx: RunContext, pred: Prediction, metrics: dict[str, float], diagnostics: dict[str, Any],
                recipe_pred: Prediction, chosen: dict[str, Any]) -> dict[str, Any]:
        r = self.recipe
        assigned = pred.labels[pred.labels >= 0]
        summary: dict[str, Any] = {
            "method": r.run_name,
            "dataset": getattr(ctx.dataset, "name", r.data.name),
            "n_samples": len(ctx.dataset),
            "n_clusters": ctx.n_clusters,
            "n_clusters_used": int(len(np.unique(assigned))),
            "evaluation": pred.source,  # the chosen candidate (run.select)
            "assign": {"rule": pred.rule, "space": pred.space, "momentum": pred.momentum},
            "epochs": ctx.epoch,
            "seed": r.run.seed,
            "acc": metrics.get("acc"), "nmi": metrics.get("nmi"), "ari": metrics.get("ari"), "ami": metrics.get("ami"),
            **diagnostics,  # label-free: size balance, empty clusters, silhouette (docs/report.md)
            "unreadable_images": sum(len(s.unreadable) for s in ctx.sources.values()),
            "wall_s": round(ctx.wall_s(), 3),
            "recipe": r.path,
            "world_size": dist.world_size(),
            "device": str(ctx.device),
            "plugins": {n: i.version for n, i in self.plugins.info.items()},
        }
        summary["selection"] = chosen["selection"]
        summary["candidates"] = chosen["candidates"]
        summary.update({k: v for k, v in recipe_pred.extra.items() if isinstance(v, (int, float, str))})
        warnings = untrained_warnings(ctx, recipe_pred)
        if warnings:
            summary["warnings"] = warnings
            for w in warnings:
                ctx.print(f"warning: {w}")
        return summary


def current_lr(ctx: RunContext) -> float:
    """The learning rate of the parameters without an ``lr_mult`` (the recipe's optimizer.lr)."""
    groups = ctx.optimizer.param_groups
    group = next((g for g in groups if g.get("lr_mult", 1.0) == 1.0), groups[0])
    return float(group["lr"])


def check_finite(ctx: RunContext, logs: dict[str, float]) -> None:
    """Stop before the epoch's checkpoint when a loss became NaN or infinite, so the last good
    checkpoint stays the one ``--resume`` continues from."""
    bad = [k for k, v in logs.items() if not math.isfinite(v)]
    if bad:
        raise RunDiverged(
            f"the loss {', '.join(bad)} became non-finite in epoch {ctx.epoch + 1} (step {ctx.step}); the run stopped "
            f"without writing this epoch's checkpoint. Lower optimizer.lr (or add warm-up), then resume from the last "
            f"good checkpoint with --resume, or start again.")


def untrained_warnings(ctx: RunContext, pred: Prediction) -> list[str]:
    """Warn when the evaluation reads a head no loss trained (e.g. a bench cell with the
    cluster loss's weight at 0 evaluating the cluster head's argmax)."""
    if pred.rule != "argmax" or ctx.step == 0 or pred.space not in ctx.model.heads:
        return []
    trained = {h for h in ctx.model.heads if any(p.grad is not None for p in ctx.model.heads[h].parameters())}
    if pred.space in trained:
        return []
    return [f"the evaluation ({pred.source}) reads head {pred.space!r}, which no loss trained in this run "
            f"(a loss at weight 0?); its clusters are those of an untrained head. Evaluate with k-means instead: "
            f"--set 'evaluation={{name=\"kmeans\"}}'"]


def evaluate(ctx: RunContext) -> tuple[Prediction, dict[str, float]]:
    """The recipe's evaluator's prediction, and ACC/NMI/ARI/AMI when the dataset has labels;
    unreadable images get cluster -1 and are left out of the metrics."""
    from clustkit.cluster.metrics import evaluate_clustering

    pred = ctx.hook.evaluate(ctx=ctx)
    if pred is None:
        raise RuntimeError("no evaluator answered; add an [evaluation] section")
    pred.labels = np.asarray(pred.labels, dtype=np.int64)
    if pred.scores is not None and not np.isfinite(pred.scores).all():
        raise RunDiverged(f"the evaluation ({pred.source}) produced non-finite scores at epoch {ctx.epoch}; the "
                          "network has diverged. Lower optimizer.lr and resume from the last good checkpoint.")
    unreadable = sorted(ctx.source.unreadable)
    if unreadable:
        pred.labels = pred.labels.copy()
        pred.labels[unreadable] = -1
    labels = np.asarray(ctx.dataset.labels)
    metrics = evaluate_clustering(labels, pred.labels) if (labels >= 0).any() else {}
    return pred, metrics
