"""The command line as a user calls it: run outputs, resume after a kill, plugins, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clustkit_exe

KILLER = '''
import os, signal
from clustkit import hookimpl

@hookimpl
def on_epoch_end(ctx, logs):
    at = os.environ.get("KILL_AT_EPOCH")
    if at is not None and ctx.epoch == int(at):
        os.kill(os.getpid(), signal.SIGKILL)
'''


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run([clustkit_exe(), *args], check=False, capture_output=True, text=True, env=full, cwd=cwd,
                          timeout=600)


def test_run_writes_the_run_folder(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = cli("run", str(tiny_recipe), "--out", str(out), "--set", "run.eval_every=1",
                 "--set", 'run.report_embedding="umap"', env={"CLUSTKIT_REPORT": "1"})
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    for key in ("acc", "nmi", "ari", "n_clusters", "wall_s", "method", "dataset"):
        assert key in summary
    assert summary["method"] == "tiny" and summary["dataset"] == "digits" and summary["n_clusters"] == 10
    assert 0.0 <= summary["acc"] <= 1.0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in lines] == [1, 2]
    assert all({"acc", "nmi", "ari", "losses"} <= set(entry) for entry in lines)
    assert lines[-1]["acc"] == summary["acc"]
    with (out / "assignments.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1797 and set(rows[0]) == {"index", "cluster", "label"}
    assert {int(r["cluster"]) for r in rows} <= set(range(10))
    resolved = (out / "recipe.toml").read_text()
    assert "temperature = 0.5" in resolved  # defaults are filled in
    assert (out / "checkpoints" / "last.pt").exists()
    assert not list(out.rglob("*.tmp"))
    # the report: a page whose every figure exists and is a readable, non-empty PNG
    from PIL import Image

    page = (out / "report.html").read_text()
    for name in ("losses", "metrics", "cluster_sizes", "confusion", "clusters", "embedding"):
        png = out / "report" / f"{name}.png"
        assert f'src="report/{name}.png"' in page and png.stat().st_size > 1000
        with Image.open(png) as img:
            assert img.width > 100 and img.height > 100
    assert f">{summary['acc']:.6g}<" in page  # the summary's headline, as the page prints floats
    assert "UMAP embedding" in page and "t-SNE" not in page  # run.report_embedding reached the report


def test_run_refuses_to_overwrite_and_bad_device_is_clean(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"x")
    result = cli("run", str(tiny_recipe), "--out", str(out))
    assert result.returncode == 2 and "--resume" in result.stderr and "Traceback" not in result.stderr


def test_killed_run_resumes_and_matches_an_uninterrupted_run(tiny_recipe: Path, tmp_path: Path) -> None:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "killer.py").write_text(KILLER)
    env = {"CLUSTKIT_PLUGINS_DIR": str(plugin_dir), "KILL_AT_EPOCH": "2"}
    out = tmp_path / "killed"
    args = ["run", str(tiny_recipe), "--out", str(out), "--set", "run.epochs=4"]
    first = cli(*args, env=env)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert (out / "checkpoints" / "last.pt").exists() and not (out / "summary.json").exists()
    resumed = cli(*args, "--resume", env={"CLUSTKIT_PLUGINS_DIR": str(plugin_dir)})
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 4
    straight = cli("run", str(tiny_recipe), "--out", str(tmp_path / "straight"), "--set", "run.epochs=4")
    assert straight.returncode == 0, straight.stderr
    reference = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["acc"] == pytest.approx(reference["acc"], abs=1e-9)
    assert summary["nmi"] == pytest.approx(reference["nmi"], abs=1e-9)


def test_run_threads_sets_the_torch_threads_of_the_run(tiny_recipe: Path, tmp_path: Path, plugin_set,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, so that the caller's thread count (3, whatever the machine) differs from --threads 1."""
    import torch
    from typer.testing import CliRunner

    from clustkit import hookimpl
    from clustkit.cli import app
    from clustkit.plugin_system import manager

    class ThreadsSpy:
        def __init__(self) -> None:
            self.seen: list[int] = []

        @hookimpl
        def on_epoch_end(self, ctx, logs) -> None:
            self.seen.append(torch.get_num_threads())

    spy = ThreadsSpy()
    monkeypatch.setattr(manager, "_DEFAULT", plugin_set(("threads_spy", spy)))
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        result = CliRunner().invoke(app, ["run", str(tiny_recipe), "--out", str(tmp_path / "run"),
                                          "--set", "run.epochs=1", "--threads", "1"])
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert spy.seen == [1]  # the run trained with one thread
    assert after == 3  # and gave the caller its own setting back


