"""The ``clustkit`` command line: ``app`` (run, check, recipes, plugins, views, and the commands of the other
modules), ``bench`` (``clustkit bench``, over the library ``clustkit.bench``), ``bench_child`` (the process
that runs one bench run), ``trained`` (predict / evaluate / export), ``console`` (the ``error:`` line every
command fails with) and ``viewgrid`` (the picture behind ``clustkit views``)."""

from clustkit.cli.app import app, main

__all__ = ["app", "main"]
