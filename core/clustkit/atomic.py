"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every file clustkit writes into a run or bench folder (recipes, metrics, summaries, checkpoints,
decoded-dataset caches) goes through :func:`atomic_write`: write a temporary file in the same
folder, flush and fsync it, then rename it over the target. A crash or Ctrl-C mid-write leaves
the previous version intact. The file gets the usual permissions (0666 minus the umask), not the
0600 a temporary file is created with, so a shared group can read a run folder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Content = bytes | str | Callable[[BinaryIO], None]


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike[str], content: Content) -> None:
    """Write ``content`` to ``path`` atomically: bytes, text (UTF-8), or a function that writes
    into the open binary file (e.g. ``lambda fh: torch.save(state, fh)``, without a copy in memory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content.encode("utf-8") if isinstance(content, str) else content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
