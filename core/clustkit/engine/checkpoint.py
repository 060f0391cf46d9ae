"""Checkpoints: everything a run needs to continue where it stopped, written atomically.

A checkpoint holds the counters, the online and momentum networks, optimizer and schedule,
every RNG state, every component's ``checkpoint_state`` (groups, banks, pseudo-labels, a
second stage's progress), the metrics history and the wall time so far. Resuming refuses a
recipe that differs from the checkpoint's, except for the keys that only extend or re-pace a run.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clustkit import dist
from clustkit.atomic import atomic_write
from clustkit.errors import UserError

if TYPE_CHECKING:
    from clustkit.engine.context import RunContext

#: Recipe keys a resumed run may change.
RESUMABLE_KEYS = ("run.epochs", "run.eval_every", "run.checkpoint_every", "run.report",
                  "run.tensorboard", "run.select", "run.num_workers", "data.in_memory")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and restores a run's state at ``path`` (nothing to do when the run has no folder)."""

    def __init__(self, path: Path | None, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()

    def save(self, ctx: RunContext) -> None:
        """Write the checkpoint (rank 0 only; the other ranks hold the same state)."""
        if self.path is None or not dist.is_main():
            return
        components: dict[str, Any] = {}
        for part in ctx.hook.checkpoint_state(ctx=ctx):
            components.update(part or {})
        state = {
            "epoch": ctx.epoch, "step": ctx.step, "phase": ctx.phase,
            "model": ctx.model.state_dict(),
            "momentum_model": ctx.momentum_model.state_dict() if ctx.has_momentum else None,
            "optimizer": ctx.optimizer.state_dict(), "scheduler": ctx.scheduler.state_dict(),
            "rng": rng_state(), "components": components, "wall_s": ctx.wall_s(),
            "fingerprint": self.fingerprint, "history": ctx.history, "assignment": ctx.assignment,
        }
        atomic_write(self.path, lambda fh: torch.save(state, fh))

    def restore(self, ctx: RunContext) -> bool:
        """Load the checkpoint into ``ctx``; False when there is none."""
        if not self.exists():
            return False
        assert self.path is not None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(
                f"cannot resume from {self.path}: the recipe differs from the one the checkpoint was written with "
                f"(only {', '.join(RESUMABLE_KEYS)} may change). Compare with {self.path.parent.parent}/recipe.toml, "
                f"or start a new run with another --out.")
        ctx.model.load_state_dict(state["model"])
        if ctx.has_momentum and state["momentum_model"] is not None:
            ctx.momentum_model.load_state_dict(state["momentum_model"])
        ctx.optimizer.load_state_dict(state["optimizer"])
        ctx.scheduler.load_state_dict(state["scheduler"])
        ctx.epoch, ctx.step, ctx.phase = state["epoch"], state["step"], state["phase"]
        set_rng_state(state["rng"])
        ctx.hook.load_checkpoint_state(state=state["components"], ctx=ctx)
        ctx.wall_before = float(state["wall_s"])
        ctx.history = list(state.get("history", []))
        ctx.assignment = dict(state.get("assignment") or {})
        return True
