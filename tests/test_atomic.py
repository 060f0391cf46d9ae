"""The one atomic writer: all or nothing, and the usual permissions rather than a temp file's 0600."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clustkit.atomic import atomic_write


def test_text_bytes_and_writer_functions_land_whole(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a" / "t.txt", "héllo")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "c.bin", lambda fh: fh.write(b"xyz"))
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01" and (tmp_path / "c.bin").read_bytes() == b"xyz"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic_write(target, "old")

    def broken(fh) -> None:
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_files_get_the_umask_permissions_not_0600(tmp_path: Path) -> None:
    """A shared group must be able to read a run folder: 0644 under the usual umask 022."""
    code = f"from clustkit.atomic import atomic_write; atomic_write({str(tmp_path / 'm.txt')!r}, 'x')"
    subprocess.run([sys.executable, "-c", code], check=True, preexec_fn=lambda: os.umask(0o022))
    assert (tmp_path / "m.txt").stat().st_mode & 0o777 == 0o644
