"""A training run, start to finish: build, (resume,) train epoch by epoch, the refinement stages,
the label-free choice of the output, the run folder. One step is :func:`clustkit.engine.step.train_step`.
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
from clustkit.cluster.diagnostics import DIAGNOSTIC_KEYS, size_profile
from clustkit.cluster.metrics import METRIC_KEYS
from clustkit.cluster.prediction import Prediction
from clustkit.engine import cached
from clustkit.engine.build import build_run
from clustkit.engine.components import Bound
from clustkit.engine.evaluation import choose, evaluation, metrics, refined, sample_features
from clustkit.engine.plugin_errors import plugin_failure, traceback_text
from clustkit.engine.progress import EpochProgress
from clustkit.engine.reporting import env_switch, report_enabled, write_curves, write_run_report
from clustkit.engine.run_folder import CHECKPOINT, SUMMARY, RunFolder
from clustkit.engine.state import RunState
from clustkit.engine.step import train_step
from clustkit.engine.tensorboard import TensorBoardLog
from clustkit.errors import PluginError, RunDiverged, UserError
from clustkit.plugin_system.manager import PluginSet
from clustkit.recipe import Recipe, dumps


class Run:
    """One training run: ``Run(recipe, plugins, out_dir).execute(resume=...)``; ``build()`` alone
    gives the built :class:`RunState` (views pictures, throughput measurements)."""

    def __init__(self, recipe: Recipe, plugins: PluginSet, out_dir: Path | None):
        self.recipe = recipe
        self.plugins = plugins
        self.out_dir = out_dir
        self.started = time.perf_counter()

    def build(self) -> RunState:
        return build_run(self.recipe, self.plugins, self.out_dir, self.started)

    def execute(self, resume: bool = False) -> dict[str, Any]:
        """Train, refine, choose and write the run folder. An exception raised in a plugin's code
        becomes a one-paragraph ``PluginError`` (its traceback goes to the folder's error.log)."""
        if resume:
            self.check_resumable()
        run: RunState | None = None
        try:
            run = self.build()
            return self._execute(run, resume)
        except (UserError, KeyboardInterrupt) as exc:
            if isinstance(exc, PluginError) and exc.detail:
                self._write_error(exc.detail)
            raise
        except Exception as exc:
            log = self._write_error(traceback_text(exc))
            failure = plugin_failure(exc, self.plugins, run.components if run is not None else None,
                                     _during(run))
            if failure is None:
                raise
            raise PluginError(str(failure) + self._aftermath(log), failure.detail) from exc

    def _write_error(self, text: str) -> Path | None:
        """The traceback of a failed run, beside its other files (rank 0; no folder, no file)."""
        if self.out_dir is None or not dist.is_main():
            return None
        return RunFolder(self.out_dir, True).write_error(text)

    def _aftermath(self, log: Path | None) -> str:
        text = f" The full traceback is in {log}." if log is not None else ""
        if self.out_dir is not None and (self.out_dir / CHECKPOINT).exists():
            text += (f" The last checkpoint ({self.out_dir / CHECKPOINT}) is kept: once the plugin is fixed, "
                     f"--resume --out {self.out_dir} continues from it.")
        return text

    def _execute(self, run: RunState, resume: bool) -> dict[str, Any]:
        ctx = run.ctx
        folder = RunFolder(self.out_dir, ctx.is_main)
        if resume:
            finished = self.restore(run)
            if finished is not None:
                return finished
        cached.prepare(run)  # [features]: extract what the cache lacks; train and evaluate on it
        folder.write_recipe(dumps(self.recipe))
        folder.write_metrics(run.history)
        board = TensorBoardLog(folder.path, env_switch("CLUSTKIT_TENSORBOARD", self.recipe.run.tensorboard))
        run.hooks.hook.on_run_start(ctx=ctx)
        if run.phase == "train":
            self.train(run, folder, board)
            run.phase = "post"
            run.hooks.hook.after_training(ctx=ctx)
            run.save_checkpoint()
        recipe_pred = refined(run)  # the evaluation, then each [refine.<id>] stage in recipe order
        features = sample_features(run)  # the silhouettes, and the report's embedding
        pred, chosen = choose(run, recipe_pred, features)  # label-free (run.select)
        row = chosen["candidates"][chosen["selected"]]
        scores = {k: row[k] for k in METRIC_KEYS if k in row}
        diagnostics = {k: row[k] for k in DIAGNOSTIC_KEYS if k in row}
        run.assignment = pred.assignment()  # saved with the final checkpoint, for predict
        self.record_final(run, {**scores, "selected": chosen["selected"], "candidates": chosen["candidates"]})
        folder.write_metrics(run.history)
        board.log({"epoch": ctx.epoch, **scores})
        board.close()
        summary = self.summary(run, pred, scores, diagnostics, recipe_pred, chosen)
        run.hooks.hook.on_run_end(ctx=ctx, summary=summary)
        run.phase = "done"
        summary["wall_s"] = round(run.wall_s(), 3)
        folder.write_summary(summary)
        folder.write_assignments(pred.labels, np.asarray(ctx.dataset.labels))
        run.save_checkpoint()
        if report_enabled(self.recipe) and folder.path is not None:
            write_run_report(run, folder.path, pred, summary, features, diagnostics)
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

    def restore(self, run: RunState) -> dict[str, Any] | None:
        """Load the checkpoint; returns the run's summary when there is nothing left to do (a
        finished run asked for the same or fewer epochs), leaving the folder untouched."""
        ctx = run.ctx
        run.checkpointer.restore(run)
        done_epochs = ctx.epoch
        summary_file = self.out_dir / SUMMARY  # type: ignore[operator]
        if run.phase in ("post", "done") and ctx.epochs <= done_epochs:
            if run.phase == "done" and summary_file.exists():
                ctx.print(f"{self.out_dir} already finished {done_epochs} epochs (run.epochs = {ctx.epochs}); "
                          "nothing to do, the run folder is unchanged")
                return json.loads(summary_file.read_text())
            # else: a refinement stage to finish, or the final outputs to write again (a lost summary)
        elif run.phase == "train" and ctx.epochs < done_epochs:
            raise UserError(f"--resume: {self.out_dir} has already trained {done_epochs} epochs, more than "
                            f"run.epochs = {ctx.epochs}; pass run.epochs >= {done_epochs}.")
        elif run.phase in ("post", "done"):  # a larger run.epochs extends a finished run
            run.phase = "train"
            for entry in run.history:
                entry.pop("final", None)  # the earlier final line stays, as an ordinary one
        ctx.print(f"resuming {self.out_dir} from epoch {done_epochs} (step {ctx.step}, phase {run.phase}) "
                  f"to epoch {ctx.epochs}")
        return None

    # -- training ---------------------------------------------------------------------------
    def train(self, run: RunState, folder: RunFolder, board: TensorBoardLog) -> None:
        """The epochs still to run; one metrics.jsonl line per epoch (losses, what components logged
        besides, lr, images/s, and the metrics at evaluation epochs)."""
        r = self.recipe
        ctx = run.ctx
        passes = self.passes(run)
        ctx.model.train()
        with EpochProgress(run.console, r.run_name, ctx.epoch, ctx.epochs, enabled=ctx.is_main) as progress:
            while ctx.epoch < ctx.epochs:
                started = time.perf_counter()
                run.hooks.hook.on_epoch_start(ctx=ctx)
                losses: dict[str, float] = {}
                images = 0
                for pass_name, pass_losses in passes.items():
                    run.current_pass = pass_name
                    sums: dict[str, torch.Tensor] = {}
                    batches = 0
                    for batch in run.sources[pass_name].train_batches(ctx.epoch):
                        for k, v in train_step(run, batch, pass_losses).items():
                            sums[k] = sums.get(k, 0) + v  # stays on the device: no sync per step
                        batches += 1
                        images += int(batch[0].shape[0]) * ctx.world_size
                    prefix = "" if pass_name == "data" else f"{pass_name}_"
                    losses.update({prefix + k: float(v) / max(1, batches) for k, v in sums.items()})
                run.current_pass = "data"
                check_finite(ctx, losses)
                logs = dict(losses)
                run.hooks.hook.on_epoch_end(ctx=ctx, logs=logs)
                values = {k: v for k, v in logs.items() if k not in losses}  # what components added; the losses stay
                dist.broadcast_buffers(ctx.model)
                ctx.epoch += 1
                seconds = time.perf_counter() - started
                entry: dict[str, Any] = {"epoch": ctx.epoch, "step": ctx.step,
                                         "losses": losses, "lr": current_lr(run),
                                         "images_per_s": round(images / max(seconds, 1e-9), 1),
                                         "epoch_s": round(seconds, 3)}
                if values:
                    entry["values"] = values
                evaluated = bool(r.run.eval_every and ctx.epoch % r.run.eval_every == 0 and ctx.epoch < ctx.epochs)
                if evaluated:
                    entry.update(metrics(run, evaluation(run)))
                    ctx.model.train()
                run.history.append(entry)
                folder.write_metrics(run.history)
                board.log(entry)
                if ctx.epoch % r.run.checkpoint_every == 0 or ctx.epoch == ctx.epochs:
                    run.save_checkpoint()
                progress.epoch_done(entry)
                if evaluated and report_enabled(r) and folder.path is not None:
                    write_curves(run, folder.path)

    def passes(self, run: RunState) -> dict[str, dict[str, Bound]]:
        """The passes of an epoch and the losses each trains, in recipe order: with an [unlabeled]
        section, a pass over those items with only ``run.unlabeled_losses`` comes first; then
        [data] with all."""
        every = run.components.losses
        keep = set(self.recipe.run.unlabeled_losses)
        chosen = {"unlabeled": {k: v for k, v in every.items() if k in keep}, "data": every}
        return {name: chosen[name] for name in run.sources}

    # -- results ----------------------------------------------------------------------------
    @staticmethod
    def record_final(run: RunState, scores: dict[str, Any]) -> None:
        """The final metrics join the last epoch's line (or a line of their own after a refinement
        stage resumed with no epoch trained in this invocation)."""
        ctx = run.ctx
        last = run.history[-1] if run.history else None
        if last is not None and last.get("epoch") == ctx.epoch:
            last.update(scores)
            last["final"] = True
        else:
            run.history.append({"epoch": ctx.epoch, "step": ctx.step, "losses": {}, **scores, "final": True})

    def summary(self, run: RunState, pred: Prediction, scores: dict[str, float], diagnostics: dict[str, Any],
                recipe_pred: Prediction, chosen: dict[str, Any]) -> dict[str, Any]:
        r = self.recipe
        ctx = run.ctx
        assigned = pred.labels[pred.labels >= 0]
        summary: dict[str, Any] = {
            "method": r.run_name,
            "dataset": getattr(ctx.dataset, "name", r.data.name),
            "n_samples": len(ctx.dataset),
            "n_clusters": ctx.n_clusters,
            "n_clusters_used": len(np.unique(assigned)),
            "evaluation": pred.name,  # the chosen candidate (run.select)
            "assign": {"rule": pred.rule, "space": pred.assign_space, "momentum": pred.assign_momentum},
            "epochs": ctx.epoch,
            "seed": r.run.seed,
            "acc": scores.get("acc"), "nmi": scores.get("nmi"), "ari": scores.get("ari"), "ami": scores.get("ami"),
            **diagnostics,  # label-free: size balance, empty clusters, silhouette (docs/report.md)
            # cluster sizes beside the class sizes; empty, tiny and giant clusters flagged without labels
            "sizes": size_profile(pred.labels, ctx.n_clusters, np.asarray(ctx.dataset.labels)),
            "unreadable_images": sum(len(s.unreadable) for s in run.sources.values()),
            "wall_s": round(run.wall_s(), 3),
            "recipe": r.path,
            "world_size": dist.world_size(),
            "device": str(ctx.device),
            "plugins": {n: i.version for n, i in self.plugins.info.items()},
        }
        summary["selection"] = chosen["selection"]
        summary["candidates"] = chosen["candidates"]
        if recipe_pred.vote is not None:
            summary["vote"] = recipe_pred.vote.to_json()
        summary.update({k: v for k, v in recipe_pred.extra.items() if isinstance(v, (int, float, str))})
        warnings = untrained_warnings(ctx, recipe_pred)
        if warnings:
            summary["warnings"] = warnings
            for w in warnings:
                ctx.print(f"warning: {w}")
        return summary


def _during(run: RunState | None) -> str:
    """Where a run was when something failed, for its error message."""
    if run is None:
        return " while the run was being built"
    if run.phase == "train":
        return f" in epoch {run.ctx.epoch + 1}, after step {run.ctx.step}"
    return " after training (in the refinement stages or the final evaluation)"


def current_lr(run: RunState) -> float:
    """The learning rate of the parameters without an ``lr_mult`` (the recipe's optimizer.lr)."""
    groups = run.optimizer.param_groups
    group = next((g for g in groups if g.get("lr_mult", 1.0) == 1.0), groups[0])
    return float(group["lr"])


def check_finite(ctx: Any, logs: dict[str, float]) -> None:
    """Stop before the epoch's checkpoint when a loss became NaN or infinite, so the last good
    checkpoint stays the one ``--resume`` continues from."""
    bad = [k for k, v in logs.items() if not math.isfinite(v)]
    if bad:
        raise RunDiverged(
            f"the loss {', '.join(bad)} became non-finite in epoch {ctx.epoch + 1} (step {ctx.step}); the run stopped "
            f"without writing this epoch's checkpoint. Lower optimizer.lr (or add warm-up), then resume from the last "
            f"good checkpoint with --resume, or start again.")


def untrained_warnings(ctx: Any, pred: Prediction) -> list[str]:
    """Warn when the evaluation reads a head no loss trained (e.g. a bench cell with the
    cluster loss's weight at 0 evaluating the cluster head's argmax)."""
    if pred.rule != "argmax" or ctx.step == 0 or pred.space not in ctx.model.heads:
        return []
    trained = {h for h in ctx.model.heads if any(p.grad is not None for p in ctx.model.heads[h].parameters())}
    if pred.space in trained:
        return []
    return [f"the evaluation ({pred.name}) reads head {pred.space!r}, which no loss trained in this run "
            f"(a loss at weight 0?); its clusters are those of an untrained head. Evaluate with k-means instead: "
            f"--set 'evaluation={{name=\"kmeans\"}}'"]
