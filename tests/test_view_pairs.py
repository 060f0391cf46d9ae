"""`clustkit check` validates view pairs: every `Pair` field of every component (built-in or a
third-party plugin's) against the names the `[views]` config declares (docs/api.md, "Views
declare their names"); a generator that declares none is left to the build-time check."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from clustkit import ComponentConfig, LossConfig, Pair, RecipeError, hookimpl
from conftest import REPO, TINY_CC, clustkit_exe

CC = (REPO / "recipes" / "cc.toml").read_text()

LOOSE_LOSS = '''
from pydantic import Field
from clustkit import LossConfig, Pair, hookimpl

class AnchorsConfig(LossConfig):
    anchors: list[Pair] = Field(default_factory=lambda: [("weak1", "weak2")])
    extra: Pair | None = None

class Anchors:
    def __init__(self, cfg, ctx):
        self.cfg = cfg

@hookimpl
def register_components(registry):
    registry.add("loss", "anchors", Anchors, AnchorsConfig, doc="a loss naming view pairs")
'''


def check(path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([clustkit_exe(), "check", str(path), *extra], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def one_paragraph(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())


def test_check_rejects_a_builtin_loss_pair_naming_an_unknown_view(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(CC.replace('name = "instance_contrast"\n',
                               'name = "instance_contrast"\npairs = [["weak1", "nope"]]\n'))
    message = one_paragraph(check(path))
    assert "typo.toml" in message and "'losses.instance.pairs[0]'" in message
    assert "'nope'" in message and "'tensor_affine'" in message and "Allowed values: weak1, weak2." in message


def test_check_follows_the_declared_names_of_each_generator() -> None:
    renamed = one_paragraph(check(REPO / "recipes" / "cc.toml", "--set", 'views.names=["a", "b"]'))
    assert "'losses.instance.pairs[0]'" in renamed and "Allowed values: a, b." in renamed
    accepted = check(REPO / "recipes" / "cc.toml", "--set", 'views.names=["a", "b"]', "--set",
                     'losses.instance.pairs=[["a", "b"]]', "--set", 'losses.cluster.pairs=[["b", "a"]]')
    assert accepted.returncode == 0, accepted.stderr
    sacc = one_paragraph(check(REPO / "recipes" / "sacc.toml", "--set", 'views.strong_names=["s"]'))
    assert "'losses.instance.pairs[1]'" in sacc and "'strong'" in sacc and "Allowed values: weak1, weak2, s." in sacc
    digpro = one_paragraph(check(REPO / "recipes" / "digpro.toml", "--set", 'losses.byol.views=["weak1", "weak3"]'))
    assert "'losses.byol.views'" in digpro and "'weak3'" in digpro  # a single Pair field


def test_check_rejects_a_third_party_pair_field(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "anchors_plugin.py").write_text(LOOSE_LOSS)
    env = {"CLUSTKIT_PLUGINS_DIR": str(plugins)}
    path = tmp_path / "third.toml"
    path.write_text(CC + '\n[losses.anchor]\nname = "anchors"\nanchors = [["weak1", "weak2"], ["weak2", "wek1"]]\n')
    message = one_paragraph(check(path, env=env))
    assert ("'losses.anchor.anchors[1]'" in message and "'wek1'" in message
            and "Allowed values: weak1, weak2." in message)
    optional = one_paragraph(check(path, "--set", 'losses.anchor.anchors=[]',
                                   "--set", 'losses.anchor.extra=["x", "weak1"]', env=env))
    assert "'losses.anchor.extra'" in optional and "'x'" in optional
    fine = check(path, "--set", 'losses.anchor.anchors=[["weak2", "weak1"]]', env=env)
    assert fine.returncode == 0, fine.stderr


class _Plugin:
    """A third-party plugin registered in-process: a loss with pairs and a generator declaring nothing."""

    class PairsConfig(LossConfig):
        pairs: list[Pair] = Field(default_factory=lambda: [("weak1", "weak2")])

    class OpaqueViewsConfig(ComponentConfig):
        count: int = 2

    @hookimpl
    def register_components(self, registry: Any) -> None:
        registry.add("loss", "pairs_only", object, self.PairsConfig)
        registry.add("views", "opaque", object, self.OpaqueViewsConfig)


def test_load_checks_third_party_pairs_and_skips_undeclared_generators(tmp_path: Path, plugin_set) -> None:
    from clustkit.recipe import load

    ps = plugin_set(("thirdparty", _Plugin()))
    path = tmp_path / "r.toml"
    path.write_text(TINY_CC + '\n[losses.mine]\nname = "pairs_only"\npairs = [["weak1", "strong"]]\n')
    with pytest.raises(RecipeError) as err:
        load(path, ps.registry)
    assert err.value.key == "losses.mine.pairs[0]" and err.value.allowed == ["weak1", "weak2"]
    assert "'strong'" in err.value.message
    # A generator whose config declares no names: nothing to check against at load time.
    loaded = load(path, ps.registry, ['views={name="opaque"}'])
    assert loaded.losses["mine"].pairs == [("weak1", "strong")]


@pytest.mark.parametrize("views", [
    '{name="tensor_affine", names=["a", "b", "c"]}',
    '{name="cc_weak", names=["a", "b", "c"]}',
    '{name="digpro_simclr", names=["a", "b", "c"]}',
    '{name="sacc", weak="tensor_affine", weak_names=["a", "b"], strong_names=["c"]}',
    '{name="sacc", weak_names=["a", "b"], strong_names=["c"]}',
], ids=["tensor_affine", "cc_weak", "digpro_simclr", "sacc-affine", "sacc"])
def test_declared_names_are_the_built_generators_names(views: str, tmp_path: Path, plugin_set) -> None:
    """The protocol's promise: a config's view_names() equals the built generator's view_names."""
    from clustkit.engine.run import Run
    from clustkit.plugin_system.registry import declared_view_names
    from clustkit.recipe import load

    ps = plugin_set()
    path = tmp_path / "r.toml"
    path.write_text(TINY_CC)
    recipe = load(path, ps.registry, [f"views={views}", 'losses.instance.pairs=[["a", "c"]]',
                                      'losses.cluster.pairs=[["b", "c"]]'])
    run = Run(recipe, ps, None).build()
    assert declared_view_names(recipe.views) == ("a", "b", "c")
    assert list(run.components.by_key["views"].view_names) == ["a", "b", "c"]


