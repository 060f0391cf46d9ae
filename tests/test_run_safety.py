"""Run folders are never damaged and problems are reported plainly: resuming finished runs,
progress in redirected logs, unreadable images, diverging losses, markup in plugin prints,
unreadable recipes and heads no loss trained."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CC, clustkit_exe
from test_cli import cli

pytestmark = pytest.mark.slow

NO_REPORT = ["--set", "run.report=false"]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def finished(tiny_recipe: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    result = cli("run", str(tiny_recipe), "--out", str(out), *NO_REPORT)
    assert result.returncode == 0, result.stderr
    return out


def test_resuming_a_finished_run_with_the_same_or_fewer_epochs_changes_nothing(finished: Path,
                                                                              tiny_recipe: Path) -> None:
    before = _digest(finished)
    for epochs in ("2", "1"):
        result = cli("run", str(tiny_recipe), "--out", str(finished), "--resume", "--set", f"run.epochs={epochs}",
                     *NO_REPORT)
        assert result.returncode == 0, result.stderr
        assert "nothing to do" in result.stderr
        assert _digest(finished) == before


def test_extending_a_finished_run_keeps_every_earlier_line(finished: Path, tiny_recipe: Path) -> None:
    earlier = _lines(finished)
    assert [e["epoch"] for e in earlier] == [1, 2] and earlier[-1]["final"]
    result = cli("run", str(tiny_recipe), "--out", str(finished), "--resume", "--set", "run.epochs=3", *NO_REPORT)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr and "from epoch 2" in result.stderr
    lines = _lines(finished)
    assert [e["epoch"] for e in lines] == [1, 2, 3]
    for old, new in zip(earlier, lines[:2]):
        assert new["losses"] == old["losses"] and new["losses"]  # losses kept, not dropped
        assert new.get("acc") == old.get("acc")
    assert "final" not in lines[1] and lines[2]["final"]
    assert json.loads((finished / "summary.json").read_text())["epochs"] == 3
    assert "epochs = 3" in (finished / "recipe.toml").read_text()


def test_resume_needs_an_existing_run_folder(tiny_recipe: Path, tmp_path: Path) -> None:
    missing = cli("run", str(tiny_recipe), "--out", str(tmp_path / "nope"), "--resume")
    assert missing.returncode == 2 and "--out" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "nope").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    no_ckpt = cli("run", str(tiny_recipe), "--out", str(empty), "--resume")
    assert no_ckpt.returncode == 2 and "no checkpoint" in no_ckpt.stderr
    no_out = cli("run", str(tiny_recipe), "--resume", cwd=tmp_path)
    assert no_out.returncode == 2 and "--out" in no_out.stderr and not (tmp_path / "runs").exists()


def test_every_epoch_is_logged_while_a_redirected_run_runs(tiny_recipe: Path, tmp_path: Path) -> None:
    """With stderr in a file (nohup, a scheduler), epoch 1's line is in the file before epoch 2 starts."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "peek.py").write_text(
        "import os\nfrom clustkit import hookimpl\n\n@hookimpl\ndef on_epoch_start(ctx):\n"
        "    if ctx.epoch == 1:\n"
        "        text = open(os.environ['PEEK_LOG']).read()\n"
        "        open(os.environ['PEEK_OUT'], 'w').write(text)\n")
    log, seen = tmp_path / "log.txt", tmp_path / "seen.txt"
    env = {**os.environ, "CLUSTKIT_PLUGINS_DIR": str(plugins), "PEEK_LOG": str(log), "PEEK_OUT": str(seen)}
    with log.open("w") as fh:
        code = subprocess.run([clustkit_exe(), "run", str(tiny_recipe), "--out", str(tmp_path / "run"), *NO_REPORT],
                              stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=600).returncode
    assert code == 0, log.read_text()
    line = next(line for line in seen.read_text().splitlines() if line.startswith("epoch 1/2"))
    assert "step 28" in line and "instance=" in line and "lr=" in line and "img/s" in line and "ETA" in line
    entries = _lines(tmp_path / "run")  # and metrics.jsonl has a line per epoch with losses and lr
    assert [e["epoch"] for e in entries] == [1, 2] and all(e["losses"] and e["lr"] > 0 for e in entries)


