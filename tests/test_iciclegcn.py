"""IcicleGCN plugin: equations against naive references, the view bug fix, a tiny end-to-end
run and resuming a run killed in stage 2."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clustkit import BuildContext, ClusterContrast, ClusterContrastConfig, InstanceContrast, InstanceContrastConfig
from clustkit.engine.network import Network
from clustkit.engine.step import StepOutputs
from clustkit.losses.contrast import cluster_contrast
from clustkit_iciclegcn import GCNRefinerConfig, ReconLossConfig
from clustkit_iciclegcn.autoencoder import JCSlimAE, ReconLoss
from clustkit_iciclegcn.gcn import GCNLayer, Trident, build_graphs, fuse, kl_to, student_t, target_distribution
from naive import naive_cluster_contrast, naive_nt_xent

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "iciclegcn.toml"

# --------------------------------------------------------------------------- DEC equations

Z = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [-1.0, -1.0]]
MU = [[0.0, 0.5], [2.0, 1.0], [-1.0, 0.0]]


def naive_student_t(z: list[list[float]], mu: list[list[float]], v: float) -> list[list[float]]:
    out = []
    for zi in z:
        row = []
        for mj in mu:
            d2 = sum((a - b) ** 2 for a, b in zip(zi, mj))
            row.append((1 + d2 / v) ** (-(v + 1) / 2))
        s = sum(row)
        out.append([r / s for r in row])
    return out


def naive_target(q: list[list[float]]) -> list[list[float]]:
    f = [sum(q[i][j] for i in range(len(q))) for j in range(len(q[0]))]
    out = []
    for row in q:
        w = [row[j] ** 2 / f[j] for j in range(len(row))]
        s = sum(w)
        out.append([x / s for x in w])
    return out


@pytest.mark.parametrize("v", [1.0, 2.5])
def test_student_t_matches_loops(v: float) -> None:
    q = student_t(torch.tensor(Z, dtype=torch.float64), torch.tensor(MU, dtype=torch.float64), v)
    np.testing.assert_allclose(q.numpy(), naive_student_t(Z, MU, v), rtol=1e-12)
    # hand check of one entry (v = 1): z0 = (0,0), centres at squared distances 0.25, 5, 1
    if v == 1.0:
        raw = [1 / 1.25, 1 / 6, 1 / 2]
        assert q[0, 0].item() == pytest.approx(raw[0] / sum(raw))


def test_target_distribution_matches_loops() -> None:
    q = naive_student_t(Z, MU, 1.0)
    p = target_distribution(torch.tensor(q, dtype=torch.float64))
    np.testing.assert_allclose(p.numpy(), naive_target(q), rtol=1e-12)
    assert torch.allclose(p.sum(1), torch.ones(5, dtype=torch.float64))
    # sharpening: the largest entry of each row grows
    assert (p.max(1).values >= torch.tensor(q).max(1).values - 1e-12).all()


def test_kl_batchmean_matches_loops() -> None:
    q = naive_student_t(Z, MU, 1.0)
    p = naive_target(q)
    kl = kl_to(torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64).log())
    ref = sum(p[i][j] * math.log(p[i][j] / q[i][j]) for i in range(5) for j in range(3)) / 5
    assert kl.item() == pytest.approx(ref, rel=1e-12)


# --------------------------------------------------------------------------- graphs


def dense_reference_graph(x: np.ndarray, k: int, norm: str) -> np.ndarray:
    """Heat-kernel top-k graph as the paper describes it, built densely (small N only)."""
    n = len(x)
    d2 = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    s = np.exp(-d2 / 1.0)
    np.fill_diagonal(s, -np.inf)  # each node links to its top-k most similar *other* nodes
    a = np.zeros((n, n))
    for i in range(n):
        for j in np.argsort(-s[i], kind="stable")[:k]:
            a[i, j] = 1.0
    a = np.maximum(a, a.T) + np.eye(n)
    deg = a.sum(1)
    if norm == "sym":
        return a / np.sqrt(np.outer(deg, deg))
    return a / deg[:, None]


@pytest.mark.parametrize("norm", ["sym", "row"])
def test_graphs_match_dense_reference(norm: str) -> None:
    x = np.random.default_rng(3).normal(size=(40, 6)).astype(np.float32) * 0.5
    ga, gb = build_graphs(torch.from_numpy(x), 1, 4, norm)
    for g, k in ((ga, 1), (gb, 4)):
        assert g.is_sparse and g.shape == (40, 40)
        assert g._nnz() <= 40 * (2 * k + 1)
        np.testing.assert_allclose(g.to_dense().numpy(), dense_reference_graph(x, k, norm), rtol=1e-5, atol=1e-7)
    if norm == "row":
        np.testing.assert_allclose(torch.sparse.sum(gb, 1).to_dense().numpy(), np.ones(40), rtol=1e-5)
    else:
        np.testing.assert_allclose(gb.to_dense().numpy(), gb.to_dense().numpy().T, atol=1e-7)


# --------------------------------------------------------------------------- GCN and fusion


def test_gcn_layer_and_fusion_match_naive() -> None:
    torch.manual_seed(0)
    layer = GCNLayer(5, 3)
    bound = math.sqrt(6 / (5 + 3))
    assert layer.weight.abs().max() <= bound and not any("bias" in n for n, _ in layer.named_parameters())
    adj = torch.rand(4, 4)
    h = torch.randn(4, 5)
    ref = [[sum(adj[i, m].item() * sum(h[m, t].item() * layer.weight[t, o].item() for t in range(5))
                for m in range(4)) for o in range(3)] for i in range(4)]
    np.testing.assert_allclose(layer(h, adj).detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer(h, adj.to_sparse()).detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    a, b, c = torch.randn(3, 2, 3).unbind(0)
    fused = fuse(a, b, c, 0.4, 0.2, 0.4)
    for i in range(2):
        for j in range(3):
            expected = 0.4 * a[i, j].item() + 0.2 * b[i, j].item() + 0.4 * c[i, j].item()
            assert fused[i, j].item() == pytest.approx(expected, abs=1e-6)


def naive_trident(net: Trident, x: torch.Tensor, adj_a: torch.Tensor, adj_b: torch.Tensor,
                  s: float, g: float, w: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's equations written out: AE layers H1..H4, GCN layer 1 on X, layer l+1 on
    s·G_self + g·G_other + w·H_l, ReLU on all but the fifth."""
    enc = net.ae.encoder
    h1 = torch.relu(x @ enc[0].weight.T + enc[0].bias)
    h2 = torch.relu(h1 @ enc[1].weight.T + enc[1].bias)
    h3 = torch.relu(h2 @ enc[2].weight.T + enc[2].bias)
    h4 = torch.softmax(h3 @ enc[3].weight.T + enc[3].bias, 1)
    wa = [layer.weight for layer in net.gcn_a]
    wb = [layer.weight for layer in (net.gcn_b if net.gcn_b is not None else net.gcn_a)]
    ga = torch.relu(adj_a @ x @ wa[0])
    gb = torch.relu(adj_b @ x @ wb[0])
    for i, hl in enumerate((h1, h2, h3, h4), start=1):
        na = adj_a @ ((s * ga + g * gb + w * hl) @ wa[i])
        nb = adj_b @ ((s * gb + g * ga + w * hl) @ wb[i])
        ga, gb = (na, nb) if i == 4 else (torch.relu(na), torch.relu(nb))
    return ga, gb


