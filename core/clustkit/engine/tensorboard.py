"""Per-epoch scalars for TensorBoard, beside metrics.jsonl: ``run.tensorboard = true`` (or
``CLUSTKIT_TENSORBOARD=1``) writes ``<run folder>/tensorboard/``; view it with
``tensorboard --logdir runs/``. Needs ``pip install 'clustkit[tensorboard]'``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clustkit.cluster.metrics import METRIC_KEYS  # shown under "metrics/" (the losses go under "loss/")
from clustkit.errors import UserError


class TensorBoardLog:
    """Writes each epoch's line of metrics.jsonl as scalars (rank 0 with a run folder only)."""

    def __init__(self, folder: Path | None, enabled: bool):
        self.writer: Any = None
        if not enabled or folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("run.tensorboard (or CLUSTKIT_TENSORBOARD) needs the tensorboard package: "
                            "pip install 'clustkit[tensorboard]', or set run.tensorboard = false.") from None
        self.writer = SummaryWriter(str(folder / "tensorboard"))

    def log(self, entry: dict[str, Any]) -> None:
        if self.writer is None:
            return
        epoch = int(entry["epoch"])
        for name, value in entry.get("losses", {}).items():
            self.writer.add_scalar(f"loss/{name}", value, epoch)
        for name, value in entry.get("values", {}).items():  # what components logged besides their losses
            self.writer.add_scalar(f"values/{name}", value, epoch)
        for key in ("lr", "images_per_s"):
            if key in entry:
                self.writer.add_scalar(f"train/{key}", entry[key], epoch)
        for key in METRIC_KEYS:
            if entry.get(key) is not None:
                self.writer.add_scalar(f"metrics/{key}", entry[key], epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
