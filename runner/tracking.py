"""The tracking API for scripts run by the ``script`` model: ``runner.log_metric(...)``.

The worker tells the script where its run directory is through ``RUNNER_RUN_DIR``. Outside
a run, calls are no-ops with one warning, so a script still works when run by hand.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

ENV_RUN_DIR = "RUNNER_RUN_DIR"
#: ``RUNNER_DATA_PATH`` (and one variable per data key a model declares): the run's data there
ENV_DATA_PREFIX = "RUNNER_DATA_"
_warned = False


def _run_dir() -> Path | None:
    value = os.environ.get(ENV_RUN_DIR)
    return Path(value) if value else None


def log_metric(name: str, value: float, step: int | None = None) -> None:
    """Record ``value`` for metric ``name`` (at ``step``) in the current run."""
    global _warned
    if not isinstance(name, str) or not name:
        raise ValueError("metric name must be a non-empty string")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"metric {name!r}: value is NaN")
    rd = _run_dir()
    if rd is None:
        if not _warned:
            print("runner: not inside a run; log_metric() records nothing", file=sys.stderr)
            _warned = True
        return
    from runner.rundir import append_metric

    append_metric(rd / "metrics.jsonl", name, value, step)


def outputs_dir() -> Path:
    """Where the current run's artifacts go (``./outputs`` outside a run)."""
    rd = _run_dir()
    path = rd / "outputs" if rd else Path("outputs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir() -> Path:
    """Where the current run saves what it needs to go on (``$RUNNER_CHECKPOINT_DIR``); a run
    that continues another (``runner resume``, a retry) finds its parent's copy there.
    ``./checkpoints`` outside a run."""
    value = os.environ.get("RUNNER_CHECKPOINT_DIR")
    path = Path(value) if value else Path("checkpoints")
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_path(key: str = "path") -> Path | None:
    """Where the run's ``data.KEY`` lies on the target (None when the run has none)."""
    value = os.environ.get(f"{ENV_DATA_PREFIX}{key.upper()}")
    return Path(value) if value else None