@pytest.mark.parametrize("share", [False, True])
def test_trident_matches_naive(share: bool) -> None:
    torch.manual_seed(1)
    ae = JCSlimAE(6, [5, 5, 8], 3).double()
    net = Trident(ae, 3, sigma=0.4, gamma=0.2, ae_weight=0.4, share_weights=share).double()
    assert [tuple(layer.weight.shape) for layer in net.gcn_a] == [(6, 5), (5, 5), (5, 8), (8, 3), (3, 3)]
    assert (net.gcn_b is None) == share
    x = torch.randn(7, 6, dtype=torch.float64)
    adj_a, adj_b = torch.rand(7, 7, dtype=torch.float64), torch.rand(7, 7, dtype=torch.float64)
    out = net(x, adj_a.to_sparse(), adj_b.to_sparse())
    ra, rb = naive_trident(net, x, adj_a, adj_b, 0.4, 0.2, 0.4)
    torch.testing.assert_close(out["logits_a"], ra)
    torch.testing.assert_close(out["logits_b"], rb)
    torch.testing.assert_close(out["x_hat"].shape, x.shape)
    assert torch.allclose(out["code"].sum(1), torch.ones(7, dtype=torch.float64))


# --------------------------------------------------------------------------- stage-1 losses


def make_step(seed: int = 0) -> tuple[StepOutputs, SimpleNamespace, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh())
    from clustkit.nn.heads import MLPHead

    heads = {"instance": MLPHead(8, [8], 4, output="l2"), "cluster": JCSlimAE(8, [6, 6, 10], 3)}
    net = Network(backbone, heads).double()
    ctx = SimpleNamespace(model=net, momentum_model=None)
    views = {"weak1": torch.randn(6, 3, 2, 2, dtype=torch.float64, requires_grad=True),
             "weak2": torch.randn(6, 3, 2, 2, dtype=torch.float64, requires_grad=True)}
    out = StepOutputs(ctx, views["weak1"], torch.zeros(6, dtype=torch.long), torch.arange(6), views)  # type: ignore[arg-type]
    return out, ctx, views


