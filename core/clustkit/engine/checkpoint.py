"""Checkpoints: everything a run needs to continue where it stopped, written atomically.

A checkpoint holds the counters, the online and momentum networks, optimizer and schedule,
every RNG state, every component's ``checkpoint_state`` (groups, banks, pseudo-labels, a
second stage's progress), the metrics history and the wall time so far. Resuming refuses a
recipe that differs from the checkpoint's, except for the keys that only extend or re-pace a run.
``run.keep_checkpoints`` > 1 also keeps that many earlier checkpoints beside ``last.pt``
(``epoch-0040.pt``, ...). A file that cannot be read is an input error naming it, never a traceback.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clustkit import __version__, dist
from clustkit.atomic import atomic_write
from clustkit.errors import UserError

if TYPE_CHECKING:
    from clustkit.engine.state import RunState

#: Recipe keys a resumed run may change.
RESUMABLE_KEYS = ("run.epochs", "run.eval_every", "run.checkpoint_every", "run.report",
                  "run.tensorboard", "run.select", "run.num_workers", "data.in_memory")
#: What every checkpoint holds (a file without them is not one).
_REQUIRED = ("epoch", "step", "phase", "model", "components")


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


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state in ``path``; a missing, truncated or foreign file is a :class:`UserError` naming it."""
    if not path.is_file():
        raise UserError(f"{path} does not exist: the run folder holds no checkpoint.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated zip, a text file, a pickle of something else: all the same to a user
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{path} is damaged and cannot be read as a checkpoint ({type(exc).__name__}: "
                        f"{reason[:300]}).") from None
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        raise UserError(f"{path} is not a clustkit checkpoint (it lacks "
                        f"{', '.join(k for k in _REQUIRED if not isinstance(state, dict) or k not in state)}).")
    return state


class Checkpointer:
    """Saves and restores a run's state at ``path`` (nothing to do when the run has no folder)."""

    def __init__(self, path: Path | None, fingerprint: str, keep: int = 1):
        self.path = path
        self.fingerprint = fingerprint
        self.keep = keep

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()

    def earlier(self) -> list[Path]:
        """The earlier checkpoints kept beside ``last.pt`` (``run.keep_checkpoints``), newest first."""
        if self.path is None:
            return []
        return sorted(self.path.parent.glob("epoch-*.pt"), reverse=True)

    def save(self, run: RunState) -> None:
        """Write the checkpoint (rank 0 only; the other ranks hold the same state)."""
        if self.path is None or not dist.is_main():
            return
        ctx = run.ctx
        components: dict[str, Any] = {}
        for part in run.hooks.hook.checkpoint_state(ctx=ctx):
            components.update(part or {})
        state = {
            "epoch": ctx.epoch, "step": ctx.step, "phase": run.phase,
            "model": ctx.model.state_dict(),
            "momentum_model": ctx.momentum_model.state_dict() if ctx.has_momentum else None,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "rng": rng_state(), "components": components, "wall_s": run.wall_s(),
            "fingerprint": self.fingerprint, "history": run.history, "assignment": run.assignment,
            "clustkit": __version__,  # which release wrote it (a 0.1 run folder's recipe.toml needs reading apart)
        }
        atomic_write(self.path, lambda fh: torch.save(state, fh))
        if self.keep > 1:
            self._keep_copy(ctx.epoch)

    def _keep_copy(self, epoch: int) -> None:
        """Hard-link ``last.pt`` as ``epoch-NNNN.pt`` (no second write; a later ``last.pt`` is a new file,
        so the link keeps this one) and drop the oldest beyond ``keep``: ``last.pt`` and ``keep - 1``
        earlier checkpoints remain."""
        assert self.path is not None
        target = self.path.parent / f"epoch-{epoch:04d}.pt"
        tmp = target.with_name(f".{target.name}.link.tmp")
        tmp.unlink(missing_ok=True)
        os.link(self.path, tmp)
        os.replace(tmp, target)
        for old in self.earlier()[self.keep:]:
            old.unlink(missing_ok=True)

    def read(self) -> dict[str, Any]:
        """The checkpoint's state; a damaged file is an error that says whether an earlier one is kept."""
        assert self.path is not None
        try:
            return read_checkpoint(self.path)
        except UserError as exc:
            good = next((p for p in self.earlier() if _readable(p)), None)
            if good is not None:
                hint = (f" An earlier checkpoint is intact: {good}. To continue from it, move the damaged file aside "
                        f"(mv {self.path} {self.path}.damaged), copy {good.name} to {self.path.name}, then --resume.")
            else:
                hint = (" No earlier checkpoint is kept (run.keep_checkpoints keeps more), so the run cannot continue: "
                        "start it again into another --out.")
            raise UserError(str(exc) + hint) from None

    def restore(self, run: RunState) -> bool:
        """Load the checkpoint into ``run`` to continue it; False when there is none."""
        if not self.exists():
            return False
        assert self.path is not None
        state = self.read()
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(
                f"cannot resume from {self.path}: the recipe differs from the one the checkpoint was written with "
                f"(only {', '.join(RESUMABLE_KEYS)} may change). Compare with {self.path.parent.parent}/recipe.toml, "
                f"or start a new run with another --out.")
        restore_networks(run, state, self.path)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.phase = state["phase"]
        set_rng_state(state["rng"])
        run.hooks.hook.load_checkpoint_state(state=state["components"], ctx=run.ctx)
        run.wall_before = float(state["wall_s"])
        run.history = list(state.get("history", []))
        run.assignment = dict(state.get("assignment") or {})
        return True


def restore_trained(path: Path, run: RunState, components: bool, overrides: str = "") -> dict[str, Any]:
    """A finished run's checkpoint, for use (``clustkit.load_run``): its networks and counters, its
    assignment rule, and with ``components`` its phase and component state (a finished stage's
    result). No optimizer, RNG or history: nothing trains. Returns the state."""
    state = Checkpointer(path, "").read()
    restore_networks(run, state, path, overrides)
    if components:
        run.phase = state["phase"]
        run.hooks.hook.load_checkpoint_state(state=state["components"], ctx=run.ctx)
    run.assignment = dict(state.get("assignment") or {})
    return state


def restore_networks(run: RunState, state: dict[str, Any], path: Path, overrides: str = "") -> None:
    """The networks and the counters of ``state``; a network of another shape is an error naming
    ``path`` (``overrides``: the ``--set`` options that built this one, for the message)."""
    ctx = run.ctx
    try:
        ctx.model.load_state_dict(state["model"])
        if ctx.has_momentum and state.get("momentum_model") is not None:
            ctx.momentum_model.load_state_dict(state["momentum_model"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 400 else detail[:400] + " …"
        raise UserError(
            f"{path} does not fit the network that {path.parent.parent / 'recipe.toml'} builds"
            f"{' with --set ' + overrides if overrides else ''}: {detail} An override may change the data or the "
            "evaluation ([data], [evaluation], run.select), not the network "
            "([backbone], [heads.*], [refine.*]).") from None
    ctx.epoch, ctx.step = int(state["epoch"]), int(state["step"])


def _readable(path: Path) -> bool:
    try:
        read_checkpoint(path)
    except UserError:
        return False
    return True
