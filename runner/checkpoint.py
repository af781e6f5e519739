"""Checkpoints on the client: what a run left to continue from, and how a new run inherits it.

The worker gives every run an empty ``checkpoints/`` folder (``ctx.checkpoint_dir``,
``$RUNNER_CHECKPOINT_DIR``) and the model saves there whatever it needs to go on. A run that
continues another (``runner resume``, a retry) starts with a copy of its parent's
``checkpoints/`` and ``metrics.jsonl``: the model finds the checkpoint and goes on from it,
and the learning curve goes on from where the parent's stopped. A copy, not a link: a
framework that rewrites its checkpoint file in place must never change the parent's.
"""

from __future__ import annotations

import os
import shutil

from runner.rundir import METRICS, RunDir


def continue_from(parent: RunDir, child: RunDir) -> None:
    """Seed ``child`` (recorded, not started) with ``parent``'s checkpoints and metrics."""
    if parent.checkpoints.is_dir():
        shutil.copytree(parent.checkpoints, child.checkpoints, symlinks=True, dirs_exist_ok=True)
    if parent.metrics.is_file():
        shutil.copyfile(parent.metrics, child.path / METRICS)


def checkpoint_size(rd: RunDir) -> tuple[int, int]:
    """(files, bytes) under the run's ``checkpoints/`` (links not followed)."""
    files = size = 0
    for dirpath, _, names in os.walk(rd.checkpoints, followlinks=False):
        for n in names:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            files += 1
            size += st.st_size
    return files, size
