"""The ``clustkit`` command line: ``app`` (run, check, recipes, plugins, views, bench, and
predict / evaluate / export from ``trained``) and ``viewgrid`` (the picture behind ``clustkit views``)."""

from clustkit.cli.app import app, main

__all__ = ["app", "main"]
