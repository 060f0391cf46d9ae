"""``clustkit bench``: grid cells × seeds as run folders, outputs, resume, failures, --jobs.

The runs are recipes/cc.toml made tiny with --set (8-channel CNN, one epoch of digits): about a
second each in-process. Only one test starts child processes (the --jobs 2 comparison).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conftest import REPO

CC = REPO / "recipes" / "cc.toml"
TINY = ["run.epochs=1", "run.batch_size=64", "run.eval_every=0", "run.checkpoint_every=1",
        "run.eval_batch_size=1024", "backbone.width=8", "backbone.out_dim=32", "heads.instance.hidden=32",
        "heads.instance.out_dim=16", "heads.cluster.hidden=32"]
GRID = "losses.cluster.weight=1,0"
CELLS = ["cc__losses.cluster.weight=1", "cc__losses.cluster.weight=0"]


def _app() -> typer.Typer:
    from clustkit.cli import app

    if any(c.name == "bench" or getattr(c.callback, "__name__", "") == "bench" for c in app.registered_commands):
        return app
    from clustkit.cli.bench import bench

    local = typer.Typer()
    local.command()(bench)

    @local.callback()
    def _root() -> None:  # a group, so that the command is called as `bench`
        pass

    return local


def bench(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(_app(), ["bench", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def tiny_sets() -> list[str]:
    return [a for s in TINY for a in ("--set", s)]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def runs_by_key(out: Path) -> dict[tuple[str, int], dict]:
    return {(c["id"], r["seed"]): r for c in results(out)["cells"] for r in c["runs"]}


# --- planning (no training) --------------------------------------------------------------------------


def test_grid_values_are_toml_and_split_at_top_level_commas() -> None:
    from clustkit.bench.plan import parse_grid_option, split_values

    assert split_values('1, "a,b", [1, 2], {x = 1, y = "z"}') == ['1', '"a,b"', '[1, 2]', '{x = 1, y = "z"}']
    axis = parse_grid_option('views={name="tensor_affine", degrees=5},{name="cc_weak"}')
    assert [lab for lab, _ in axis.options] == ["v0", "v1"]
    assert axis.options[1][1] == ['views={name="cc_weak"}']
    axis = parse_grid_option("views.name=tensor_affine,cc_weak")
    assert [lab for lab, _ in axis.options] == ["tensor_affine", "cc_weak"]


def test_bench_file_cells_are_recipes_times_axes(tmp_path: Path) -> None:
    from clustkit.bench.plan import build_plan

    f = tmp_path / "b.toml"
    f.write_text(f"""
