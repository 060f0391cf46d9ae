"""Loose plugin files (`CLUSTKIT_PLUGINS_DIR`): a file is imported as the module named after it, so
`"stem:attr"` factory strings work; factories may also be objects; a name clash is a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import TINY_CC, clustkit_exe

MYLOOSE = '''
import torch.nn.functional as F
from pydantic import Field
from clustkit import LossConfig, HeadRef, hookimpl

class CosAlignConfig(LossConfig):
    head: HeadRef = "instance"
    scale: float = Field(1.0, gt=0)

class CosAlign:
    def __init__(self, cfg, ctx):
        self.cfg = cfg

    @hookimpl
    def compute_loss(self, out, ctx):
        a, b = out.head("weak1", self.cfg.head), out.head("weak2", self.cfg.head)
        return self.cfg.scale * (1 - F.cosine_similarity(a, b)).mean()

@hookimpl
def register_components(registry):
    registry.add("loss", "cos_align", "myloose:CosAlign", "myloose:CosAlignConfig", doc="by module:attr strings")
    registry.add("loss", "cos_align_obj", CosAlign, CosAlignConfig, doc="by the objects themselves")
'''


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([clustkit_exe(), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


@pytest.mark.slow
def test_a_loose_file_runs_with_string_and_object_factories(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "myloose.py").write_text(MYLOOSE)
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_CC + '\n[losses.align]\nname = "cos_align"\n\n[losses.align_obj]\nname = "cos_align_obj"\n'
                      'scale = 0.5\n')
    out = tmp_path / "run"
    result = cli("run", str(recipe), "--out", str(out), "--set", "run.epochs=1",
                 env={"CLUSTKIT_PLUGINS_DIR": str(plugins)})
    assert result.returncode == 0, result.stderr
    assert "failed to load" not in result.stderr
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    losses = json.loads(line)["losses"]
    assert {"align", "align_obj", "instance", "cluster"} <= set(losses)
    assert 0 <= losses["align_obj"] <= 1.0  # scale 0.5 of 1 - cos in [0, 2]


def test_a_loose_file_named_like_another_module_is_refused(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for stem in ("json", "clustkit_cc", "colorsys"):  # imported already (stdlib, a method plugin), importable
        (plugins / f"{stem}.py").write_text("raise SystemExit('must never run')\n")
    (plugins / "fine_one.py").write_text(MYLOOSE.replace("myloose:", "fine_one:").replace('"cos_align', '"fine_align'))
    result = cli("plugins", "--json", env={"CLUSTKIT_PLUGINS_DIR": str(plugins)})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    failed = {f["name"]: f["error"] for f in data["failed"]}
    assert set(failed) == {"json", "clustkit_cc", "colorsys"}
    for stem, error in failed.items():
        assert f"module {stem!r}" in error and "rename the plugin file" in error, error
    loaded = {p["name"]: p for p in data["plugins"]}
    assert {"cc", "fine_one"} <= set(loaded)  # the real clustkit_cc is untouched
    assert {c["name"] for c in loaded["fine_one"]["components"]} == {"fine_align", "fine_align_obj"}


def test_loading_a_directory_twice_imports_each_file_once(tmp_path: Path, monkeypatch, plugin_set) -> None:
    """In one process every plugin set gets the same module; a failed file leaves no module behind;
    the same stem from another directory is a clash, not a silent replacement."""
    from clustkit.plugin_system.manager import PluginLoadWarning

    stem = f"loose_{uuid.uuid4().hex[:8]}"
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    source = MYLOOSE.replace("myloose:", f"{stem}:").replace("import torch.nn.functional as F\n", "")
    (first / f"{stem}.py").write_text(source)
    (second / f"{stem}.py").write_text("")
    monkeypatch.setenv("CLUSTKIT_PLUGINS_DIR", str(first))
    try:
        one, two = plugin_set(), plugin_set()
        assert one.pm.get_plugin(stem) is two.pm.get_plugin(stem) is sys.modules[stem]
        spec = two.registry.get("loss", "cos_align")
        assert spec is not None and spec.config_model() is sys.modules[stem].CosAlignConfig
        assert spec.build(spec.config_model()(name="cos_align"), None).cfg.scale == 1.0  # "stem:CosAlign" resolves
        monkeypatch.setenv("CLUSTKIT_PLUGINS_DIR", str(second))
        with pytest.warns(PluginLoadWarning, match="already imported"):
            clash = plugin_set()
        assert "rename the plugin file" in clash.failed[stem]
    finally:
        sys.modules.pop(stem, None)
    broken = tmp_path / "c"
    broken.mkdir()
    (broken / f"{stem}.py").write_text("raise ImportError('missing dependency foo')\n")
    monkeypatch.setenv("CLUSTKIT_PLUGINS_DIR", str(broken))
    with pytest.warns(PluginLoadWarning, match="missing dependency foo"):
        plugin_set()
    assert stem not in sys.modules


def test_a_loose_file_is_disabled_like_an_installed_plugin_and_gives_its_version(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "myloose.py").write_text('__version__ = "1.2"\n' + MYLOOSE)
    listed = json.loads(cli("plugins", "--json", env={"CLUSTKIT_PLUGINS_DIR": str(plugins)}).stdout)
    assert {p["name"]: p["version"] for p in listed["plugins"]}["myloose"] == "1.2"
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_CC.replace('name = "tiny"', 'name = "tiny"\nplugins = ["myloose"]'))
    blocked = cli("check", str(recipe), env={"CLUSTKIT_PLUGINS_DIR": str(plugins),
                                             "CLUSTKIT_DISABLE_PLUGINS": "myloose"})
    assert blocked.returncode == 2 and "needs plugin 'myloose'" in blocked.stderr
    listed = json.loads(cli("plugins", "--json", env={"CLUSTKIT_PLUGINS_DIR": str(plugins),
                                                     "CLUSTKIT_DISABLE_PLUGINS": "myloose"}).stdout)
    assert "myloose" not in {p["name"] for p in listed["plugins"]}