def test_a_view_name_field_with_a_typo_fails_check(tmp_path: Path) -> None:
    """``View`` fields (the example plugin's ``view_a``, selflabel's ``view``, IcicleGCN's ``views``) are
    checked against the declared views when the recipe loads, as ``Pair`` fields are."""
    from test_cli import cli

    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY_CC + '\n[refine.selflabel]\nname = "selflabel"\nview = "waek2"\n')
    result = cli("check", str(recipe))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    text = " ".join(result.stderr.split())
    assert "key 'refine.selflabel.view'" in text and "'waek2'" in text and "Allowed values: weak1, weak2" in text
    recipe.write_text(TINY_CC + '\n[refine.selflabel]\nname = "selflabel"\nview = "weak2"\n')
    assert cli("check", str(recipe)).returncode == 0


def test_a_list_of_view_names_is_checked_item_by_item(tmp_path: Path, plugin_set) -> None:
    from clustkit import View
    from clustkit.recipe import load

    class ViewsConfig(LossConfig):
        views: list[View] = Field(default_factory=lambda: ["weak1", "weak2"])

    class Plugin:
        @hookimpl
        def register_components(self, registry: Any) -> None:
            registry.add("loss", "views_only", object, ViewsConfig)

    ps = plugin_set(("viewlist", Plugin()))
    path = tmp_path / "r.toml"
    path.write_text(TINY_CC + '\n[losses.mine]\nname = "views_only"\nviews = ["weak1", "wek2"]\n')
    with pytest.raises(RecipeError) as err:
        load(path, ps.registry)
    assert err.value.key == "losses.mine.views[1]" and err.value.allowed == ["weak1", "weak2"]
