"""TEMI's loss against a naive reference written from the paper's formula (values and gradients),
its heads, the label-free choice of a head, and a tiny run on cached features."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.test_features import RECIPE

from clustkit_temi.heads import TemiHeads, temi_terms
from conftest import run_recipe


def naive_temi(student: torch.Tensor, teacher: torch.Tensor, pk: torch.Tensor, beta: float) -> torch.Tensor:
    """Per head h: the mean over ordered view pairs (v, w), v ≠ w, and items i of
    -w_i · log Σ_k (s[v,h,i,k] · t[w,h,i,k])^β / pk[h,k], with w_i the mean over view pairs a < b of
    Σ_k t[a,h,i,k] · t[b,h,i,k] (no gradient)."""
    n_views, n_heads, n_items, n_clusters = student.shape
    out = []
    for h in range(n_heads):
        total, count = 0.0, 0
        for v in range(n_views):
            for w in range(n_views):
                if v == w:
                    continue
                for i in range(n_items):
                    weights = [sum(float(teacher[a, h, i, k] * teacher[b, h, i, k]) for k in range(n_clusters))
                               for a in range(n_views) for b in range(a + 1, n_views)]
                    weight = sum(weights) / len(weights)
                    inner = sum((student[v, h, i, k] * teacher[w, h, i, k]) ** beta / pk[h, k]
                                for k in range(n_clusters))
                    total = total - weight * torch.log(inner)
                    count += 1
        out.append(total / count)
    return torch.stack(out)


@pytest.mark.parametrize(("n_views", "beta"), [(2, 0.6), (3, 1.0)])
def test_temi_loss_matches_the_formula_in_value_and_gradient(n_views: int, beta: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n_views, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.softmax(torch.randn(n_views, 2, 5, 4, generator=g, dtype=torch.float64) / 0.5, -1)
    pk = torch.softmax(torch.randn(2, 4, generator=g, dtype=torch.float64), -1)
    ours = temi_terms(torch.softmax(logits / 0.1, -1), teacher, pk, beta)
    (grad,) = torch.autograd.grad(ours.sum(), logits)
    ref = naive_temi(torch.softmax(logits / 0.1, -1), teacher, pk, beta)
    (ref_grad,) = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(ours, ref) and torch.allclose(grad, ref_grad)


def test_agreeing_confident_heads_score_lower_than_disagreeing_ones() -> None:
    sure = torch.eye(3).repeat(2, 1, 2, 1)[:, :, :3] * 0.97 + 0.01  # V=2, H=1, B=3 items in 3 clusters
    swapped = sure.clone()
    swapped[1] = sure[1].roll(1, dims=-1)  # the teacher's view puts each item elsewhere
    pk = torch.full((1, 3), 1 / 3)
    assert temi_terms(sure, sure, pk, 0.6) < temi_terms(sure, swapped, pk, 0.6)
    assert math.isfinite(float(temi_terms(sure, swapped, pk, 0.6)))


def test_the_heads_forward_pass_is_the_chosen_heads_distribution() -> None:
    heads = TemiHeads(8, 5, n_heads=3, hidden=16, layers=2, bottleneck=6)
    x = torch.randn(4, 8)
    assert heads.logits(x).shape == (3, 4, 5)
    heads.best.fill_(2)
    assert torch.allclose(heads(x), torch.softmax(heads.logits(x)[2], 1))


def test_a_temi_run_on_cached_features_picks_its_head_without_labels(tmp_path: Path, plugin_set: Any) -> None:
    recipe = tmp_path / "temi.toml"
    text = RECIPE.replace('plugins = ["cc"]', 'plugins = ["temi"]').split("[heads.instance]")[0]
    recipe.write_text(text.replace("[features]", f'[features]\ncache_dir = "{tmp_path / "cache"}"') + """
[heads.temi]
name = "temi_heads"
n_heads = 3
[views]
name = "tensor_affine"
names = ["item", "neighbour"]
[losses.temi]
name = "temi"
[momentum]
base = 0.99
final = 1.0
heads = ["temi"]
[optimizer]
name = "adamw"
lr = 1e-3
[evaluation]
name = "head_argmax"
head = "temi"
""")
    summary = run_recipe(recipe, plugin_set(), tmp_path / "run", ["run.epochs=3"])
    assert summary["n_clusters"] == 10 and summary["acc"] > 0.2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    import json

    last = json.loads(lines[-1])
    assert last["values"]["temi_best_head"] in (0.0, 1.0, 2.0)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert int(state["model"]["heads.temi.best"]) == int(last["values"]["temi_best_head"])


def test_temi_without_its_teacher_is_an_error_naming_the_key(tmp_path: Path, plugin_set: Any) -> None:
    from clustkit.errors import RecipeError

    recipe = tmp_path / "temi.toml"
    text = RECIPE.replace('plugins = ["cc"]', 'plugins = ["temi"]').split("[heads.instance]")[0]
    recipe.write_text(text + """
[heads.temi]
name = "temi_heads"
[views]
name = "tensor_affine"
[losses.temi]
name = "temi"
[evaluation]
name = "head_argmax"
head = "temi"
""")
    with pytest.raises(RecipeError, match=r"losses\.temi\.head.*momentum"):
        run_recipe(recipe, plugin_set(), None)
