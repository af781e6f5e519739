"""Checkpoints of the sentiment CNN: saved at the end of every epoch, restored at the start of
training, and a stop on the signal at the next batch (see ``RunContext.checkpoint_dir``).

Keras' ``BackupAndRestore`` keeps the weights, the optimizer state and the epoch count in
``checkpoints/fold{N}/`` (N = 0 without cross-validation); a run started with its parent's
copy (``runner resume``, a retry) begins at the epoch after the last one saved, so no whole
epoch is trained twice. A stop request is acted on between batches, never while a checkpoint
is being written; the epoch it interrupts is trained again by the run that resumes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from runner.model import ModelError, RunContext


def callbacks(keras: Any, ctx: RunContext, fold: int) -> list[Any]:
    """The callbacks that save, restore and stop one fold's training (after the recorder)."""
    backup = keras.callbacks.BackupAndRestore(str(ctx.checkpoint_dir / f"fold{fold}"),
                                              delete_checkpoint=False)

    class StopOnRequest(keras.callbacks.Callback):  # type: ignore[name-defined,misc]
        """Ends training when the run is asked to stop: at a batch's end (the checkpoint of
        the last finished epoch stays as it is) or right after an epoch's checkpoint."""

        def _check(self, where: str) -> None:
            if ctx.stop_requested:
                raise ModelError(f"stopped on request {where}")

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self._check(f"in batch {batch + 1}")

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self._check(f"after epoch {epoch + 1} (saved)")

    return [backup, StopOnRequest()]


def history_so_far(ctx: RunContext, fold: int, step0: int, names: Iterable[str]
                   ) -> dict[str, list[float]]:
    """The per-epoch metrics of the epochs the fold's checkpoint holds, as the run's
    ``metrics.jsonl`` (its parent's copy) recorded them: a resumed run's learning curve
    starts with them. Empty for a fresh run."""
    try:
        meta = json.loads((ctx.checkpoint_dir / f"fold{fold}" / "training_metadata.json")
                          .read_text())
        done = int(meta["epoch"])
        lines = (ctx.run_dir / "metrics.jsonl").read_text().splitlines()
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    wanted = set(names)
    seen: dict[tuple[str, int], float] = {}
    for line in lines:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("name") in wanted and isinstance(m.get("step"), int):
            seen[(m["name"], m["step"])] = float(m["value"])
    steps = range(step0 + 1, step0 + done + 1)
    return {n: [seen[(n, s)] for s in steps] for n in sorted(wanted)
            if all((n, s) in seen for s in steps) and done > 0}