def build_ctx(key: str) -> BuildContext:
    return BuildContext(SimpleNamespace(path="t.toml"), key, torch.device("cpu"), view_names=("weak1", "weak2"))


def test_ccs_code_of_each_view_comes_from_that_views_features() -> None:
    """The reference computes view b's code from view a's features (docs/methods/iciclegcn.md)."""
    out, ctx, views = make_step()
    net = ctx.model
    loss = ClusterContrast(ClusterContrastConfig(name="iciclegcn_ccs"), build_ctx("losses.cluster"))
    cb = out.head("weak2", "cluster")
    torch.testing.assert_close(cb, net.heads["cluster"](net.backbone(views["weak2"])))
    assert not torch.allclose(cb, net.heads["cluster"](net.backbone(views["weak1"])))
    value = loss.compute_loss(out, ctx)
    fa, fb = net.backbone(views["weak1"]), net.backbone(views["weak2"])
    ae = net.heads["cluster"]
    torch.testing.assert_close(value, naive_cluster_contrast(ae(fa), ae(fb), 1.0, 1.0))
    buggy = naive_cluster_contrast(ae(fa), ae(fa), 1.0, 1.0)  # the reference's forward
    assert abs(value.item() - buggy.item()) > 1e-6
    value.backward()
    assert views["weak2"].grad is not None and views["weak2"].grad.abs().sum() > 0  # the bug gives view b no gradient


