"""Progress of the epochs: a rich bar on a terminal; one plain line per epoch otherwise, so logs
written by ``> log 2>&1``, nohup or a cluster scheduler show a run while it runs."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def epoch_line(entry: dict[str, Any], epochs: int, eta_s: float | None) -> str:
    """``epoch 3/20 step 150 loss=1.234 ... lr=3e-04 812 img/s ETA 0:01:20`` (metrics when evaluated)."""
    parts = [f"epoch {entry['epoch']}/{epochs}", f"step {entry['step']}"]
    parts += [f"{k}={v:.4f}" for k, v in entry.get("losses", {}).items()]
    parts += [f"{k}={entry[k]:.4f}" for k in ("acc", "nmi", "ari") if k in entry]
    if "lr" in entry:
        parts.append(f"lr={entry['lr']:.3g}")
    if "images_per_s" in entry:
        parts.append(f"{entry['images_per_s']:.0f} img/s")
    if eta_s is not None:
        parts.append(f"ETA {_duration(eta_s)}")
    return " ".join(parts)


class EpochProgress:
    """``with EpochProgress(console, name, done, total) as p: ... p.epoch_done(entry)``."""

    def __init__(self, console: Console, name: str, done: int, total: int, enabled: bool = True):
        self.console = console
        self.name = name
        self.first = done
        self.total = total
        self.enabled = enabled
        self.bar: Any = None
        self.started = time.perf_counter()

    def __enter__(self) -> EpochProgress:
        if self.enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TimeElapsedColumn())
            self.bar = Progress(*columns, console=self.console, transient=False)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.name, total=self.total, completed=self.first, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def epoch_done(self, entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        done = entry["epoch"] - self.first
        eta = (time.perf_counter() - self.started) / done * (self.total - entry["epoch"]) if done > 0 else None
        if self.bar is not None:
            info = " ".join(f"{k}={v:.3f}" for k, v in entry.get("losses", {}).items())
            self.bar.update(self.task, completed=entry["epoch"], info=info)
            if any(k in entry for k in ("acc", "nmi")):
                self.bar.console.print(epoch_line(entry, self.total, eta), markup=False, highlight=False)
        else:
            self.console.print(epoch_line(entry, self.total, eta), markup=False, highlight=False, soft_wrap=True)