[bench]
recipes = ["{CC}", {{path = "{CC}", label = "cc-fast", set = ["run.epochs=1"]}}]
seeds = [3, 4]
set = ["run.eval_every=0"]
[bench.grid]
optimizer.lr = [1e-3, 1e-2]
[[bench.axes]]
name = "ablate"
choices = {{ full = [], no-instance = ["losses.instance.weight=0"] }}
""")
    plan = build_plan(f, [], None, ["run.batch_size=64"])
    cells = plan.cells()
    assert plan.seeds == [3, 4] and len(cells) == 2 * 2 * 2
    ids = [c.id for c in cells]
    assert ids[0] == "cc__optimizer.lr=0.001__ablate=full"
    assert "cc-fast__optimizer.lr=0.01__ablate=no-instance" in ids
    last = cells[-1]
    assert last.overrides == ["run.eval_every=0", "run.epochs=1", "run.batch_size=64", "optimizer.lr=0.01",
                              "losses.instance.weight=0"]
    assert last.run_overrides(4)[-1] == "run.seed=4"


@pytest.mark.parametrize("body, key, needle", [
    ('recipes = ["R"]\n[[bench.axes]]\nkey = "optimizer.lr"\nvaluez = [1]', "bench.axes[0].valuez", "Allowed values: "),
    ('recipes = ["R"]\nseeds = "0,1"', "bench.seeds", "list"),
    ('recipes = ["R"]\n[bench.grid]\n"run.seed" = [1, 2]', "bench.grid.run.seed", "bench.seeds"),
    ('recipes = ["R"]\n[[bench.axes]]\nkey = "optimizer.lr"', "bench.axes[0]", "values"),
    ('recipes = ["R"]\ncolour = 1', "bench.colour", "recipes"),
    ('recipes = ["missing.toml"]', "bench.recipes[0]", "not found"),
])
def test_bench_file_errors_exit_2_naming_the_key(tmp_path: Path, body: str, key: str, needle: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[bench]\n" + body.replace('"R"', json.dumps(str(CC))) + "\n")
    code, output = bench(f, "--out", tmp_path / "out", "--dry-run")
    assert code == 2, output
    flat = " ".join(output.split())
    assert f"key '{key}'" in flat and needle in flat and str(f) in flat
    assert not (tmp_path / "out").exists()


def test_bad_options_exit_2(tmp_path: Path) -> None:
    code, output = bench(CC, "--grid", "losses.cluster.weight", "--dry-run")
    assert code == 2 and "--grid" in output
    code, output = bench(CC, "--seeds", "0,x", "--dry-run")
    assert code == 2 and "--seeds" in output
    code, output = bench("--out", tmp_path / "nothing")
    assert code == 2 and "plan.json" in output


# --- running -----------------------------------------------------------------------------------------


def test_grid_bench_writes_outputs_and_resumes_only_unfinished_runs(tmp_path: Path) -> None:
    out = tmp_path / "abl"
    args = [CC, "--grid", GRID, "--seeds", "0,1", "--out", out, *tiny_sets(), "--in-process"]
    code, output = bench(*args)
    assert code == 0, output
    for cell in CELLS:
        for seed in (0, 1):
            run = out / cell / f"seed{seed}"
            for name in ("summary.json", "recipe.toml", "metrics.jsonl", "assignments.csv", "resources.json"):
                assert (run / name).is_file(), run / name
            assert json.loads((run / "summary.json").read_text())["seed"] == seed
    for name in ("results.csv", "results.json", "results.md", "results.png", "runs.csv", "plan.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = results(out)
    assert [c["id"] for c in data["cells"]] == CELLS
    for c in data["cells"]:
        assert (c["n_ok"], c["n_failed"]) == (2, 0)
        assert c["recipe"] == str(CC) and c["overrides"][-1] in ("losses.cluster.weight=1", "losses.cluster.weight=0")
        assert c["plugins"]["cc"] and c["plugins"]["builtin"]
        for key in ("acc", "nmi", "ari", "wall_s", "peak_rss_mb"):
            s = c["metrics"][key]
            assert s["n"] == 2 and s["mean"] is not None and s["std"] is not None
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["losses.cluster.weight"] for r in rows] == ["1", "0"]
    assert float(rows[0]["acc_mean"]) == pytest.approx(data["cells"][0]["metrics"]["acc"]["mean"])
    md = (out / "results.md").read_text()
    assert "| `cc__losses.cluster.weight=0` | 2/2 |" in md and " ± " in md
    acc = json.loads((out / CELLS[1] / "seed1" / "summary.json").read_text())["acc"]
    assert f"| `{CELLS[1]}` | 1 | {acc:.3f} |" in md  # the per-seed row behind the mean
    first = runs_by_key(out)

    # interrupted bench: one run lost its summary (its checkpoint remains), another never started
    (out / CELLS[1] / "seed1" / "summary.json").unlink()
    import shutil

    shutil.rmtree(out / CELLS[0] / "seed0")
    kept = {p: p.stat().st_mtime_ns for p in (out / CELLS[0] / "seed1" / "summary.json",
                                               out / CELLS[1] / "seed0" / "summary.json")}
    code, output = bench(*args)
    assert code == 0, output
    status = {k: r["status"] for k, r in runs_by_key(out).items()}
    assert status == {(CELLS[0], 0): "done", (CELLS[0], 1): "cached", (CELLS[1], 0): "cached",
                      (CELLS[1], 1): "resumed"}
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    again = runs_by_key(out)
    for key in first:  # the redone and resumed runs reproduce their metrics exactly
        assert again[key]["summary"]["acc"] == first[key]["summary"]["acc"]
        assert again[key]["summary"]["nmi"] == first[key]["summary"]["nmi"]

    # nothing left: `bench --out DIR` continues from plan.json and only re-tabulates
    code, output = bench("--out", out, "--in-process")
    assert code == 0, output
    assert {r["status"] for r in runs_by_key(out).values()} == {"cached"}

    # the same folder with a changed recipe is refused per run, not silently reused
    code, output = bench(*args, "--set", "optimizer.lr=0.01", "--dry-run")
    assert code == 2 and "different recipe" in output and "optimizer.lr" in " ".join(output.split())


def test_failing_cells_are_recorded_and_the_others_finish(tmp_path: Path) -> None:
    f = tmp_path / "fail.toml"
    f.write_text(f"""
[bench]
recipes = [{json.dumps(str(CC))}]
seeds = [0]
set = {json.dumps(TINY)}
[[bench.axes]]
name = "case"
[bench.axes.choices]
ok = []
bad-value = ["losses.cluster.temperature=-1"]
no-data = ['data = {{name = "usps", root = "{tmp_path / "nowhere"}"}}']
""")
    out = tmp_path / "out"
    code, output = bench(f, "--out", out, "--in-process")
    assert code == 1, output
    cells = {c["id"]: c for c in results(out)["cells"]}
    assert cells["cc__case=ok"]["n_ok"] == 1 and cells["cc__case=ok"]["n_failed"] == 0
    bad = cells["cc__case=bad-value"]
    assert bad["n_failed"] == 1 and "losses.cluster.temperature" in bad["errors"][0]
    nodata = cells["cc__case=no-data"]
    assert nodata["n_failed"] == 1 and "nowhere" in nodata["errors"][0]
    assert (out / "cc__case=ok" / "seed0" / "summary.json").exists()
    md = (out / "results.md").read_text()
    assert "## Failures" in md and "losses.cluster.temperature" in md


def test_a_published_figure_is_printed_beside_the_measured_one(tmp_path: Path) -> None:
    """papers.toml's form: a recipe entry's `published` figure goes into the table, the report and results.json."""
    f = tmp_path / "papers.toml"
    f.write_text(f"""