def test_resume_with_a_changed_recipe_is_refused(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli("run", str(tiny_recipe), "--out", str(out), "--set", "run.epochs=1").returncode == 0
    result = cli("run", str(tiny_recipe), "--out", str(out), "--resume", "--set", "optimizer.lr=0.1")
    assert result.returncode == 2 and "differs" in result.stderr and "Traceback" not in result.stderr


def test_unlabelled_folder_writes_assignments_without_metrics(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        arr = np.zeros((12, 12, 3), dtype=np.uint8)
        arr[:, : 6 if i % 2 else 12] = rng.integers(100, 255)
        Image.fromarray(arr).save(folder / f"img{i:03d}.png")
    recipe = (REPO / "tests" / "conftest.py").read_text().split('TINY_CC = """')[1].split('"""')[0]
    recipe = recipe.replace('name = "digits"', f'name = "image_folder"\nroot = "{folder}"\nimage_size = 12')
    recipe = recipe.replace("batch_size = 64", "batch_size = 16\nn_clusters = 2")
    path = tmp_path / "folder.toml"
    path.write_text(recipe)
    out = tmp_path / "run"
    result = cli("run", str(path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["acc"] is None and summary["n_clusters"] == 2
    with (out / "assignments.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40 and set(rows[0]) == {"index", "cluster"}


def test_plugins_json_lists_builtins_and_methods() -> None:
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert {"builtin", "cc"} <= set(by_name)
    cc = {(c["kind"], c["name"]) for c in by_name["cc"]["components"]}
    assert ("loss", "instance_contrast") in cc and ("loss", "cluster_contrast") in cc
    assert "register_components" in by_name["cc"]["hooks"]
    assert by_name["cc"]["version"]


def test_disabled_plugin_leaves_the_others_working(tiny_recipe: Path) -> None:
    result = cli("plugins", "--json", env={"CLUSTKIT_DISABLE_PLUGINS": "cc"})
    names = {p["name"] for p in json.loads(result.stdout)["plugins"]}
    assert "cc" not in names and "builtin" in names
    check = cli("check", str(tiny_recipe), env={"CLUSTKIT_DISABLE_PLUGINS": "cc"})
    assert check.returncode == 2 and "'heads.instance.name'" in check.stderr


def test_broken_plugin_warns_and_the_rest_works(tmp_path: Path, tiny_recipe: Path) -> None:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "broken.py").write_text("raise ImportError('missing dependency foo')\n")
    env = {"CLUSTKIT_PLUGINS_DIR": str(plugin_dir)}
    result = cli("check", str(tiny_recipe), env=env)
    assert result.returncode == 0
    assert "broken" in result.stderr and "missing dependency foo" in result.stderr
    listed = json.loads(cli("plugins", "--json", env=env).stdout)
    assert listed["failed"][0]["name"] == "broken"


def test_help_does_not_import_torch() -> None:
    code = ("import sys; from typer.testing import CliRunner; from clustkit.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['plugins']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['plugins', '--show', 'cc']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['plugins', '--show', 'digpro', '--json']); "
            "assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_help_keeps_the_bracketed_section_names(command: str) -> None:
    """Rich reads ``[data]`` as markup and drops it unless escaped; the help must still name it."""
    result = cli(command, "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0 and "Override the run's [data]" in result.stdout


def test_usage_error_exits_2() -> None:
    result = cli("run")
    assert result.returncode == 2
