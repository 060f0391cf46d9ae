"""The bench library behind ``clustkit bench`` (whose command and printing live in ``clustkit.cli.bench``; this
package never imports the CLI): what to run (``plan``: bench files and ``--grid`` axes), the state of each run
folder (``tasks``), one invocation prepared, run and collected (``session``), running the runs (``execute``,
with what each run used in ``resources``; on Slurm or Ray: ``executor_settings``, ``remote``, ``slurm_jobs``,
``ray_tasks``) and the results tables (``report``). See docs/bench.md."""