[bench]
seeds = [0]
set = {json.dumps(TINY)}
[[bench.recipes]]
path = {json.dumps(str(CC))}
label = "paper"
published = {{ acc = 0.79, nmi = 0.705, source = "CC, Table 2" }}
[[bench.recipes]]
path = {json.dumps(str(CC))}
label = "plain"
""")
    out = tmp_path / "out"
    code, output = bench(f, "--out", out, "--in-process")
    assert code == 0, output
    assert "published ACC" in output and "0.790" in output
    cells = {c["id"]: c for c in results(out)["cells"]}
    assert cells["paper"]["published"] == {"acc": 0.79, "nmi": 0.705, "source": "CC, Table 2"}
    assert cells["plain"]["published"] is None
    md = (out / "results.md").read_text()
    section = md.split("## Beside the published figures")[1].split("## Runs")[0]
    acc = cells["paper"]["metrics"]["acc"]["mean"]
    assert f"| `paper` | {acc:.3f} | 0.790 | " in section and "| – | CC, Table 2 |" in section
    assert "`plain`" not in section


def test_a_published_figure_out_of_range_exits_2_naming_the_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    entry = f"{{ path = {json.dumps(str(CC))}, published = {{ acc = 79.0, source = 'x' }} }}"
    f.write_text(f"[bench]\nrecipes = [{entry}]\n")
    code, output = bench(f, "--out", tmp_path / "out", "--dry-run")
    flat = " ".join(output.split())
    assert code == 2 and "bench.recipes[0].published.acc" in flat and str(f) in flat, output


def test_unset_environment_variable_fails_the_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLUSTKIT_BENCH_TEST_UNSET", raising=False)
    code, output = bench(CC, "--seeds", "0", "--set", 'data={name="usps", root="${CLUSTKIT_BENCH_TEST_UNSET}/usps"}',
                         "--out", tmp_path / "o", "--dry-run")
    assert code == 2 and "CLUSTKIT_BENCH_TEST_UNSET" in output and "not set" in " ".join(output.split())


def test_error_text_from_a_child_log(tmp_path: Path) -> None:
    from clustkit.bench.execute import _error_from_log

    log = tmp_path / "bench.log"
    log.write_text("epoch 1\nerror: invalid recipe x.toml: key 'data.root': not found.\n")
    assert _error_from_log(log, 2) == "invalid recipe x.toml: key 'data.root': not found."
    log.write_text('Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: boom\n')
    assert _error_from_log(log, 1) == "RuntimeError: boom"


@pytest.mark.skipif(os.environ.get("CLUSTKIT_SKIP_SUBPROCESS_TESTS") == "1", reason="asked to skip")
def test_jobs_2_in_child_processes_gives_the_same_metrics(tmp_path: Path) -> None:
    """Runs of one cell, two at a time in child processes, match the same runs made one by one in-process."""
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    common = [CC, "--grid", "losses.cluster.weight=1", "--seeds", "0,1", *tiny_sets()]
    code, output = bench(*common, "--out", serial, "--in-process")
    assert code == 0, output
    code, output = bench(*common, "--out", parallel, "--jobs", "2")
    assert code == 0, output
    a, b = runs_by_key(serial), runs_by_key(parallel)
    assert a.keys() == b.keys() and len(a) == 2
    for key in a:
        assert b[key]["status"] == "done"
        for metric in ("acc", "nmi", "ari", "n_clusters_used"):
            assert a[key]["summary"][metric] == b[key]["summary"][metric], (key, metric)
        res = b[key]["resources"]
        assert res["mode"] == "subprocess" and res["exit_code"] == 0 and res["peak_rss_mb"] > 50
    la = (serial / CELLS[0] / "seed1" / "assignments.csv").read_text()
    assert la == (parallel / CELLS[0] / "seed1" / "assignments.csv").read_text()
    assert results(parallel)["jobs"] == 2


SHIPPED_BENCH_FILES = sorted(p for p in (REPO / "benchmarks").rglob("*.toml") if "[bench]" in p.read_text())


@pytest.mark.parametrize("path", SHIPPED_BENCH_FILES, ids=lambda p: str(p.relative_to(REPO / "benchmarks")))
def test_shipped_bench_files_are_valid(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run of every shipped bench file validates (a dry run exits 0), before anyone spends hours on it."""
    monkeypatch.setenv("CLUSTKIT_SHARED_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CLUSTKIT_DATA", str(tmp_path / "data"))  # the paper-setting recipes (papers.toml)
    monkeypatch.setenv("CLUSTKIT_LITE0", str(tmp_path / "lite0.pth"))  # the pretrained bench's weights file
    code, output = bench(path, "--out", tmp_path / "out", "--dry-run")
    assert code == 0, output
    assert "failed" not in output


def test_dry_run_exits_2_when_a_run_is_invalid(tmp_path: Path) -> None:
    code, output = bench(CC, "--set", "run.nonsense=1", "--out", tmp_path / "out", "--dry-run")
    assert code == 2 and "run.nonsense" in " ".join(output.split())
