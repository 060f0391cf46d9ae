"""The ``clustkit`` command line: ``app`` (run, check, plugins, views, bench) and ``viewgrid``
(the picture behind ``clustkit views``)."""

from clustkit.cli.app import app, main

__all__ = ["app", "main"]
