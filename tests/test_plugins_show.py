"""`clustkit plugins --show NAME`: a plugin's (or a component's) config keys with type, default and
description, as a table and as JSON."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from conftest import clustkit_exe


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([clustkit_exe(), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "250", **(env or {})})


def shown(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = cli("plugins", "--show", name, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fields(component: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["key"]: f for f in component["fields"]}


def test_show_a_plugin_lists_each_component_with_its_keys() -> None:
    data = shown("cc")
    assert data["plugin"] == "cc"
    comps = {(c["kind"], c["name"]): c for c in data["components"]}
    assert {("loss", "instance_contrast"), ("loss", "cluster_contrast"), ("head", "cc_instance"),
            ("views", "cc_weak")} <= set(comps)
    inst = comps[("loss", "instance_contrast")]
    assert inst["doc"] and inst["factory"] == "clustkit.losses.pair:InstanceContrast"
    keys = fields(inst)
    assert "name" not in keys
    assert keys["temperature"]["default"] == 0.5 and keys["temperature"]["type"] == "float, > 0"
    assert keys["temperature"]["description"] == "tau_I (CC: 0.5)" and not keys["temperature"]["required"]
    assert keys["weight"]["default"] == 1.0
    assert keys["head"]["type"] == "head name" and keys["head"]["default"] == "instance"
    assert keys["pairs"]["type"].startswith("list[[view, view]]") and keys["pairs"]["default"] == [["weak1", "weak2"]]


def test_show_as_a_table() -> None:
    result = cli("plugins", "--show", "cc")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "loss instance_contrast" in out and "temperature" in out and "tau_I (CC: 0.5)" in out
    row = next(line for line in out.splitlines() if "temperature" in line and "tau_I" in line)
    assert "0.5" in row and "float" in row


def test_show_a_component_by_name_and_nested_keys() -> None:
    data = shown("sacc_instance")
    assert data["plugin"] is None and [c["plugin"] for c in data["components"]] == ["sacc"]
    assert fields(data["components"][0])["pairs"]["default"] == [["weak1", "weak2"], ["weak2", "strong"]]
    views = next(c for c in shown("sacc")["components"] if c["kind"] == "views")
    keys = fields(views)
    assert keys["weak_names"]["default"] == ["weak1", "weak2"] and keys["strong_names"]["default"] == ["strong"]
    assert keys["affine.degrees"]["default"] == 15.0  # a nested model's keys, dotted as --set writes them
    assert keys["strong_base"]["default"] is None and "None" in keys["strong_base"]["type"]
    assert shown("builtin")["components"]


def test_unknown_name_exits_2_listing_the_plugins() -> None:
    result = cli("plugins", "--show", "sac")
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'sac'" in message and "sacc" in message and "builtin, cc" in message


def test_show_a_loose_plugin_with_object_factories_and_no_components(tmp_path: Path) -> None:
    (tmp_path / "showme.py").write_text('''
from pydantic import Field
from clustkit import LossConfig, hookimpl

class ScaledConfig(LossConfig):
    scale: float = Field(2.0, gt=0, description="multiplies the term")

class Scaled:
    def __init__(self, cfg, ctx):
        self.cfg = cfg

@hookimpl
def register_components(registry):
    registry.add("loss", "scaled", Scaled, ScaledConfig, doc="a test loss")
''')
    (tmp_path / "hooksonly.py").write_text("from clustkit import hookimpl\n\n"
                                           "@hookimpl\ndef on_run_start(ctx):\n    pass\n")
    env = {"CLUSTKIT_PLUGINS_DIR": str(tmp_path)}
    (comp,) = shown("showme", env)["components"]
    assert comp["factory"] == "showme:Scaled" and comp["config"] == "showme:ScaledConfig"
    assert fields(comp)["scale"] == {"key": "scale", "type": "float, > 0", "default": 2.0, "required": False,
                                     "description": "multiplies the term"}
    assert shown("hooksonly", env) == {"name": "hooksonly", "plugin": "hooksonly", "components": []}
    assert "no components" in cli("plugins", "--show", "hooksonly", env=env).stdout