def test_stage1_losses_and_gradients_match_naive() -> None:
    out, ctx, views = make_step(seed=2)
    net = ctx.model
    key = build_ctx("losses.x")
    # the engine multiplies each component's value by its recipe weight (0.7, 1.3, 0.5 here)
    cis = 0.7 * InstanceContrast(InstanceContrastConfig(name="iciclegcn_cis"), key).compute_loss(out, ctx)
    ccs = 1.3 * ClusterContrast(ClusterContrastConfig(name="iciclegcn_ccs"), key).compute_loss(out, ctx)
    re = 0.5 * ReconLoss(ReconLossConfig(name="iciclegcn_re"), key).compute_loss(out, ctx)
    total = cis + ccs + re
    grads = torch.autograd.grad(total, [views["weak1"], views["weak2"], *net.parameters()])

    fa, fb = net.backbone(views["weak1"]), net.backbone(views["weak2"])
    ins, ae = net.heads["instance"], net.heads["cluster"]
    ref_cis = 0.7 * naive_nt_xent(ins(fa), ins(fb), 0.5)
    ref_ccs = 1.3 * naive_cluster_contrast(ae(fa), ae(fb), 1.0, 1.0)
    sq = 0.0
    for f in (fa, fb):
        rec = ae.decode(ae(f))
        sq = sq + sum(((rec[i] - f[i]) ** 2).sum() for i in range(6))
    ref_re = 0.5 * sq / (2 * 6)
    for got, ref in ((cis, ref_cis), (ccs, ref_ccs), (re, ref_re)):
        torch.testing.assert_close(got, ref)
    ref_grads = torch.autograd.grad(ref_cis + ref_ccs + ref_re, [views["weak1"], views["weak2"], *net.parameters()])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    # the cluster term is exactly the core's cluster contrast on the two codes
    torch.testing.assert_close(ccs, 1.3 * cluster_contrast(ae(fa), ae(fb), 1.0, 1.0))


def test_recon_detach_target_stops_the_target_gradient() -> None:
    out, ctx, views = make_step(seed=4)
    rcfg = ReconLossConfig(name="iciclegcn_re", detach_target=True, views=["weak2"])
    re = ReconLoss(rcfg, build_ctx("losses.re")).compute_loss(out, ctx)
    net = ctx.model
    f = net.backbone(views["weak2"])
    ref = ((net.heads["cluster"].decode(net.heads["cluster"](f)) - f.detach()) ** 2).sum() / 6
    torch.testing.assert_close(torch.autograd.grad(re, views["weak2"])[0], torch.autograd.grad(ref, views["weak2"])[0])


def test_recon_at_one_over_the_feature_size_is_the_codes_element_mean_mse() -> None:
    """The paper's re sums over the D feature dimensions; the authors' code uses F.mse_loss (the
    mean over elements). Weight 1/D on clustkit's re gives the code's value and gradients, which
    is what the paper-setting recipes use (1/512 on ResNet-34 features)."""
    import torch.nn.functional as F

    out, ctx, views = make_step(seed=5)
    net = ctx.model
    re = ReconLoss(ReconLossConfig(name="iciclegcn_re"), build_ctx("losses.re")).compute_loss(out, ctx)
    dim = net.backbone(views["weak1"]).shape[1]
    mses = []
    for v in ("weak1", "weak2"):
        f = net.backbone(views[v])
        mses.append(F.mse_loss(net.heads["cluster"].decode(net.heads["cluster"](f)), f))
    code = torch.stack(mses).mean()
    torch.testing.assert_close(re / dim, code)
    torch.testing.assert_close(torch.autograd.grad(re / dim, views["weak1"])[0],
                               torch.autograd.grad(code, views["weak1"])[0])


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet10", "imagenet_dogs"])
def test_paper_setting_recipes_use_the_codes_reconstruction_scale(dataset: str, plugin_set) -> None:
    from clustkit.recipe import load
    from conftest import REPO

    recipe = load(REPO / "recipes" / dataset / "iciclegcn.toml", plugin_set().registry)
    assert recipe.backbone.name == "resnet" and recipe.backbone.depth == 34  # 512-d features
    assert recipe.losses["re"].weight * 512 == 1.0 and not recipe.losses["re"].detach_target


def test_config_checks_weights() -> None:
    with pytest.raises(ValueError):
        GCNRefinerConfig(name="iciclegcn_gcn", sigma=0.9, gamma=0.2)
    GCNRefinerConfig(name="iciclegcn_gcn", sigma=0.5, gamma=0.2, ae_weight=0.5)  # the code's weights


