"""``clustkit bench``: what to run (``plan``: bench files and ``--grid`` axes), the state of each
run folder (``tasks``), running the runs (``execute``; on Slurm or Ray: ``executor_settings``,
``remote``, ``slurm_jobs``, ``ray_tasks``), the results tables (``report``) and the command itself
(``command``). See docs/bench.md."""
