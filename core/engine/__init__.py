"""The training engine: run context, per-batch outputs, checkpoints and the training loop."""
