"""The process that runs one run of ``clustkit bench``: ``python -c CHILD RESOURCES_JSON run RECIPE ...``
(``bench.execute`` builds that command line) runs the CLI on the arguments after RESOURCES_JSON, then
writes what the process used there. It lives with the CLI because it runs the CLI; the bench library only
names it, so that ``bench`` never imports ``cli``."""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path


def child_main() -> None:
    """Run the CLI with ``sys.argv[2:]`` (torch threads from ``THREADS_ENV``), then write ``sys.argv[1]``
    (resources.json: peak memory, wall time, exit code) and exit with the CLI's exit code."""
    from clustkit.bench.resources import THREADS_ENV, peak_rss_mb, write_resources

    resources_path = Path(sys.argv[1])
    args = sys.argv[2:]
    t0 = time.perf_counter()
    threads = int(os.environ.get(THREADS_ENV, "0") or 0)
    code: int = 1
    try:
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        from clustkit.cli.app import main

        sys.argv = ["clustkit", *args]
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        write_resources(resources_path, peak_rss_mb(), code, time.perf_counter() - t0, threads, "subprocess",
                        "run process")
    sys.exit(code)