# --------------------------------------------------------------------------- runs

TINY = ["run.epochs=2", "run.eval_every=1", "run.batch_size=128", "backbone.width=8", "backbone.out_dim=32",
        "heads.instance.hidden=32", "heads.cluster.hidden=[32,32,64]", "refine.gcn.iterations=8",
        "refine.gcn.checkpoint_every=2", "refine.gcn.log_every=0", "refine.gcn.kmeans_n_init=2", "refine.gcn.k_b=5"]


def _run(out: Path, overrides: list[str], resume: bool = False) -> dict:
    from clustkit.cli.app import load_recipe
    from clustkit.engine.run import Run

    r, plugins = load_recipe(RECIPE, overrides)
    return Run(r, plugins, out).execute(resume=resume)


def _stage2_state(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_tiny_end_to_end_and_resume_in_stage2(tmp_path: Path) -> None:
    # uninterrupted: stage 1 periodic evaluation is the recipe's head_argmax, the final one the GCN's
    full = _run(tmp_path / "full", TINY)
    assert full["selection"]["recipe"] == "iciclegcn_gcn:mean" and full["gcn_iterations"] == 8
    streams = {f"iciclegcn_gcn:{k}" for k in ("a", "b", "mean", "q")}
    assert streams | {"argmax:cluster"} <= set(full["candidates"])  # every stream, and stage 1's head
    assert {full["candidates"][s]["space"] for s in streams} == {"iciclegcn_gcn"}  # one space: no self-votes
    assert "gcn_resumed_at" not in full and 0 <= full["acc"] <= 1
    lines = [json.loads(s) for s in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["epoch"] == 1 and "acc" in lines[0]  # stage-1 evaluation answered by the recipe evaluator
    assert (tmp_path / "full" / "assignments.csv").read_text().count("\n") == 1797 + 1
    from clustkit.trained.loaded import load_run  # an override of the evaluation keeps the finished stage

    kept = load_run(tmp_path / "full", overrides=['run.select="recipe"']).candidates()
    assert kept["selection"]["chosen"] == "iciclegcn_gcn:mean" and set(full["candidates"]) == set(kept["candidates"])

    # killed (SIGKILL) right after the stage-2 checkpoint of iteration 4, then resumed
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "killer.py").write_text(textwrap.dedent("""
        import os, signal
        from clustkit import hookimpl

        @hookimpl
        def on_run_start(ctx):
            run = ctx._run  # the test reaches into the engine; a plugin never does
            refiner, save = run.components.by_key["refine.gcn"], ctx.save_checkpoint

            def save_then_die():
                save()
                if run.phase == "post" and refiner.iteration >= int(os.environ["ICICLE_KILL_AT"]):
                    os.kill(os.getpid(), signal.SIGKILL)

            ctx.save_checkpoint = save_then_die
        """))
    out = tmp_path / "killed"
    env = {**os.environ, "CLUSTKIT_PLUGINS_DIR": str(plugin_dir), "ICICLE_KILL_AT": "4"}
    cmd = [os.path.join(os.path.dirname(sys.executable), "clustkit"), "run", str(RECIPE), "--out", str(out)]
    for o in TINY:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = _stage2_state(out)
    assert state["phase"] == "post" and state["components"]["refine.gcn"]["iteration"] == 4
    assert not (out / "summary.json").exists()

    resumed = _run(out, TINY, resume=True)
    assert resumed["gcn_resumed_at"] == 4 and resumed["gcn_iterations"] == 8
    a, b = _stage2_state(tmp_path / "full"), _stage2_state(out)
    assert b["phase"] == "done"
    for key in ("a", "b", "q"):
        torch.testing.assert_close(b["components"]["refine.gcn"]["final"][key],
                                   a["components"]["refine.gcn"]["final"][key], rtol=1e-4, atol=1e-5)
    assert resumed["acc"] == pytest.approx(full["acc"], abs=2e-3)