def _image_folder(root: Path, n: int = 40) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        arr = np.zeros((12, 12, 3), dtype=np.uint8)
        arr[:, : 6 if i % 2 else 12] = rng.integers(100, 255)
        Image.fromarray(arr).save(root / f"img{i:03d}.png")
    return root


def _folder_recipe(folder: Path, tmp_path: Path) -> Path:
    recipe = TINY_CC.replace('name = "digits"', f'name = "image_folder"\nroot = "{folder}"\nimage_size = 12')
    recipe = recipe.replace("batch_size = 64", "batch_size = 16\nn_clusters = 2")
    path = tmp_path / "folder.toml"
    path.write_text(recipe)
    return path


def test_unreadable_images_are_reported_once_and_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    _image_folder(folder)
    (folder / "img900_garbage.png").write_bytes(b"this is not a png")
    good = (folder / "img000.png").read_bytes()
    (folder / "img901_truncated.png").write_bytes(good[: len(good) // 2])
    recipe = _folder_recipe(folder, tmp_path)
    out = tmp_path / "run"
    result = cli("run", str(recipe), "--out", str(out), "--set", "run.max_unreadable=0.1", *NO_REPORT)
    assert result.returncode == 0, result.stderr
    for name in ("img900_garbage.png", "img901_truncated.png"):
        assert sum(name in line for line in result.stderr.splitlines()) == 1  # once, over every epoch
    assert json.loads((out / "summary.json").read_text())["unreadable_images"] == 2
    with (out / "assignments.csv").open() as fh:
        clusters = [int(r["cluster"]) for r in csv.DictReader(fh)]
    assert clusters[40:] == [-1, -1] and all(c >= 0 for c in clusters[:40])
    strict = cli("run", str(recipe), "--out", str(tmp_path / "strict"), "--set", "run.max_unreadable=0.01")
    assert strict.returncode == 2 and "run.max_unreadable" in strict.stderr and "Traceback" not in strict.stderr


def test_a_diverging_loss_stops_the_run_and_the_last_good_checkpoint_resumes(tiny_recipe: Path,
                                                                            tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "poison.py").write_text(
        "import torch\nfrom clustkit import hookimpl\n\n@hookimpl\ndef on_epoch_start(ctx):\n"
        "    if ctx.epoch == 1:\n"
        "        for p in ctx.model.parameters():\n"
        "            p.data.fill_(float('nan'))\n")
    out = tmp_path / "run"
    args = ["run", str(tiny_recipe), "--out", str(out), *NO_REPORT]
    diverged = cli(*args, env={"CLUSTKIT_PLUGINS_DIR": str(plugins)})
    assert diverged.returncode == 3, diverged.stderr
    assert "non-finite" in diverged.stderr and "Traceback" not in diverged.stderr
    import torch

    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_plugin_prints_are_not_rich_markup(tiny_recipe: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "talk.py").write_text(
        "from clustkit import hookimpl\n\n@hookimpl\ndef on_run_start(ctx):\n"
        "    ctx.print('[scan] epoch 5 [/data/digits] [bold]')\n")
    result = cli("run", str(tiny_recipe), "--out", str(tmp_path / "run"), "--set", "run.epochs=1", *NO_REPORT,
                 env={"CLUSTKIT_PLUGINS_DIR": str(plugins)})
    assert result.returncode == 0, result.stderr
    assert "[scan] epoch 5 [/data/digits] [bold]" in result.stderr


def test_unreadable_recipes_exit_2_with_one_paragraph(tmp_path: Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[run]\nname = "caf\xe9"\n'.encode("latin-1"))
    for path in (binary, latin, tmp_path):
        result = cli("check", str(path))
        assert result.returncode == 2, (path, result.stderr)
        assert "Traceback" not in result.stderr and str(path) in result.stderr.replace("\n", "")


def test_an_untrained_evaluation_head_is_warned_about_in_the_run_and_the_bench(tiny_recipe: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "bench"
    bench = cli("bench", str(tiny_recipe), "--grid", "losses.cluster.weight=1,0", "--seeds", "0",
                "--set", "run.epochs=1", "--out", str(out))
    assert bench.returncode == 0, bench.stderr
    trained, ablated = (json.loads((out / f"tiny__losses.cluster.weight={w}" / "seed0" / "summary.json").read_text())
                        for w in (1, 0))
    assert "warnings" not in trained
    assert any("no loss trained" in w for w in ablated["warnings"])
    assert "no loss trained" in " ".join((bench.stdout + bench.stderr).split())
    assert "no loss trained" in (out / "results.md").read_text()


def test_tensorboard_gets_every_epochs_scalars(tiny_recipe: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = cli("run", str(tiny_recipe), "--out", str(out), "--set", "run.eval_every=1", *NO_REPORT,
                 env={"CLUSTKIT_TENSORBOARD": "1"})
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/instance", "loss/cluster", "loss/loss", "train/lr", "metrics/acc", "metrics/nmi"} <= tags
    assert [e.step for e in events.Scalars("loss/instance")] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert events.Scalars("metrics/acc")[-1].value == pytest.approx(summary["acc"], abs=1e-6)


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:4000])  # a checkpoint cut short (a full disk, an interrupted copy)


def test_resume_from_a_damaged_checkpoint_says_so_and_that_no_earlier_one_is_kept(tiny_recipe: Path,
                                                                                  tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli("run", str(tiny_recipe), "--out", str(out), "--set", "run.epochs=1", *NO_REPORT).returncode == 0
    _cut(out / "checkpoints" / "last.pt")
    before = _digest(out)
    result = cli("run", str(tiny_recipe), "--out", str(out), "--resume", *NO_REPORT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    text = " ".join(result.stderr.split())
    assert f"{out / 'checkpoints' / 'last.pt'} is damaged" in text and "No earlier checkpoint is kept" in text
    assert _digest(out) == before  # nothing written, nothing removed


def test_with_kept_checkpoints_a_damaged_one_names_the_intact_one_to_continue_from(tiny_recipe: Path,
                                                                                   tmp_path: Path) -> None:
    out = tmp_path / "run"
    keep = ["--set", "run.keep_checkpoints=2", *NO_REPORT]
    assert cli("run", str(tiny_recipe), "--out", str(out), "--set", "run.epochs=3", *keep).returncode == 0
    folder = out / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["epoch-0002.pt", "epoch-0003.pt", "last.pt"]
    assert (folder / "epoch-0003.pt").read_bytes() == (folder / "last.pt").read_bytes()
    # extend the run to 5 epochs, and lose the newest checkpoint on the way (last.pt and its twin)
    assert cli("run", str(tiny_recipe), "--out", str(out), "--resume", "--set", "run.epochs=4", *keep).returncode == 0
    _cut(folder / "last.pt")  # a hard link: epoch-0004.pt is cut too
    result = cli("run", str(tiny_recipe), "--out", str(out), "--resume", "--set", "run.epochs=5", *keep)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    text = " ".join(result.stderr.split())
    assert f"An earlier checkpoint is intact: {folder / 'epoch-0003.pt'}" in text
    # doing what the message says continues the run from epoch 3
    os.replace(folder / "last.pt", folder / "last.pt.damaged")
    (folder / "last.pt").write_bytes((folder / "epoch-0003.pt").read_bytes())
    (folder / "epoch-0004.pt").unlink()
    resumed = cli("run", str(tiny_recipe), "--out", str(out), "--resume", "--set", "run.epochs=5", *keep)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "from epoch 3" in resumed.stderr
    assert json.loads((out / "summary.json").read_text())["epochs"] == 5
