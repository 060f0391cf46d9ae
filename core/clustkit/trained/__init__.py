"""Using a trained run: ``clustkit.load_run(run_dir)`` rebuilds the network from the run folder's
``recipe.toml`` and checkpoint, then predicts clusters for new images, re-evaluates the run on
its dataset (or another) and exports features and soft assignments (docs/using-a-run.md)."""

from clustkit.trained.loaded import TrainedRun, load_run

__all__ = ["TrainedRun", "load_run"]
