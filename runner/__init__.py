"""runner: an open, plugin-based experiment runner for machine learning.

Inside a run, scripts record metrics with :func:`log_metric`. Plugins mark their hook
functions with :data:`hookimpl`. This module imports nothing heavy: it is on the path of
every ``runner`` command and of every worker.
"""

from __future__ import annotations

import pluggy

from runner.tracking import checkpoint_dir, data_path, log_metric, outputs_dir

__version__ = "0.1.0"

#: Marks a function of a plugin module as a hook implementation (see :mod:`runner.hookspecs`).
hookimpl = pluggy.HookimplMarker("runner")

__all__ = ["checkpoint_dir", "data_path", "hookimpl", "log_metric", "outputs_dir", "__version__"]
