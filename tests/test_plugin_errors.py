"""A plugin that fails, as a user meets it on the command line: one paragraph naming the plugin,
the component, its recipe key and the plugin's file and line; exit code 4; the traceback in the
run folder's error.log; the run folder otherwise as the last good checkpoint left it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import TINY_CC
from test_cli import cli

FAULTY = '''
from clustkit import LossConfig, hookimpl


class BoomConfig(LossConfig):
    at_epoch: int = 1


class Boom:
    def __init__(self, cfg, ctx):
        self.cfg = cfg

    def compute_loss(self, out, ctx):
        if ctx.epoch == self.cfg.at_epoch:
            raise ZeroDivisionError("the plugin's own bug")
        return out.head("weak1", "instance").pow(2).mean()


class Exploding:
    def __init__(self, cfg, ctx):
        raise RuntimeError("cannot build")


@hookimpl
def register_components(registry):
    registry.add("loss", "boom", Boom, BoomConfig)
    registry.add("loss", "missing", "faulty_missing_module:Nothing", LossConfig)
    registry.add("loss", "exploding", Exploding, LossConfig)
'''


@pytest.fixture
def faulty(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "faulty.py").write_text(FAULTY)
    return folder / "faulty.py", {"CLUSTKIT_PLUGINS_DIR": str(folder)}


def _recipe(tmp_path: Path, loss: str) -> Path:
    path = tmp_path / f"{loss}.toml"
    path.write_text(TINY_CC + f'\n[losses.extra]\nname = "{loss}"\n')
    return path


def _one_paragraph(stderr: str) -> str:
    assert "Traceback" not in stderr
    text = stderr.strip()
    assert text and "\n\n" not in text
    return " ".join(text.split())


def test_an_exception_in_a_loss_is_one_paragraph_naming_the_plugin_key_and_line(tmp_path: Path, faulty) -> None:
    _plugin_file, env = faulty
    out = tmp_path / "run"
    result = cli("run", str(_recipe(tmp_path, "boom")), "--out", str(out), env=env)
    assert result.returncode == 4, result.stderr
    text = _one_paragraph(result.stderr.split("error:", 1)[1])
    line = FAULTY.splitlines().index('            raise ZeroDivisionError("the plugin\'s own bug")') + 1
    assert "plugin 'faulty' failed" in text and "the loss 'boom' of [losses.extra]" in text
    assert "ZeroDivisionError: the plugin's own bug" in text and f"faulty.py:{line} (in compute_loss)" in text
    assert "in epoch 2" in text  # epoch index 1 is the second epoch
    # what the run did before is kept, and said so: the traceback, the checkpoint of epoch 1, its metrics
    assert f"{out / 'error.log'}" in text and "--resume" in text
    log = (out / "error.log").read_text()
    assert "Traceback" in log and "ZeroDivisionError" in log
    assert (out / "checkpoints" / "last.pt").exists()
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    # once the plugin is fixed (here: the recipe moves the bug away), --resume continues
    fixed = cli("run", str(_recipe(tmp_path, "boom")), "--out", str(out), "--resume", "--set",
                "losses.extra.at_epoch=99", env=env)
    assert fixed.returncode == 2 and "differs" in fixed.stderr  # the recipe changed: refused, as any resume
    again = cli("run", str(_recipe(tmp_path, "boom")), "--out", str(out), "--resume", env=env)
    assert again.returncode == 4 and "ZeroDivisionError" in again.stderr  # the same bug, the same paragraph


def test_a_factory_that_does_not_import_fails_check_and_run_naming_where_it_was_registered(tmp_path: Path,
                                                                                          faulty) -> None:
    _plugin_file, env = faulty
    recipe = _recipe(tmp_path, "missing")
    line = next(i for i, text in enumerate(FAULTY.splitlines(), 1) if '"missing"' in text)
    for args in (["check", str(recipe)], ["run", str(recipe), "--out", str(tmp_path / "run")]):
        result = cli(*args, env=env)
        assert result.returncode == 4, (args, result.stderr)
        text = _one_paragraph(result.stderr)
        assert "'faulty_missing_module:Nothing'" in text and "loss 'missing'" in text and "plugin 'faulty'" in text
        assert f"faulty.py:{line}" in text and "No module named 'faulty_missing_module'" in text
    shown = cli("plugins", "--show", "missing", "--json", env=env)
    assert shown.returncode == 0
    (entry,) = json.loads(shown.stdout)["components"]
    assert "names no module 'faulty_missing_module'" in entry["error"] and f"faulty.py:{line}" in entry["error"]


def test_a_factory_that_raises_names_the_component_and_its_line(tmp_path: Path, faulty) -> None:
    _, env = faulty
    result = cli("run", str(_recipe(tmp_path, "exploding")), "--out", str(tmp_path / "run"), env=env)
    assert result.returncode == 4, result.stderr
    text = _one_paragraph(result.stderr)
    line = FAULTY.splitlines().index('        raise RuntimeError("cannot build")') + 1
    assert "the factory of the loss 'exploding' for [losses.extra]" in text
    assert f"faulty.py:{line} (in __init__)" in text and "RuntimeError: cannot build" in text


def test_a_failing_lifecycle_hook_of_a_plugin_module_names_the_plugin(tmp_path: Path, tiny_recipe: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "observer.py").write_text(textwrap.dedent('''
        from clustkit import hookimpl

        @hookimpl
        def on_epoch_end(ctx, logs):
            raise KeyError("no such metric")
        '''))
    result = cli("run", str(tiny_recipe), "--out", str(tmp_path / "run"), env={"CLUSTKIT_PLUGINS_DIR": str(folder)})
    assert result.returncode == 4, result.stderr
    text = _one_paragraph(result.stderr)
    assert "plugin 'observer' failed: a lifecycle hook raised KeyError" in text and "observer.py:6" in text
